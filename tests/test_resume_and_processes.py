"""Kill-and-resume and multi-process runs end with the weights of one uninterrupted single-process run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from copre_hub.fl.distributed import free_port, launch_command

SMOKE = Path(__file__).resolve().parents[1] / "training" / "recipes" / "smoke.toml"
TINY = [
    "--rounds",
    "3",
    "--participants",
    "4",
    "--clients",
    "100",
    "--set",
    "method.local_epochs=1",
    "--set",
    "run.checkpoint_every=1",
]  # about a second per round on 2 cores


def pretrain_cmd(out: Path, *extra: str) -> list[str]:
    return ["-m", "copre_hub.cli", "pretrain", str(SMOKE), "-o", str(out), "-q", *TINY, *extra]


def weights(out: Path) -> dict[str, torch.Tensor]:
    return load_file(out / "checkpoint" / "model.safetensors")


def saved_round(out: Path) -> int:
    try:
        with safe_open(out / "state.safetensors", framework="pt") as handle:
            return int(handle.metadata()["round"])
    except Exception:
        return 0


@pytest.fixture(scope="module")
def reference(tmp_path_factory, data_dir_module) -> dict[str, torch.Tensor]:
    out = tmp_path_factory.mktemp("reference") / "run"
    done = subprocess.run([sys.executable, *pretrain_cmd(out)], check=True, env=data_dir_module, capture_output=True)
    assert done.stdout.decode() == f"checkpoint: {out / 'checkpoint'}\n"  # -q: no bar, no summary, only the result
    return weights(out)


@pytest.fixture(scope="module")
def data_dir_module() -> dict[str, str]:
    from conftest import DATA_DIR

    if not (DATA_DIR / "cifar100").is_dir():
        pytest.skip(f"real data not found at {DATA_DIR}")
    return {**os.environ, "COPRE_HUB_DATA": str(DATA_DIR), "OMP_NUM_THREADS": "1"}


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=1e-5, msg=name)


def test_kill_and_resume_matches_uninterrupted(reference, data_dir_module, tmp_path) -> None:
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, *pretrain_cmd(out)], env=data_dir_module)
    deadline = time.monotonic() + 120
    while saved_round(out) < 1 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert 1 <= saved_round(out) < 3
    subprocess.run([sys.executable, *pretrain_cmd(out, "--resume")], check=True, env=data_dir_module)
    resumed = weights(out)
    for name, tensor in reference.items():
        assert torch.equal(resumed[name], tensor), name


def test_ctrl_c_says_how_to_continue_and_resume_reuses_the_stored_recipe(reference, data_dir_module, tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, *pretrain_cmd(out)],
        env=data_dir_module,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # Python's KeyboardInterrupt, as in a shell
    )
    deadline = time.monotonic() + 120
    while saved_round(out) < 1 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, "the run finished before it could be interrupted"
    record = json.loads((out / "run.json").read_text())
    assert record["status"] == "interrupted" and 1 <= record["saved_round"] < 3
    assert [r["round"] for r in record["rounds"]] == list(range(1, record["saved_round"] + 1))
    hint = f"continue with `copre-hub pretrain --resume -o {out} --data-dir {data_dir_module['COPRE_HUB_DATA']}`."
    assert stderr.strip().splitlines()[-1].endswith(hint) and stdout == ""
    resumed = subprocess.run(  # no recipe, no flags: the run folder's own recipe; and no -q: the summary
        [sys.executable, "-m", "copre_hub.cli", "pretrain", "--resume", "-o", str(out)],
        env=data_dir_module,
        capture_output=True,
        text=True,
        check=True,
    )
    lines = resumed.stdout.splitlines()
    assert lines[0].startswith("finished smoke-coprefl-cifar100: 3 rounds in ") and "final train_loss" in lines[0]
    assert f"copre-hub evaluate {out / 'checkpoint'} random" in resumed.stdout and "copre-hub push" in resumed.stdout
    assert lines[-1] == f"checkpoint: {out / 'checkpoint'}"
    finished = json.loads((out / "run.json").read_text())
    assert finished["status"] == "finished" and finished["started"] == record["started"]
    for name, tensor in reference.items():
        assert torch.equal(weights(out)[name], tensor), name


def test_two_processes_match_one(reference, data_dir_module, tmp_path) -> None:
    out = tmp_path / "run"
    launch = launch_command(2, free_port())
    subprocess.run([*launch, *pretrain_cmd(out)], check=True, env=data_dir_module, timeout=300)
    record = (out / "run.json").read_text()
    assert '"world_size": 2' in record
    assert_same_weights(weights(out), reference)


def test_two_machines_on_loopback_match_one(reference, data_dir_module, tmp_path) -> None:
    out = tmp_path / "run"
    port = free_port()
    procs = [
        subprocess.Popen(
            [*launch_command(2, port, num_machines=2, machine_rank=rank), *pretrain_cmd(out)], env=data_dir_module
        )
        for rank in (0, 1)
    ]
    assert [p.wait(timeout=300) for p in procs] == [0, 0]
    assert_same_weights(weights(out), reference)


LEAVES_GROUP = """
import atexit, sys, torch
from pathlib import Path
from copre_hub.fl.distributed import Processes
out = Path(sys.argv[1])
atexit.register(lambda: (out / f"{processes.rank}.exit").write_text(str(torch.distributed.is_initialized())))
processes = Processes.from_accelerate(cpu=True)  # its exit handler is registered later, so it runs first
(out / f"{processes.rank}.sum").write_text(str(processes.all_reduce_(torch.ones(1)).item()))
"""


def test_processes_leave_the_process_group_before_interpreter_teardown(tmp_path) -> None:
    """Gloo left to teardown can SIGABRT a finished worker ("terminate called without an active exception")."""
    script = tmp_path / "worker.py"
    script.write_text(LEAVES_GROUP)
    subprocess.run([*launch_command(2, free_port()), str(script), str(tmp_path)], check=True, timeout=120)
    assert [(tmp_path / f"{rank}.sum").read_text() for rank in (0, 1)] == ["2.0", "2.0"]
    assert [(tmp_path / f"{rank}.exit").read_text() for rank in (0, 1)] == ["False", "False"]
