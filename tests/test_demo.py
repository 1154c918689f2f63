"""`copre-hub demo` at its tiny size: the real code path (serve, pre-train, push, load, compare) in seconds."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import torch
from safetensors.torch import load_file

import copre_hub
from copre_hub.cli import build_parser
from copre_hub.demo import (
    COPREFL_LABEL,
    PUBLISHED_ID,
    PUBLISHED_LABEL,
    RANDOM_LABEL,
    SIZES,
    DemoResult,
    compare_published,
    run_demo,
)
from copre_hub.hub.serve.server import running

HUB_VARIABLES = ("HF_ENDPOINT", "HF_TOKEN", "HF_HUB_CACHE", "HF_HUB_OFFLINE")


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[DemoResult, dict[str, str | None]]:
    """One tiny demo run on the real CIFAR-100 (skips without it), and the Hub variables from before it."""
    from conftest import DATA_DIR

    if not (DATA_DIR / "cifar100").is_dir():
        pytest.skip(f"real data not found at {DATA_DIR}; set COPRE_HUB_DATA to the shared/data folder")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("COPRE_HUB_DATA", str(DATA_DIR))
        patch.setenv("HF_ENDPOINT", "http://user-endpoint.invalid")
        before = {name: os.environ.get(name) for name in HUB_VARIABLES}
        yield run_demo(SIZES["tiny"], tmp_path_factory.mktemp("demo"), progress=False), before


def test_the_endpoint_is_stopped_and_the_environment_restored(demo) -> None:
    result, before = demo
    address = urlsplit(result.endpoint)
    assert address.hostname == "127.0.0.1"
    with pytest.raises(OSError):
        socket.create_connection((address.hostname, address.port), timeout=2).close()
    assert {name: os.environ.get(name) for name in HUB_VARIABLES} == before


def test_the_pushed_checkpoint_loads_back_with_the_same_weights(demo, tmp_path, monkeypatch) -> None:
    result, _ = demo
    assert result.weights_match
    pushed = load_file(result.checkpoint / "model.safetensors")
    # serve the demo's storage again, as its output tells the user to, and load from it with a fresh cache
    with running(result.storage, tokens=[]) as url:
        monkeypatch.setenv("HF_ENDPOINT", url)
        monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
        loaded = copre_hub.load(result.repo_id).state_dict()
        card = (copre_hub.pull(result.repo_id) / "README.md").read_text()
    assert f'copre_hub.load("{result.repo_id}", num_classes=10)' in card  # the card names where it was pushed
    assert loaded.keys() == pushed.keys()
    assert all(torch.equal(loaded[name], pushed[name]) for name in pushed)
    assert (result.checkpoint / "README.md").read_text().startswith("---")  # the model card went with it
    assert copre_hub.info(str(result.checkpoint)).config["copre_hub"]["method"] == "coprefl"


def test_the_comparison_has_both_initializations_on_one_task(demo) -> None:
    result, _ = demo
    report = result.report
    assert [entry["label"] for entry in report["initializations"]] == [RANDOM_LABEL, COPREFL_LABEL]
    assert report["protocol"]["tasks"] == 1 and report["protocol"]["algorithm"] == "fedavg"
    assert report["data"]["class_pool"] == list(range(80, 100))
    for entry in report["initializations"]:
        summary = entry["summary"]
        assert len(entry["tasks"][0]["client_accuracies"]) == SIZES["tiny"].downstream_clients
        assert 0.0 <= summary["lowest_10"] <= summary["mean_accuracy"] <= 100.0
        assert summary["variance"] >= 0.0
    assert result.results.is_file() and result.plot.read_bytes().startswith(b"\x89PNG")


def test_the_published_initialization_runs_the_papers_protocol(demo) -> None:
    result, _ = demo
    report = result.published
    assert report is not None, "step 6 was skipped in a checkout with the published snapshot"
    assert [entry["label"] for entry in report["initializations"]] == [RANDOM_LABEL, PUBLISHED_LABEL]
    assert report["data"]["dataset"] == "cifar100" and report["data"]["class_pool"] == list(range(80, 100))
    [published] = [entry for entry in report["initializations"] if entry["label"] == PUBLISHED_LABEL]
    assert published["sha256"] == copre_hub.info(PUBLISHED_ID).sha256
    assert (result.results.parent / "published" / "results.json").is_file()


def test_without_a_copy_of_the_published_id_step_6_says_why(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("COPRE_HUB_SNAPSHOTS", str(tmp_path / "no-snapshots"))  # as a wheel install without them
    from conftest import DATA_DIR

    assert compare_published(SIZES["tiny"], progress=False, data_dir=DATA_DIR) is None
    [line] = capsys.readouterr().out.splitlines()
    assert line.startswith(f"[6/6] skipped the published {PUBLISHED_ID}: ") and "no snapshot" in line


def test_the_demo_verb_takes_the_size_and_the_data_folder() -> None:
    args = build_parser().parse_args(["demo", "--size", "tiny", "--data-dir", "data", "-o", "out", "-q"])
    assert (args.size, args.data_dir, args.output, args.quiet) == ("tiny", Path("data"), Path("out"), True)
    assert build_parser().parse_args(["demo"]).output == Path("copre-hub-demo")
