"""Every benchmark script runs end to end at a tiny size and writes its JSON record, so none of them can rot.

Sizes here check the scripts, not the engine's speed: the figures they print are meaningless at these sizes.
"""

from __future__ import annotations

import importlib
import json
import statistics
import sys
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

TINY_MODEL = ["--arch", "test_resnet", "--threads", "1"]


def run(script: str, tmp_path: Path, *args: str) -> dict:
    """Run ``main(args)`` of ``benchmarks/<script>.py``; returns the JSON record it wrote."""
    importlib.import_module(script).main([*args, "--out-dir", str(tmp_path)])
    record = json.loads((tmp_path / f"{script}.json").read_text())
    assert {"machine", "versions", "args", "targets"} <= record.keys()
    assert record["machine"]["torch_threads"] >= 1 and record["versions"]["torch"]
    assert all({"name", "value", "goal", "pass"} <= t.keys() for t in record["targets"])
    return record


def test_common_counts_flops_and_shares_client_blocks() -> None:
    from _common import synthetic_federation, train_gflop_per_image

    assert train_gflop_per_image("resnet18") == pytest.approx(0.218, rel=0.01)  # DESIGN.md's figure
    data = synthetic_federation(num_clients=5, client_size=3, seed=0, distinct=2)
    assert data.images.shape == (6, 3, 32, 32) and data.images.dtype == torch.uint8
    assert [c.tolist() for c in data.clients] == [[0, 1, 2], [3, 4, 5], [0, 1, 2], [3, 4, 5], [0, 1, 2]]
    again = synthetic_federation(num_clients=2, client_size=3, seed=0)
    assert torch.equal(again.images, data.images)  # a block depends on (seed, block) only


def test_engine_overhead_counts_image_steps_like_the_engine(tmp_path: Path) -> None:
    args = ["--clients", "4", "--client-size", "40", "--participants", "2", "--local-epochs", "1", "--repeats", "2"]
    record = run("engine_overhead", tmp_path, *TINY_MODEL, *args)
    # 2 participants x 32 support images (80% of 40) x 1 epoch, and 2 x 8 query images, per repetition
    assert [(r["local_image_steps"], r["query_images"]) for r in record["repetitions"]] == [(64, 16), (64, 16)]
    assert record["ratio_local_steps_only"]["query_images_counted"] is False
    assert record["ratio_query_counted"]["median"] == pytest.approx(record["ratio_local_steps_only"]["median"] * 1.25)
    assert len(record["targets"]) == 2


def test_scaling_fits_lines_over_both_sweeps(tmp_path: Path) -> None:
    from scaling import line_fit

    assert line_fit([1, 2, 3], [3.0, 5.0, 7.0]) == pytest.approx({"slope": 2.0, "intercept": 1.0, "r2": 1.0})
    args = [
        "--clients",
        "6",
        "--client-size",
        "10",
        "--participants",
        "1",
        "2",
        "3",
        "--epochs",
        "1",
        "2",
        "--fixed-participants",
        "2",
        "--repeats",
        "1",
    ]
    record = run("scaling", tmp_path, *TINY_MODEL, *args)
    assert [(p["sweep"], p["x"]) for p in record["points"]] == [
        ("participants", 1),
        ("participants", 2),
        ("participants", 3),
        ("local_epochs", 1),
        ("local_epochs", 2),
    ]
    assert set(record["fits"]["participants"]) == {"slope", "intercept", "r2"}  # its sign is timing: not asserted
    assert [t["name"] for t in record["targets"]] == ["3 linear in participants (R^2)"]  # 2 points fit any line


def test_load_time_loads_the_same_weights_three_ways(tmp_path: Path) -> None:
    record = run("load_time", tmp_path, *TINY_MODEL, "--num-classes", "7", "--repeats", "2")
    assert set(record["loads"]) == {
        "timm",
        "copre_hub.load(folder)",
        "copre_hub.load(hub id, cached)",
        "sha256 of the weights alone",
    }
    assert all(len(s["runs"]) == 2 for s in record["loads"].values())


def test_vs_research_loop_worker_reports_time_and_memory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import vs_research_loop

    monkeypatch.setenv("BENCH_OUT", str(tmp_path / "worker.json"))
    args = ["--sizes", "10", "--client-size", "10", "--participants", "2", "--rounds", "2", "--worker", "research"]
    result = vs_research_loop.main([*TINY_MODEL, *args])
    assert json.loads((tmp_path / "worker.json").read_text()) == result
    assert len(result["round_seconds"]["runs"]) == 2 and result["peak_rss_mb"] >= result["rss_before_mb"] > 0


@pytest.mark.slow
def test_vs_research_loop_measures_each_configuration_in_a_fresh_process(tmp_path: Path) -> None:
    args = ["--sizes", "4", "40", "--client-size", "10", "--participants", "2", "--distinct", "4", "--rounds", "1"]
    record = run("vs_research_loop", tmp_path, *TINY_MODEL, *args)
    assert [(r["loop"], r["clients"]) for r in record["runs"]] == [
        ("research", 4),
        ("engine", 4),
        ("research", 40),
        ("engine", 40),
    ]
    assert all(r["peak_rss_mb"] >= r["rss_before_mb"] > 0 for r in record["runs"])
    assert len(record["targets"]) == 4


def test_research_loop_computes_the_engines_fedavg() -> None:
    """Every client in the round and one full batch per epoch leave no room for sampling or order: both loops must
    reach the same weights, so the comparison is between two ways of doing the same arithmetic."""
    from _common import create_model, synthetic_federation
    from vs_research_loop import ResearchLoop

    from copre_hub.fl.methods import create_method
    from copre_hub.fl.simulation import Simulation

    data = synthetic_federation(num_clients=3, client_size=8, seed=0)
    method = create_method("fedavg", participants=3, local_epochs=2, batch_size=8, lr=0.1)
    sim = Simulation(create_model("test_resnet", seed=0), data)
    method.round(sim, seed=0, t=0)
    loop = ResearchLoop(create_model("test_resnet", seed=0), data, method, seed=0)
    loop.round(0)
    assert loop.images_seen == 3 * 2 * 8
    ours, theirs = sim.model.state_dict(), loop.net_glob.state_dict()
    for name in ours:
        if ours[name].is_floating_point():
            torch.testing.assert_close(ours[name], theirs[name], rtol=1e-4, atol=1e-5, msg=name)


def test_processes_give_the_same_weights(tmp_path: Path) -> None:
    args = ["--layouts", "1x1", "2x1", "--clients", "4", "--client-size", "10", "--participants", "2", "--rounds", "1"]
    record = run("processes", tmp_path, *TINY_MODEL, *args)
    assert [r["world_size"] for r in record["runs"]] == [1, 2]
    assert record["runs"][1]["max_weight_difference"] < 1e-5


def test_gpu_throughput_script_runs_on_cpu(tmp_path: Path) -> None:
    record = run("gpu_throughput", tmp_path, "--device", "cpu", "--tiny", "--processes", "2", "--threads", "1")
    assert [row["loop"] for row in record["rows"]] == [
        "centralized, batch 16",
        "engine, 2 process(es) per GPU",
        "research loop",
    ]
    assert record["rows"][0]["of peak"] == 1.0 and record["precision"] == "no"


@pytest.mark.slow
def test_vs_flower_trains_the_same_model(tmp_path: Path) -> None:
    pytest.importorskip("flwr", reason="Flower is the optional `bench` extra")
    args = ["--clients", "4", "--participants", "2", "--rounds", "2", "--client-size", "10", "--repeats", "1"]
    record = run("vs_flower", tmp_path, *TINY_MODEL, *args)
    assert record["max_weight_difference"] < 1e-5  # same participants, batches and averaging on both sides
    assert len(record["targets"]) == 2


def test_calibrate_runs_readings_and_selects_by_the_fixed_rule(data_dir, tmp_path: Path) -> None:
    calibrate = importlib.import_module("calibrate")
    only = ["test_resnet/5steps/lr0.05/m0.9", "test_resnet/5steps/lr0.05/m0"]
    args = ["--arch", "test_resnet", "--tasks", "1", "--rounds", "1", "--only", *only]
    argv = [*args, "--work", str(tmp_path / "work"), "--out-dir", str(tmp_path / "out"), "--data-dir", str(data_dir)]
    assert calibrate.main(argv) == 0
    payload = json.loads((tmp_path / "out" / "calibrate-cifar100.json").read_text())
    assert [row["reading"] for row in payload["rows"]] == ["test_resnet/5steps/lr0.05/m0", only[0]]
    assert [list(row["by_task"]) for row in payload["rows"]] == [["0"], ["0"]]
    assert "| by task |" in (tmp_path / "out" / "calibrate-cifar100.md").read_text()
    momentum = next(r for r in payload["readings"] if r["name"] == only[0])
    assert momentum["protocol"]["momentum"] == 0.9 and momentum["protocol"]["local_steps"] == 5
    rows = [
        {"reading": "cheap-far", "cost": 1, "gap": -10.0},
        {"reading": "dear-close", "cost": 8, "gap": -0.5},
        {"reading": "cheap-close", "cost": 1, "gap": 2.5},
        {"reading": "cheap-closer", "cost": 1, "gap": -1.0},
    ]
    assert calibrate.select(rows)["reading"] == "cheap-closer"
    assert calibrate.select(rows[:1]) is None


def test_calibrate_joins_a_readings_tasks_from_separate_runs(data_dir, tmp_path: Path) -> None:
    """Task 1 run alone (``--task-indices``) is task 1 of a two-task run, and the table joins it to task 0."""
    calibrate = importlib.import_module("calibrate")
    reading = "test_resnet/5steps/lr0.05/m0"
    common = ["--arch", "test_resnet", "--rounds", "1", "--only", reading, "--data-dir", str(data_dir)]

    def run(name: str, *tasks: str) -> dict:
        argv = [*common, *tasks, "--work", str(tmp_path / name), "--out-dir", str(tmp_path / name / "out")]
        assert calibrate.main(argv) == 0
        return json.loads((tmp_path / name / "out" / "calibrate-cifar100.json").read_text())

    whole = run("whole", "--tasks", "2")
    first = run("split", "--tasks", "1")
    joined = run("split", "--tasks", "2", "--task-indices", "1")
    assert [len(r["tasks"]) for r in first["readings"]] == [1]
    assert sorted(t["index"] for r in joined["readings"] for t in r["tasks"]) == [0, 1]  # two runs
    assert joined["rows"][0]["by_task"] == whole["rows"][0]["by_task"]
    assert joined["rows"][0]["variance"] == pytest.approx(whole["rows"][0]["variance"])
    with pytest.raises(SystemExit):
        calibrate.main([*common, "--tasks", "2", "--task-indices", "2", "--work", str(tmp_path / "bad")])


def test_select_pretraining_tunes_every_method_on_validation_tasks(data_dir, tmp_path: Path) -> None:
    select = importlib.import_module("select_pretraining")
    assert len(select.candidates("coprefl", select.parse_args(["--momentum"]))) == 4 * 2 * 2
    assert len(select.candidates("fedavg", select.parse_args([]))) == 4
    narrowed = select.parse_args(["--lrs", "1e-2", "5e-3", "--meta-lrs", "1e-2", "--momentum", "0.9"])
    assert select.candidates("coprefl", narrowed) == [
        {"lr": 1e-2, "meta_lr": 1e-2, "momentum": 0.9},
        {"lr": 5e-3, "meta_lr": 1e-2, "momentum": 0.9},
    ]
    args = ["--scale", "smoke", "--dataset", "cifar100", "--methods", "fedavg", "--tasks", "1", "--rounds", "1"]
    args += ["--work-dir", str(tmp_path / "work"), "--results-dir", str(tmp_path), "--data-dir", str(data_dir), "-q"]
    assert select.main(args) == 0
    payload = json.loads((tmp_path / "select-smoke-cifar100.json").read_text())
    assert payload["protocol"]["seed"] == 1 and payload["rounds_reduced"]
    assert [c["settings"]["lr"] for c in payload["candidates"]] == list(select.LRS)
    best = max(payload["candidates"], key=lambda c: (c["validation_accuracy"], -c["settings"]["lr"]))
    assert payload["selected"] == {"fedavg": best["label"]}
    assert 0 < payload["random"]["validation_accuracy"] < 100  # the floor on the same validation tasks
    assert payload["grid"] == {"fedavg": {"lr": list(select.LRS)}}
    assert "random weights: " in (tmp_path / "select-smoke-cifar100.md").read_text()
    assert "Grid: fedavg: lr 0.01/0.005/0.001/0.0005" in (tmp_path / "select-smoke-cifar100.md").read_text()
    assert (tmp_path / "select-smoke-cifar100.args").read_text().split() == [
        "--pretrain-set",
        f"fedavg:method.lr={best['settings']['lr']}",
    ]


def test_paper_on_gpu_stops_at_the_budget_then_resumes_and_reuses(data_dir, tmp_path: Path) -> None:
    paper = importlib.import_module("paper_on_gpu")
    results = tmp_path / "results"
    results.mkdir()
    (results / "gpu_throughput.json").write_text(json.dumps({"peak_images_per_second": 1000.0}))
    args = ["--device", "cpu", "--tiny", "--workers", "2", "--labels", "random", "fedavg", "--no-throughput"]
    args += ["--work-dir", str(tmp_path / "work"), "--results-dir", str(results), "--data-dir", str(data_dir)]
    written = results / "paper-on-gpu-cifar100-tiny.json"

    assert paper.main([*args, "--budget-seconds", "0"]) == 0  # nothing fits: every row is written as missing
    stopped = json.loads(written.read_text())
    assert stopped["not_finished"] == ["random", "fedavg"] and stopped["evaluation"] is None
    assert all(job == {"skipped": True} for job in stopped["jobs"].values()) and len(stopped["jobs"]) == 3
    table1a = stopped["tables"][0]
    assert table1a["rows"][0][:3] == ["FedAvg (fedavg)", "not finished", "78.96 ± 2.98"]

    assert paper.main(args) == 0  # the same call without a budget finishes every piece
    done = json.loads(written.read_text())
    assert done["not_finished"] == [] and sorted(done["jobs"]) == sorted(stopped["jobs"])
    assert all(job["returncode"] == 0 for job in done["jobs"].values())
    # 2 rounds x 4 participants x the mean client size (10 classes x 600 images, less the server's 5%, over 20
    # clients), 1 epoch; and per initialization 2 tasks x 2 rounds x 10 clients x 5 steps x 32 images
    assert done["nominal_image_steps"] == 2 * 4 * 285 + 2 * (2 * 2 * 10 * 5 * 32)
    assert done["fraction_of_peak"] == pytest.approx(done["images_per_second"] / 1000.0)
    fedavg_row = done["tables"][0]["rows"][0]
    assert fedavg_row[0] == "FedAvg (fedavg)" and "not finished" not in fedavg_row
    assert [t["title"].split(":")[0] for t in done["tables"]][-2:] == ["Paired", "Pre-training"]

    assert paper.main(args) == 0  # a rerun starts nothing and gives the same numbers
    again = json.loads(written.read_text())
    assert again["jobs"] == {} and again["evaluation"]["initializations"] == done["evaluation"]["initializations"]


def test_small_clients_compares_the_in_place_loop_and_times_fixed_costs(tmp_path: Path) -> None:
    args = ["--clients", "6", "--participants", "3", "--client-size", "20", "--repeats", "2", "--cost-repeats", "2"]
    record = run("small_clients", tmp_path, *TINY_MODEL, *args)
    assert [len(record["seconds_per_round"][loop]["runs"]) for loop in ("C", "P2", "E", "E1")] == [2, 2, 2, 2]
    paired = record["paired_ratios"]
    assert all(r["low"] <= r["median"] <= r["high"] and len(r["ratios"]) == 2 for r in paired.values())
    assert paired["C over E (efficiency)"]["median"] == pytest.approx(
        statistics.median(c / e for c, e in zip(*(record["seconds_per_round"][k]["runs"] for k in "CE"), strict=True))
    )
    phases = record["engine_round_ms_per_client"]
    assert 0 < phases["restore"] < phases["local SGD"] < record["engine_ms_per_client"]
    assert set(record["fixed_costs_ms_per_client"]) == {"restore", "accumulate", "draws", "batch gather + normalise"}
    assert record["first_round_max_weight_difference_p2_vs_engine"] < 1e-5  # P2 computes the engine's FedAvg
    assert [t["name"] for t in record["targets"]] == ["E over P2 (speed)", "C over E (efficiency)"]
    assert [t["value"] for t in record["targets"]] == [paired[t["name"]]["median"] for t in record["targets"]]


def test_cpu_options_times_each_option_and_pairs_bf16_with_fp32_on_the_smoke_recipe(tmp_path: Path, data_dir) -> None:
    args = ["--clients", "4", "--participants", "2", "--client-size", "40", "--repeats", "2"]
    options = ["--options", "fp32 eager", "bf16 + channels_last", "--data-dir", str(data_dir), "--tasks", "2"]
    record = run("cpu_options", tmp_path, *TINY_MODEL, *args, *options, "--rounds", "1")
    assert [len(r["runs"]) for r in record["seconds_per_round"].values()] == [2, 2]
    assert record["recipe_round_scale"] == 50  # 20 participants / 2, x 5 epochs
    assert [t["name"] for t in record["targets"]] == ["bf16 + channels_last over fp32 eager (speed)"]
    checked = record["accuracy"]
    assert len(checked["per_task"]["no"]) == len(checked["per_task"]["bf16"]) == 2
    assert checked["bf16_minus_fp32"]["mean"] == pytest.approx(
        sum(checked["per_task"]["bf16"]) / 2 - sum(checked["per_task"]["no"]) / 2
    )
