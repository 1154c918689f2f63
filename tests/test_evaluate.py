"""Comparing initializations end to end on real CIFAR-100: identical tasks, the report, the CLI and the card merge."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from copre_hub.cli import main
from copre_hub.errors import ConfigError
from copre_hub.fl.data import ImageData
from copre_hub.fl.downstream import DownstreamConfig
from copre_hub.fl.evaluate import Initialization, evaluate, model_factory, resolve, with_random_architecture
from copre_hub.fl.metrics import summarize, task_metrics
from copre_hub.fl.report import PLOT_NAME, REPORT_NAME, card_eval_result, format_table, merge_reports, write_report

SPLIT = {"dataset": "cifar100", "pretrain_classes": list(range(80)), "downstream_classes": list(range(80, 100))}
SETTINGS = {"tasks": 2, "rounds": 1, "local_steps": 1, "batch_size": 16}


@pytest.fixture(scope="module")
def cifar(tmp_path_factory):
    """COPRE_HUB_DATA for the whole module (skips without the real data)."""
    from conftest import DATA_DIR

    if not (DATA_DIR / "cifar100").is_dir():
        pytest.skip(f"real data not found at {DATA_DIR}; set COPRE_HUB_DATA to the shared/data folder")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("COPRE_HUB_DATA", str(DATA_DIR))
        yield DATA_DIR


@pytest.fixture(scope="module")
def checkpoint(cifar, tmp_path_factory, make_checkpoint) -> Path:
    """A test_resnet checkpoint pre-trained (here: randomly) on 80 CIFAR-100 classes, recording its class split."""
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "a", seed=1, num_classes=80, data=SPLIT)[1]


@pytest.fixture(scope="module")
def report(checkpoint) -> dict:
    """The checkpoint, random init and the checkpoint again, on the same two tasks."""
    return evaluate([str(checkpoint), "random", str(checkpoint)], SETTINGS, labels=["a", "random", "a-again"])


def entry(report: dict, label: str) -> dict:
    return next(e for e in report["initializations"] if e["label"] == label)


def test_the_report_has_exactly_the_keys_of_its_types_and_survives_json(report, tmp_path) -> None:
    from copre_hub.fl import report_format as rf
    from copre_hub.fl.metrics import METRICS

    assert list(report) == list(rf.Report.__annotations__)  # the order results.json is written in, too
    assert set(report["data"]) == set(rf.DataRecord.__annotations__)
    assert all(set(task) == set(rf.TaskDraw.__annotations__) for task in report["tasks"])
    for entry in report["initializations"]:
        assert set(entry) == set(rf.InitializationResult.__annotations__)
        assert all(set(task) == set(rf.TaskResult.__annotations__) for task in entry["tasks"])
        assert set(entry["summary"]) == {name for m in METRICS for name in (m, f"{m}_std")}
        assert len(rf.pooled_accuracies(entry)) == sum(len(task["test_sizes"]) for task in report["tasks"])
    assert rf.random_entry(report) is rf.initialization(report, "random")
    with pytest.raises(ConfigError, match=r"no initialization labelled 'b'.*labels are a, random, a-again"):
        rf.initialization(report, "b")
    results, _ = write_report(report, tmp_path)
    assert json.loads(results.read_text()) == report


def test_every_initialization_faces_the_same_tasks(report) -> None:
    assert report["protocol"] == {**DownstreamConfig().__dict__, **SETTINGS}
    assert report["data"]["class_pool"] == list(range(80, 100))
    assert [t["index"] for t in report["tasks"]] == [0, 1]
    for task in report["tasks"]:
        assert len(task["classes"]) == 5 and set(task["classes"]) <= set(range(80, 100))
        assert len(task["train_sizes"]) == len(task["test_sizes"]) == 10
    # same backbone, same head, same partitions and batches: identical numbers; another backbone: other numbers
    same, again, random = entry(report, "a"), entry(report, "a-again"), entry(report, "random")
    assert [t["client_accuracies"] for t in same["tasks"]] == [t["client_accuracies"] for t in again["tasks"]]
    assert [t["client_accuracies"] for t in same["tasks"]] != [t["client_accuracies"] for t in random["tasks"]]
    assert random["architecture"] == "test_resnet" and random["sha256"] is None
    assert same["sha256"] and same["summary"] == summarize(same["tasks"])


def test_separate_evaluations_merge_into_the_joint_one(report, checkpoint) -> None:
    alone = evaluate(["random"], SETTINGS, architecture="test_resnet")
    assert alone["tasks"] == report["tasks"] and alone["data"] == report["data"]
    assert (
        entry(alone, "random")["tasks"][1]["client_accuracies"]
        == entry(report, "random")["tasks"][1]["client_accuracies"]
    )
    merged = merge_reports([alone, report])
    assert [e["label"] for e in merged["initializations"]] == ["random", "a", "random#2", "a-again"]
    with pytest.raises(ConfigError, match="protocol"):
        merge_reports([report, {**report, "protocol": {**report["protocol"], "seed": 1}}])


def test_task_indices_run_those_tasks_of_the_whole_comparison(report) -> None:
    alone = evaluate(["random"], SETTINGS, architecture="test_resnet", task_indices=[1])
    assert alone["tasks"] == report["tasks"][1:]
    assert (
        entry(alone, "random")["tasks"][0]["client_accuracies"]
        == (entry(report, "random")["tasks"][1]["client_accuracies"])
    )
    assert "(1 task of 10 clients;" in format_table(alone)  # the tasks that ran, not the protocol's count
    assert card_eval_result(alone, "random")["tasks"] == 1
    with pytest.raises(ConfigError, match=r"task indices \[2\] are not among the protocol's 2 tasks \(0-1\)"):
        evaluate(["random"], SETTINGS, architecture="test_resnet", task_indices=[0, 2])


def test_cache_folder_resumes_an_interrupted_comparison(checkpoint, tmp_path, monkeypatch) -> None:
    import copre_hub.fl.evaluate as evaluation

    real, calls = evaluation.run_task, []

    def run_task(*args, **kwargs):
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt  # interrupted in the second task of the second initialization
        return real(*args, **kwargs)

    monkeypatch.setattr(evaluation, "run_task", run_task)
    with pytest.raises(KeyboardInterrupt):
        evaluate([str(checkpoint), "random"], SETTINGS, cache_dir=tmp_path)
    saved = sorted(len(json.loads(path.read_text())["tasks"]) for path in tmp_path.glob("*.json"))
    assert saved == [1, 2]
    first = evaluate([str(checkpoint), "random"], SETTINGS, cache_dir=tmp_path)
    assert len(calls) == 5  # only the interrupted task is run again
    assert entry(first, "random")["summary"] == summarize(entry(first, "random")["tasks"])
    again = evaluate(["random", str(checkpoint)], SETTINGS, labels=["base", "a"], cache_dir=tmp_path)
    assert len(calls) == 5  # everything reused, under the new labels
    assert entry(again, "base")["tasks"] == entry(first, "random")["tasks"]
    assert entry(again, "a")["tasks"] == entry(first, "test-resnet-tiny")["tasks"]
    evaluate([str(checkpoint)], {**SETTINGS, "seed": 1}, cache_dir=tmp_path)
    assert len(calls) == 7 and len(list(tmp_path.glob("*.json"))) == 3  # other tasks: run again


def test_cache_reuses_the_first_tasks_when_more_are_asked_for(checkpoint, tmp_path, monkeypatch) -> None:
    import copre_hub.fl.evaluate as evaluation

    real, calls = evaluation.run_task, []
    monkeypatch.setattr(evaluation, "run_task", lambda *a, **k: calls.append(1) or real(*a, **k))
    one = evaluate(["random"], {**SETTINGS, "tasks": 1}, architecture="test_resnet", cache_dir=tmp_path)
    two = evaluate(["random"], SETTINGS, architecture="test_resnet", cache_dir=tmp_path)
    assert len(calls) == 2  # task 0 once, then only task 1
    assert entry(two, "random")["tasks"][0] == entry(one, "random")["tasks"][0]
    evaluate(["random"], {**SETTINGS, "tasks": 1}, architecture="test_resnet", cache_dir=tmp_path)
    assert len(calls) == 2 and len(list(tmp_path.glob("*.json"))) == 1


def test_an_earlier_report_counts_as_finished_tasks(
    checkpoint, report, make_checkpoint, tmp_path, monkeypatch, caplog
) -> None:
    import copre_hub.fl.evaluate as evaluation

    real, calls = evaluation.run_task, []
    monkeypatch.setattr(evaluation, "run_task", lambda *a, **k: calls.append(1) or real(*a, **k))
    earlier, _ = write_report(report, tmp_path / "earlier")
    other = make_checkpoint(tmp_path / "b", seed=2, num_classes=80, data=SPLIT)[1]
    again = evaluate([str(other), str(checkpoint), "random"], SETTINGS, labels=["b", "a", "random"], reuse=[earlier])
    assert len(calls) == 2  # only the new checkpoint's two tasks: the others' are in the report
    assert entry(again, "a")["tasks"] in (entry(report, "a")["tasks"], entry(report, "a-again")["tasks"])
    assert entry(again, "random")["tasks"] == entry(report, "random")["tasks"]
    more = evaluate(["random"], {**SETTINGS, "tasks": 3}, architecture="test_resnet", reuse=[earlier])
    assert len(calls) == 3 and entry(more, "random")["tasks"][:2] == entry(report, "random")["tasks"]
    with caplog.at_level("WARNING", logger="copre_hub"):
        evaluate(["random"], {**SETTINGS, "seed": 1}, architecture="test_resnet", reuse=[earlier])
    assert len(calls) == 5 and f"nothing reused from {earlier}" in caplog.text  # other tasks: run


@pytest.mark.parametrize("content", ['{"architecture": "resnet18"}', "not json", None])
def test_reuse_refuses_what_is_not_a_report_in_one_line(content, tmp_path, capsys) -> None:
    path = tmp_path / "evaluation.json"
    if content is not None:
        path.write_text(content)
    assert main(["evaluate", "random", "--arch", "test_resnet", "--reuse", str(path), "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert str(path) in err and "\n" not in err
    assert ("is not a downstream report" if content and content[0] == "{" else "cannot read the report") in err


def test_table_json_and_plot(report, tmp_path) -> None:
    table = format_table(report).splitlines()
    header = ["initialization", "accuracy (%)", "variance", "lowest 10% (%)", "lowest 20% (%)", "lowest 30% (%)"]
    assert [cell.strip() for cell in table[0].split("  ") if cell.strip()] == header and len(table) == 7
    summary, random = entry(report, "a")["summary"], entry(report, "random")["summary"]
    assert table[1].split()[:4] == ["a", f"{summary['mean_accuracy']:.2f}", "±", f"{summary['mean_accuracy_std']:.2f}"]
    gain = summary["mean_accuracy"] - random["mean_accuracy"]
    assert table[4].startswith(f"a vs random: {gain:+.2f} points of accuracy") and table[5].startswith("a-again vs")
    assert table[6].startswith("(mean ± std over 2 tasks of 10 clients; accuracy: the clients' mean final")
    one_task = {**report, "tasks": report["tasks"][:1]}
    assert "±" not in format_table(one_task) and "(1 task of 10 clients;" in format_table(one_task)
    json_path, plot_path = write_report(report, tmp_path)
    assert json.loads(json_path.read_text())["initializations"][0]["label"] == "a"
    assert plot_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and plot_path.name == PLOT_NAME


def test_card_result_has_the_documented_shape(report) -> None:
    from copre_hub.hub.cards import build_model_card

    result = card_eval_result(report, "a")
    documented = {"dataset", "classes", "algorithm", "tasks", "clients", "rounds", "client_accuracies", "protocol"}
    documented.add("baselines")
    metrics = {
        f"{m}{s}" for m in ("mean_accuracy", "variance", "lowest_10", "lowest_20", "lowest_30") for s in ("", "_std")
    }
    assert set(result) == documented | metrics
    assert result["classes"] == "unseen 80-99" and len(result["client_accuracies"]) == 20
    card = build_model_card({"architecture": "test_resnet", "pretrained_cfg": {}}, None, result)
    assert len(card.data.eval_results) == 5
    assert [b["label"] for b in result["baselines"]] == ["random", "a-again"]
    random = entry(report, "random")["summary"]
    assert f"| same tasks from random | {random['mean_accuracy']:.2f} ± {random['mean_accuracy_std']:.2f} |" in str(
        card
    )
    ours, theirs = entry(report, "a")["tasks"], entry(report, "random")["tasks"]
    diffs = [a["mean_accuracy"] - b["mean_accuracy"] for a, b in zip(ours, theirs, strict=True)]
    paired = result["baselines"][0]["paired"]["mean_accuracy"]
    assert paired["mean"] == pytest.approx(sum(diffs) / 2) and paired["tasks"] == 2
    assert f"vs random: accuracy {paired['mean']:+.2f} ± {paired['ci95']:.2f} (higher in {paired['higher']}/2" in str(
        card
    )


def test_cli_evaluates_and_merges_into_the_checkpoint(checkpoint, tmp_path, capsys) -> None:
    import copre_hub

    folder = Path(shutil.copytree(checkpoint, tmp_path / "mine"))
    sha = json.loads((folder / "config.json").read_text())["copre_hub"]["sha256"]
    weights = folder / "model.safetensors"
    before = (weights.read_bytes(), weights.stat().st_mtime_ns, weights.stat().st_ino)
    args = ["evaluate", str(folder), "--tasks", "1", "--rounds", "1", "--local-steps", "1", "-o", str(tmp_path / "out")]
    for _ in range(2):  # the second merge replaces the first (same protocol)
        assert main([*args, "-q", "--merge"]) == 0
    out = capsys.readouterr().out
    assert "\ntest-resnet-tiny  " in out and f"merged into {folder}" in out
    assert (tmp_path / "out" / REPORT_NAME).is_file() and (tmp_path / "out" / PLOT_NAME).is_file()
    block = json.loads((folder / "config.json").read_text())["copre_hub"]
    assert len(block["eval_results"]) == 1 and block["eval_results"][0]["tasks"] == 1
    assert block["sha256"] == sha
    assert (weights.read_bytes(), weights.stat().st_mtime_ns, weights.stat().st_ino) == before  # weights untouched
    metrics = {r["name"] for r in copre_hub.info(folder).eval_results}
    assert any("mean accuracy" in name for name in metrics)
    readme = (folder / "README.md").read_text()
    assert "Downstream mean accuracy" in readme and "classes unseen 80-99" in readme


def test_random_alone_needs_an_architecture(capsys) -> None:
    assert main(["evaluate", "random", "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("copre-hub: error: 'random' needs an architecture") and "\n" not in err


def test_checkpoint_on_data_with_other_channels_is_refused(checkpoint) -> None:
    grey = ImageData(torch.zeros(4, 1, 28, 28, dtype=torch.uint8), torch.arange(4), list("abcd"), (0.5,), (0.5,))
    init = with_random_architecture([resolve(str(checkpoint))], None)[0]
    with pytest.raises(ConfigError, match="3-channel input but the dataset has 1"):
        model_factory(init, grey, 5, DownstreamConfig())
    assert with_random_architecture([init, Initialization(source="random")], None)[1].random_arch == (
        "test_resnet",
        {},
    )


def load_benchmark():
    """benchmarks/reproduce_paper.py as a module (benchmarks/ is not a package)."""
    import importlib.util
    import sys

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "reproduce_paper.py"
    spec = importlib.util.spec_from_file_location("reproduce_paper", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("scale", ["paper", "cpu", "smoke"])
@pytest.mark.parametrize("dataset", ["cifar100", "femnist"])
def test_every_benchmark_scale_builds_valid_recipes(scale: str, dataset: str) -> None:
    bench = load_benchmark()
    settings = bench.SCALES[(scale, dataset)]
    runs = bench.plan(settings, dataset, seed=0)
    labels = [run.label for run in runs]
    qffl = [f"qffl-q{q:g}" for q in settings.qffl_qs] or ["qffl"]
    assert labels[: 4 + len(qffl)] == ["random", "centralized", "fedavg", "fedmeta", *qffl]
    assert len(set(labels)) == len(labels)
    assert [run.recipe.build_method().q for run in runs if run.method == "qffl"][: len(settings.qffl_qs)] == list(
        settings.qffl_qs
    )
    paper_gamma = f"coprefl-g{bench.DATASETS[dataset]['gamma']}"
    assert paper_gamma in labels and ("coprefl-hybrid-g" in " ".join(labels)) == settings.scenario2
    for run in runs[1:]:
        method = run.recipe.build_method()
        assert run.recipe.data.dataset == dataset and method.name == run.method
        if run.method != "centralized":
            assert (method.rounds, method.participants) == (settings.rounds, settings.participants)
    if scale != "smoke":  # the centralized baseline makes as many passes over the data as FedAvg
        assert settings.centralized_epochs == settings.rounds * settings.participants * settings.local_epochs // 100


def test_overrides_reach_every_run_or_the_named_method() -> None:
    bench = load_benchmark()
    runs = bench.plan(
        bench.SCALES[("smoke", "cifar100")], "cifar100", 0, ("method.momentum=0.9", "coprefl:method.lr=0.05")
    )
    methods = {run.label: run.recipe.build_method() for run in runs if run.recipe}
    assert all(m.momentum == 0.9 for m in methods.values())
    assert {label for label, m in methods.items() if m.lr == 0.05} == {"coprefl-g0.0", "coprefl-g0.75"}


def test_seeds_are_averaged_task_by_task() -> None:
    def report(accuracies: list[float]) -> dict:
        tasks = [{"index": 0, "client_accuracies": accuracies, "seconds": 1.0, **task_metrics(accuracies)}]
        return {"initializations": [{"label": "a", "tasks": tasks, "summary": {}}]}

    combined = load_benchmark().combine_seeds([report([50.0, 70.0]), report([60.0, 60.0])])
    task = combined["initializations"][0]["tasks"][0]
    assert task["client_accuracies"] == [55.0, 65.0] and task["mean_accuracy"] == 60.0
    assert task["variance"] == 50.0  # the mean of the seeds' variances (100 and 0)


def test_seed_table_differences_seed_by_seed() -> None:
    def init(accuracies: list[float]) -> dict:
        return {"seeds": {str(s): {"summary": {"mean_accuracy": a}} for s, a in enumerate(accuracies)}}

    table = load_benchmark().seed_table({"fedavg": init([80, 82]), "coprefl": init([81, 82.5])})
    # differences 1 and 0.5 (sample std 0.354): 95% t interval with 1 degree of freedom (t = 12.706)
    assert table["header"] == ["pre-training", "Acc seed 0", "Acc seed 1", "ΔAcc vs fedavg", "higher"]
    assert table["rows"] == [
        ["fedavg", "80.00", "82.00", "—", "—"],
        ["coprefl", "81.00", "82.50", "+0.75 ± 3.18", "2/2"],
    ]


def test_paired_table_differences_task_by_task() -> None:
    def init(label: str, accuracies: list[float], variances: list[float]) -> dict:
        tasks = [
            {"mean_accuracy": a, "variance": v, "lowest_10": a - 10, "lowest_20": a - 5, "lowest_30": a - 3}
            for a, v in zip(accuracies, variances, strict=True)
        ]
        return {"label": label, "tasks": tasks}

    report = {"initializations": [init("fedavg", [50, 70], [40, 60]), init("coprefl", [53, 71], [30, 70])]}
    table = load_benchmark().paired_table(report)
    # differences 3 and 1 (sample std 1.414), -10 and 10: 95% t intervals with 1 degree of freedom (t = 12.706)
    assert table["rows"] == [["coprefl", "+2.00 ± 12.71", "+0.00 ± 127.06", "+2.00 ± 12.71", "2/2", "1/2"]]


def test_shards_split_each_seeds_initializations_between_processes(monkeypatch, tmp_path, capsys) -> None:
    bench = load_benchmark()
    done: list[tuple[str, str | None]] = []
    monkeypatch.setattr(bench, "pretrain_one", lambda run, out, progress, data_dir: out)
    monkeypatch.setattr(
        bench, "evaluate_one", lambda run, checkpoint, *rest, data_dir: done.append((run.label, checkpoint))
    )
    labels = [run.label for run in bench.plan(bench.SCALES[("smoke", "femnist")], "femnist", 0)]
    for shard in ("0/2", "1/2"):
        argv = ["--scale", "smoke", "--dataset", "femnist", "--seeds", "0", "3", "--shard", shard]
        assert bench.main([*argv, "--work-dir", str(tmp_path), "-q"]) == 0
    assert [label for label, _ in done] == labels[0::2] * 2 + labels[1::2] * 2  # each once per seed, in one shard
    folders = {checkpoint for _, checkpoint in done}
    assert tmp_path / "seed-3" / "pretrain" / labels[1] in folders  # where the unsharded run looks for them
    assert ("random", None) in done and "rerun without --shard" in capsys.readouterr().out


@pytest.mark.slow
def test_reproduce_paper_smoke_end_to_end_then_reused(cifar, tmp_path) -> None:
    bench = load_benchmark()
    args = ["--scale", "smoke", "--dataset", "cifar100", "--work-dir", str(tmp_path / "work")]
    args += ["--results-dir", str(tmp_path / "results"), "--data-dir", str(cifar), "-q"]
    assert bench.main(args) == 0
    results = json.loads((tmp_path / "results" / "reproduce-smoke-cifar100.json").read_text())
    baselines = ["random", "centralized", "fedavg", "fedmeta", "qffl"]
    assert list(results["initializations"]) == [*baselines, "coprefl-g0.0", "coprefl-g0.75"]
    assert [t["title"].split(":")[0] for t in results["tables"]] == [
        "Table 1a",
        "Table 3a",
        "Table 2",
        "Paired",
        "Pre-training",
    ]
    assert (tmp_path / "results" / "reproduce-smoke-cifar100.md").read_text().count("| CoPreFL") == 2
    assert bench.main(args) == 0  # a second run reuses every checkpoint and evaluation: the same numbers
    again = json.loads((tmp_path / "results" / "reproduce-smoke-cifar100.json").read_text())
    assert again["evaluation"]["initializations"] == results["evaluation"]["initializations"]


def test_reports_and_checkpoints_record_no_machine_data_path(report, tmp_path, monkeypatch) -> None:
    from copre_hub.fl.data import portable_source
    from copre_hub.fl.partition import FederatedData
    from copre_hub.fl.pretrain import Prepared, checkpoint_meta
    from copre_hub.fl.recipe import load_recipe

    assert report["data"]["source"] == "$COPRE_HUB_DATA/cifar100"
    (tmp_path / "data" / "cifar100").mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.setenv("COPRE_HUB_DATA", str(tmp_path / "data"))
    assert portable_source(str(tmp_path / "data" / "cifar100")) == "$COPRE_HUB_DATA/cifar100"
    assert portable_source("uoft-cs/cifar100") == "uoft-cs/cifar100"
    assert portable_source(str(tmp_path / "elsewhere")) == str(tmp_path / "elsewhere")  # data.path, as given
    data = FederatedData.from_tensors([(torch.zeros(2, 1, 2, 2), torch.tensor([0, 1]))], num_classes=2)
    data.meta["source"] = str(tmp_path / "data" / "cifar100")
    recipe = load_recipe(Path(__file__).resolve().parents[1] / "training" / "recipes" / "smoke.toml")
    prepared = Prepared(recipe, recipe.build_method(), data, torch.nn.Linear(1, 1), ((0,), (1,)), ["a", "b"], (1, 2, 2))
    assert checkpoint_meta(prepared, {}, {})["data"]["source"] == "$COPRE_HUB_DATA/cifar100"
