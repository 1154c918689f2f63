"""The Flower Apps in examples/ run the way Flower users run apps: ``flwr run .`` (flwr >= 1.42).

``flwr run`` starts a local SuperLink of its own (a detached process) on the default local simulation federation
(2 SuperNodes). Each test gives it a temporary ``FLWR_HOME`` and free ports, and stops that SuperLink afterwards.
Flower's runtime dependency installation is off (``FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1``): the apps run
in this environment, which has copre-hub, and need no package index.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
import torch

pytest.importorskip("flwr.simulation", reason="needs flwr: pip install 'copre-hub[flower]'")
pytest.importorskip("ray", reason="Flower's simulation runtime needs ray: pip install 'flwr[simulation]'")

import copre_hub
from copre_hub.fl.distributed import free_port

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
BIN = Path(sys.executable).parent  # flwr, flower-superlink and flower-supernode of this environment


def processes_mentioning(text: str) -> list[int]:
    """Pids of this machine's processes whose command line contains ``text`` (a path unique to one test)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if text in (entry / "cmdline").read_bytes().decode(errors="replace"):
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


@pytest.fixture
def flwr_env(tmp_path: Path):
    """Environment for ``flwr``: a temporary FLWR_HOME, free local-SuperLink ports, this venv's tools on PATH."""
    home = tmp_path / "flwr-home"
    env = {
        **os.environ,
        "FLWR_HOME": str(home),
        "FLWR_LOCAL_SUPERLINK_HTTP_API_PORT": str(free_port()),
        "FLWR_LOCAL_CONTROL_API_PORT": str(free_port()),
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "OMP_NUM_THREADS": "1",
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    }
    yield env
    for pid in processes_mentioning(str(home)):  # the SuperLink `flwr run` started, found by its log path
        os.kill(pid, signal.SIGTERM)


def flwr_run(app: Path, env: dict, *args: str, timeout: int = 600) -> str:
    """``flwr run <app> --stream ...``; returns its output, failing the test with it on a non-zero exit."""
    done = subprocess.run(
        [str(BIN / "flwr"), "run", str(app), *args, "--stream"],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    return output


def test_flower_app_runs_from_a_checkpoint_with_flwr_run(data_dir, tiny_checkpoint, tmp_path, flwr_env) -> None:
    _, init = tiny_checkpoint
    out = tmp_path / "final"
    overrides = (
        f"model-id='{init}' num-classes=3 num-server-rounds=1 fraction-train=0.5 local-steps=2 lr=0.05 "
        f"output-dir='{out}'"
    )
    log = flwr_run(EXAMPLES / "flower-app", flwr_env, "--run-config", overrides)

    assert "[ROUND 1/1]" in log and "[ROUND 2/" not in log  # num-server-rounds honoured
    assert "Sampled 1 nodes (out of 2)" in log  # fraction-train 0.5 of the default federation's 2 nodes
    config = json.loads((out / "config.json").read_text())
    assert config["copre_hub"]["derived_from"] == str(init)
    assert config["copre_hub"]["downstream"] | {"final_metrics": None} == {
        "framework": "flower",
        "algorithm": "fedavg",
        "rounds": 1,
        "fraction_train": 0.5,
        "local_steps": 2,
        "lr": 0.05,
        "classes": "80-82",
        "final_metrics": None,
    }
    assert 0.0 <= config["copre_hub"]["downstream"]["final_metrics"]["eval_acc"] <= 1.0
    final = copre_hub.load(out)  # a verified checkpoint with the task's 3-way head, ready for push
    started = copre_hub.load(init, num_classes=3)
    assert final.fc.weight.shape[0] == 3
    before, after = started.state_dict(), final.state_dict()
    assert any(not torch.equal(after[n], before[n]) for n in before if not n.startswith("fc."))  # it trained


def test_a_flower_app_takes_copre_hub_as_a_direct_reference_to_its_wheel(tmp_path, flwr_env) -> None:
    """examples/README.md's way: build the wheel, name it in the app's dependencies; Flower bundles the app with it
    and uv (what Flower installs app dependencies with) installs copre-hub from it, with no package index."""
    dist = tmp_path / "dist"
    build = [
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "-q",
        "--no-deps",
        "--no-build-isolation",
        "-w",
        str(dist),
        str(REPO),
    ]
    scratch = not (REPO / "build").exists()  # setuptools builds in the source tree; leave it as it was
    try:
        subprocess.run(build, check=True, capture_output=True)
    finally:
        if scratch:
            shutil.rmtree(REPO / "build", ignore_errors=True)
    (wheel,) = dist.glob("copre_hub-*.whl")
    app = shutil.copytree(EXAMPLES / "flower-app", tmp_path / "app", ignore=shutil.ignore_patterns("__pycache__"))
    reference = f"copre-hub @ {wheel.as_uri()}"
    pyproject = app / "pyproject.toml"
    text = pyproject.read_text()
    pyproject.write_text(text.replace('"flwr[simulation]>=1.42",', f'"flwr[simulation]>=1.42",\n    "{reference}",', 1))

    subprocess.run([str(BIN / "flwr"), "build", "--app", str(app)], cwd=tmp_path, env=flwr_env, check=True)
    (fab,) = tmp_path.glob("*.fab")
    with zipfile.ZipFile(fab) as bundle:
        bundled = tomllib.loads(bundle.read("pyproject.toml").decode())["project"]["dependencies"]
    assert reference in bundled
    install = [
        sys.executable,
        "-m",
        "uv",
        "pip",
        "install",
        "--offline",
        "--no-deps",
        "--target",
        str(tmp_path / "env"),
    ]
    subprocess.run([*install, reference], check=True, capture_output=True)
    assert (tmp_path / "env" / "copre_hub" / "flower" / "app.py").is_file()


@pytest.mark.slow
def test_flower_pretraining_app_ends_with_the_engines_checkpoint(data_dir, tmp_path, flwr_env) -> None:
    from safetensors.torch import load_file

    from copre_hub.fl.pretrain import pretrain
    from copre_hub.fl.recipe import apply_override, recipe_from_dict

    app = EXAMPLES / "flower-pretrain"
    overrides = ["method.rounds=1", "method.local_steps=2"]  # keys of the app's run config
    log = flwr_run(app, flwr_env, "--run-config", " ".join([*overrides, f"output-dir='{tmp_path / 'flower'}'"]))
    assert "configure_train: clients [0, 1]" in log

    raw = tomllib.loads((app / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    raw.pop("output-dir")
    for item in overrides:
        apply_override(raw, item)
    engine = pretrain(recipe_from_dict(raw), tmp_path / "engine", progress=False)  # the same recipe, in the engine
    flower_weights = load_file(tmp_path / "flower" / "model.safetensors")
    for name, tensor in load_file(engine / "model.safetensors").items():
        if tensor.is_floating_point():
            torch.testing.assert_close(flower_weights[name], tensor, rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.slow
def test_flower_pretraining_on_a_superlink_with_two_supernodes(data_dir, tmp_path, flwr_env) -> None:
    """The README's deployment on loopback: one SuperLink, two SuperNodes (each told its partition), ``flwr run``."""
    port = free_port()
    home = Path(flwr_env["FLWR_HOME"])
    home.mkdir(parents=True)
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "loopback"\n\n[superlink.loopback]\naddress = "127.0.0.1:{port}"\ninsecure = true\n'
    )
    superlink = [str(BIN / "flower-superlink"), "--insecure", "--host", "127.0.0.1", "--port", str(port)]
    started = [subprocess.Popen([*superlink, "--database", str(tmp_path / "state.db")], env=flwr_env)]
    try:
        for client in range(2):
            supernode = [str(BIN / "flower-supernode"), "--insecure", "--superlink", f"127.0.0.1:{port}"]
            node_config = f"partition-id={client} num-partitions=2"
            started.append(
                subprocess.Popen([*supernode, "--port", str(free_port()), "--node-config", node_config], env=flwr_env)
            )
        out = tmp_path / "deployed"
        overrides = f"method.rounds=1 method.local_steps=2 output-dir='{out}'"
        log = flwr_run(EXAMPLES / "flower-pretrain", flwr_env, "loopback", "--run-config", overrides)
    finally:
        for process in started:
            process.terminate()
        for process in started:
            process.wait(timeout=30)
    assert "configure_train: clients [0, 1]" in log
    config = json.loads((out / "config.json").read_text())
    assert config["copre_hub"]["trained_with"] == "flower" and config["copre_hub"]["method"] == "coprefl"
    assert copre_hub.load(out).num_classes == 80  # CIFAR-100's pre-training classes
