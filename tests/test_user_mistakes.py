"""Every user mistake, for every verb: one line on stderr naming the problem, exit status 2, no traceback, and
nothing left behind. The table runs the real entry point in this process (torch is imported once); the closed pipe
runs it as a subprocess. None of it needs the datasets, the network or a GPU."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from copre_hub.cli import main

REPO = Path(__file__).resolve().parents[1]
SMOKE = str(REPO / "training" / "recipes" / "smoke.toml")
NO_CUDA = "--device cuda (run.device) was asked for but no CUDA device is visible"
MODEL = ["--arch", "test_resnet", "--dataset", "cifar100"]

# verb -> [(arguments, part of the message)]; {out}, {file}, {empty} and {data} are filled in per test.
MISTAKES: dict[str, list[tuple[list[str], str]]] = {
    "copre-hub": [
        ([], "the following arguments are required: COMMAND"),
        (["nosuchverb"], "invalid choice: 'nosuchverb'"),
    ],
    "pretrain": [
        (["-o", "{out}"], "pretrain needs a recipe, e.g. `copre-hub pretrain training/recipes/smoke.toml`"),
        ([str(REPO / "training" / "recipes"), "-o", "{out}"], "is a folder, not a recipe file; recipes in"),
        (["{out}.toml"], "does not exist; recipes in"),
        ([SMOKE, "-o", "{out}", "--set", "method.rounds=three"], "method.rounds must be an integer, got 'three'."),
        ([SMOKE, "-o", "{out}", "--set", "method.gamma=abc"], "method.gamma must be a number, got 'abc'."),
        ([SMOKE, "-o", "{out}", "--set", "partition.alpha=[1]"], "partition.alpha must be a number, got [1]."),
        ([SMOKE, "-o", "{out}", "--set", "method.rounds"], "is not KEY=VALUE"),
        ([SMOKE, "-o", "{out}", "--rounds", "three"], "argument --rounds: invalid int value: 'three'"),
        ([SMOKE, "-o", "{out}", "--gamma", "2"], "gamma must be in [0, 1]"),
        ([SMOKE, "-o", "{out}", "--device", "gpu"], "run.device must be one of"),
        ([SMOKE, "-o", "{out}", "--data-dir", "{out}"], "COPRE_HUB_DATA (--data-dir)"),
        ([SMOKE, "-o", "{out}", "--data-dir", "{data}/cifar100"], "looks like the cifar100 folder itself"),
        ([SMOKE, "-o", "{out}", "--data-path", "{empty}"], "holds no data files; expected Parquet shards"),
        ([SMOKE, "-o", "{out}", "--data-path", "{out}"], "data.path (--data-path)"),
        ([SMOKE, "-o", "{file}"], "is a file"),
        ([SMOKE, "-o", "{out}", "--resume"], "holds no saved run to resume"),
        (["--resume"], "--resume without a recipe needs the run folder"),
        (["--resume", "-o", "{empty}"], "holds no run record with a recipe"),
        ([SMOKE, "-o", "{out}", "--bogus"], "unrecognized arguments: --bogus"),
        ([SMOKE, "-o", "{out}", "--set", "method.momentum=1.0"], "method.momentum must be in [0, 1), got 1.0."),
        ([SMOKE, "-o", "{out}", "--set", "method.nesterov=true"], "method.nesterov needs method.momentum above 0"),
        ([SMOKE, "-o", "{out}", "--set", "model.init=3"], "model.init must be"),
    ],
    "evaluate": [
        ([str(REPO / "training"), "-o", "{out}"], "is a folder but not a checkpoint (no config.json)"),
        (["random", "-o", "{out}", "--data-path", "{empty}"], "--data-path needs --dataset"),
        (["random", "-o", "{out}", "--dataset", "cifar100", "--data-path", "{empty}"], "holds no data files"),
        (["random", "-o", "{file}"], "is a file; give a folder"),
        (["random", "-o", "{out}", "--device", "tpu"], "argument --device: invalid choice: 'tpu'"),
        (["random", "-o", "{out}", "--tasks", "many"], "argument --tasks: invalid int value"),
        (["random", "-o", "{out}", *MODEL, "--lr", "-0.5"], "downstream lr must be positive, got -0.5."),
        (["random", "-o", "{out}", *MODEL, "--alpha", "0"], "downstream alpha must be positive, got 0.0."),
        (["random", "-o", "{out}", *MODEL, "--q", "-1"], "downstream q cannot be negative, got -1.0."),
        (["random", "-o", "{out}", *MODEL, "--tasks", "0"], "downstream tasks must be at least 1, got 0."),
        (["random", "-o", "{out}"], "'random' needs an architecture"),
        (["random", "-o", "{out}", *MODEL, "--momentum", "1.5"], "downstream momentum must be in [0, 1), got 1.5."),
        (["random", "-o", "{out}", *MODEL, "--nesterov"], "downstream nesterov needs downstream momentum above 0"),
        (["random", "-o", "{out}", *MODEL, "--weight-decay", "-1"], "downstream weight_decay cannot be negative"),
        (["random", "-o", "{out}", *MODEL, "--protocol", "nosuch"], "argument --protocol: invalid choice: 'nosuch'"),
    ],
    "demo": [
        (["-o", "{file}"], "is a file; give a folder for the demo's output"),
        (["-o", "{file}/sub"], "is a file; give a folder for the demo's output"),
        (["-o", "{out}", "--data-dir", "{out}"], "COPRE_HUB_DATA (--data-dir)"),
        (["-o", "{out}", "--data-dir", "{data}/cifar100"], "give its parent"),
        (["-o", "{out}", "--size", "huge"], "argument --size: invalid choice: 'huge'"),
    ],
    "serve": [
        (["--storage", "{out}", "--port", "99999"], "port must be from 0 to 65535 (0: any free port), got 99999"),
        (["--storage", "{out}", "--port", "http"], "port must be a number from 0 to 65535, got 'http'"),
        (["--storage", "{out}", "--max-body-mb", "0"], "--max-body-mb must be positive, got 0."),
        (["--storage", "{out}", "--gated-reads"], "--gated-reads needs --token-file or --token"),
        (["--port", "8080"], "the following arguments are required: --storage"),
    ],
    "push": [
        (["{out}", "org/x"], "is not a checkpoint folder"),
        (["{empty}", "org/x"], "has no config.json; a checkpoint holds config.json, model.safetensors"),
    ],
    "pull": [(["org/x@a@b"], "at most one '@revision'")],
    "info": [(["local-dir:{out}"], "no checkpoint folder at")],
    "list": [(["--remote"], "HF_HUB_OFFLINE=1")],
}
CASES = [
    pytest.param(verb, args, message, id=f"{verb} {' '.join(args)}")
    for verb, cases in MISTAKES.items()
    for args, message in cases
]


@pytest.fixture
def places(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Paths the table refers to: a missing folder, a file, an empty folder, and a data folder whose cifar100/ holds
    a (fake) Parquet shard; offline and with no CUDA, so no case can reach the network or a GPU."""
    (tmp_path / "file").write_text("not a folder")
    (tmp_path / "empty").mkdir()
    shard = tmp_path / "data" / "cifar100" / "data" / "train-00000.parquet"
    shard.parent.mkdir(parents=True)
    shard.write_bytes(b"")
    monkeypatch.setenv("COPRE_HUB_DATA", str(tmp_path / "data"))  # restored after the test, whatever main sets
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    return {name: str(tmp_path / name) for name in ("out", "file", "empty", "data")}


def run(argv: list[str]) -> int:
    """``main(argv)``, with argparse's ``SystemExit`` turned into its status."""
    try:
        return main(argv)
    except SystemExit as exited:
        return int(exited.code or 0)


@pytest.mark.parametrize(("verb", "args", "message"), CASES)
def test_a_mistake_is_one_line_and_exit_2(verb, args, message, places, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ([] if verb == "copre-hub" else [verb]) + [arg.format(**places) for arg in args]
    status = run(argv)
    captured = capsys.readouterr()
    assert (status, captured.err.count("\n")) == (2, 1), captured.err
    assert captured.err.startswith("copre-hub") and ": error: " in captured.err
    assert message in captured.err and "Traceback" not in captured.err
    assert not Path(places["out"]).exists(), "a failed command left its output folder behind"


def test_cuda_without_a_gpu_is_refused_by_every_verb(places, capsys: pytest.CaptureFixture[str]) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is visible")
    for argv in (
        ["pretrain", SMOKE, "-o", places["out"], "--device", "cuda"],
        ["pretrain", SMOKE, "-o", places["out"], "--set", 'run.device="cuda"'],
        ["evaluate", "random", "-o", places["out"], *MODEL, "--device", "cuda"],
    ):
        assert run(argv) == 2
        err = capsys.readouterr().err
        assert err == f"copre-hub: error: {NO_CUDA}; use --device cpu or auto.\n"
    assert not Path(places["out"]).exists()


def test_a_closed_output_pipe_is_one_line(tiny_checkpoint) -> None:
    """`copre-hub info ID --json | head`: the reader is gone before copre-hub writes."""
    _, folder = tiny_checkpoint
    read, write = os.pipe()
    os.close(read)  # no reader at all: the first write fails with EPIPE
    try:
        done = subprocess.run(
            [sys.executable, "-m", "copre_hub.cli", "info", str(folder), "--json"],
            stdout=write,
            stderr=subprocess.PIPE,
            text=True,
            timeout=120,
        )
    finally:
        os.close(write)
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith("copre-hub: error: the output was closed before it was all written")


def test_flags_that_name_a_whole_setup_need_no_recipe(places) -> None:
    from copre_hub.cli import build_parser
    from copre_hub.cli.train import _recipe_data

    setup = ["--method", "fedavg", "--arch", "test_resnet", "--dataset", "cifar100", "--rounds", "2"]
    args = build_parser().parse_args(["pretrain", *setup, "--set", "method.lr=0.01"])
    raw = _recipe_data(args)
    assert raw["name"] == "fedavg-test_resnet-cifar100"
    assert raw["method"] == {"name": "fedavg", "rounds": 2, "lr": 0.01}


@pytest.mark.parametrize("verb", [["pretrain", SMOKE], ["evaluate", "random", *MODEL], ["demo"]])
def test_data_dir_is_passed_on_not_written_to_the_environment(verb, places, monkeypatch, capsys) -> None:
    """``--data-dir`` wins over ``$COPRE_HUB_DATA`` (here an empty folder) and leaves the environment as it was."""
    monkeypatch.setenv("COPRE_HUB_DATA", places["empty"])
    assert run([*verb, "-o", places["out"], "--data-dir", f"{places['data']}/cifar100"]) == 2
    assert "give its parent" in capsys.readouterr().err  # --data-dir was read, not the empty folder
    assert os.environ["COPRE_HUB_DATA"] == places["empty"]
