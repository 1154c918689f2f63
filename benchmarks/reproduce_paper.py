"""Reproduce the paper's comparison of initializations on CIFAR-100 or FEMNIST, at a chosen scale.

    python benchmarks/reproduce_paper.py --scale smoke --dataset cifar100   # 1-2 minutes, checks the pipeline
    python benchmarks/reproduce_paper.py --scale cpu --dataset cifar100     # about an hour on 2 CPU cores
    python benchmarks/reproduce_paper.py --scale paper --dataset cifar100   # the paper's settings, for a GPU

On a CPU, processes that share the work folder can split the initializations (each with one thread), then one
run without ``--shard`` reuses everything and writes the tables::

    OMP_NUM_THREADS=1 python benchmarks/reproduce_paper.py --scale paper --dataset femnist --shard 0/2 &
    OMP_NUM_THREADS=1 python benchmarks/reproduce_paper.py --scale paper --dataset femnist --shard 1/2 &
    wait; python benchmarks/reproduce_paper.py --scale paper --dataset femnist

Stages, one function each:

1. ``pretrain_all``: every initialization (Random, Centralized, FedAvg, FedMeta, q-FFL, CoPreFL at each gamma of
   the sweep; Scenario II's hybrid ones where the scale says so) through :func:`copre_hub.fl.pretrain.pretrain`,
   from the recipes in ``training/recipes/`` with the scale's overrides. A run whose checkpoint exists in the work
   folder is skipped; an interrupted one is resumed from its last saved round.
2. ``evaluate_all``: each initialization on the same downstream tasks (:func:`copre_hub.fl.evaluate.evaluate`,
   one shared seed), saved per initialization, so an interrupted run keeps what it finished.
3. ``paper_tables``: our numbers beside the paper's (Table 1a, Table 1b for Scenario II, Table 3a, and Table 2's
   gamma sweep, which the paper ran on Tiny-ImageNet: shown beside ours as the trend to compare, labelled so).

Writes ``benchmarks/results/reproduce-<scale>-<dataset>.json`` (settings, timings, every client accuracy),
``.md`` (the tables) and ``.png`` (per-client accuracy histograms).

Budget of the ``cpu`` scale, from single-thread CPU seconds measured per round on the 2-core machine (two free
cores run these about 1.5x faster than one; torch on 2 threads slows down badly while other jobs load the cores):

* CIFAR-100 (resnet18, 32x32): pre-training per round 19.9 s FedAvg, 17.0 CoPreFL, 30.1 FedMeta, 22.6 q-FFL, and
  162 s per centralized epoch: 10 rounds x (19.9 + 30.1 + 22.6 + 4 gammas x 17.0) + 162 = 1568 s. Downstream
  7.6 s per round: 9 initializations x 3 tasks x 10 rounds x 7.6 = 2060 s. In all 3630 s on one core, about
  40 minutes on two.
* FEMNIST (femnist_cnn): per round 3.1 s FedAvg/CoPreFL, 4.7 FedMeta, 3.4 q-FFL, 3.8 hybrid CoPreFL, 2.5 s per
  centralized epoch: about 1240 s for the 13 pre-trainings of 30 rounds; downstream 1.5 s per round:
  13 x 10 tasks x 10 rounds x 1.5 = 1920 s. In all about 3160 s on one core, under 40 minutes on two.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from copre_hub.fl.report_format import Report

REPO = Path(__file__).resolve().parents[1]
RECIPES = REPO / "training" / "recipes"


@dataclass(frozen=True)
class Scale:
    """How big a reproduction is.

    Pre-training: ``clients`` M, ``participants`` |m| per round, ``rounds`` T, ``local_epochs`` E; the centralized
    baseline trains ``centralized_epochs`` epochs (T x |m|/M x E, the passes over the data FedAvg makes, as the
    paper's 50). ``gammas``: CoPreFL's sweep (Table 2; it always includes the gamma the paper reports for the
    dataset). ``scenario2``: also Table 1b's hybrid initializations. Downstream:
    ``tasks`` X and ``downstream_rounds`` R (the rest is the paper's: 5 classes, 10 clients, Dir(0.5), 5 local
    steps, batch 32, lr 1e-3). ``architecture`` and ``pretrain_classes`` replace the recipe's (smoke only: a tiny
    model, a few pre-training classes). ``qffl_qs``: q-FFL's sweep (the paper tries q in {1, 3, 5} and reports the
    best); empty: the recipe's q only.
    """

    clients: int
    participants: int
    rounds: int
    local_epochs: int
    centralized_epochs: int
    gammas: tuple[float, ...]
    scenario2: bool
    tasks: int
    downstream_rounds: int
    architecture: str | None = None
    pretrain_classes: tuple[int, ...] | None = None
    qffl_qs: tuple[float, ...] = ()


ALL_GAMMAS = (0.0, 0.25, 0.5, 0.75, 1.0)
SCALES: dict[tuple[str, str], Scale] = {
    # The paper (sections 2.3, 2.5, 2.6); meant for a GPU.
    ("paper", "cifar100"): Scale(100, 20, 50, 5, 50, ALL_GAMMAS, True, 10, 50, qffl_qs=(1.0, 3.0, 5.0)),
    ("paper", "femnist"): Scale(100, 20, 50, 5, 50, ALL_GAMMAS, True, 10, 10, qffl_qs=(1.0, 3.0, 5.0)),
    # About 40 minutes on 2 free CPU cores, about an hour on one (the budget is in the module docstring).
    ("cpu", "cifar100"): Scale(100, 10, 10, 1, 1, (0.0, 0.5, 0.75, 1.0), False, 3, 10),
    ("cpu", "femnist"): Scale(100, 20, 30, 5, 30, (0.0, 0.5, 1.0), True, 10, 10),
    # The pipeline end to end in about a minute: a tiny model (CIFAR), ten pre-training classes, two rounds.
    ("smoke", "cifar100"): Scale(20, 4, 2, 1, 1, (0.0, 0.75), False, 2, 2, "test_resnet", tuple(range(10))),
    ("smoke", "femnist"): Scale(20, 4, 2, 1, 1, (0.0, 0.5), False, 2, 2, None, tuple(range(10, 20))),
}

# Per dataset: the recipe whose data/partition/model tables every run uses, and the gamma the paper reports
# for Scenario I / II (section 4.4).
DATASETS = {
    "cifar100": {"base": "copreFL-resnet18-cifar100.toml", "gamma": 0.75, "gamma_hybrid": 0.25},
    "femnist": {"base": "copreFL-femnistcnn-femnist.toml", "gamma": 0.5, "gamma_hybrid": 0.75},
}
# The recipe whose [method] table each pre-training method uses, per scenario.
METHOD_RECIPES = {
    ("centralized", 1): "centralized-resnet18-cifar100.toml",
    ("fedavg", 1): "fedavg-resnet18-cifar100.toml",
    ("fedmeta", 1): "fedmeta-resnet18-cifar100.toml",
    ("qffl", 1): "qffl-resnet18-cifar100.toml",
    ("coprefl", 1): "copreFL-resnet18-cifar100.toml",
    ("fedavg", 2): "fedavg-resnet18-cifar100-hybrid.toml",
    ("fedmeta", 2): "fedmeta-resnet18-cifar100-hybrid.toml",
    ("qffl", 2): "qffl-resnet18-cifar100-hybrid.toml",
    ("coprefl-sgd", 2): "copreFL-sgd-resnet18-cifar100-hybrid.toml",
    ("coprefl", 2): "copreFL-resnet18-cifar100-hybrid.toml",
}

# The paper's numbers (mean, std over 10 tasks), copied from shared/reference/coprefl-paper.md section 4.
ACC, VAR, L10, L20 = "mean_accuracy", "variance", "lowest_10", "lowest_20"
PAPER: dict[str, dict[str, dict[str, tuple[float, float]]]] = {
    "table1a": {  # Scenario I, CIFAR-100, non-IID pre-training and downstream FedAvg
        "fedavg": {ACC: (78.96, 2.98), VAR: (64.80, 3.01), L10: (62.70, 3.35), L20: (67.00, 2.95)},
        "fedmeta": {ACC: (82.45, 3.07), VAR: (48.72, 2.84), L10: (68.97, 3.04), L20: (72.41, 3.06)},
        "qffl": {ACC: (80.01, 2.67), VAR: (88.92, 3.31), L10: (64.39, 2.95), L20: (67.48, 2.67)},
        "coprefl": {ACC: (83.29, 2.61), VAR: (34.69, 3.17), L10: (71.58, 3.00), L20: (73.20, 2.98)},
    },
    "table1b": {  # Scenario II (5% server data), CIFAR-100
        "fedavg": {ACC: (82.82, 3.17), VAR: (49.00, 3.41), L10: (69.71, 3.25), L20: (72.54, 3.30)},
        "fedmeta": {ACC: (82.69, 3.05), VAR: (48.44, 2.99), L10: (68.84, 3.14), L20: (71.82, 3.27)},
        "qffl": {ACC: (82.14, 2.76), VAR: (73.10, 3.08), L10: (68.22, 3.00), L20: (70.64, 2.85)},
        "coprefl-sgd": {ACC: (83.63, 3.00), VAR: (41.73, 2.85), L10: (69.76, 2.94), L20: (73.46, 3.09)},
        "coprefl": {ACC: (86.63, 2.93), VAR: (31.58, 2.64), L10: (73.05, 2.51), L20: (75.82, 2.88)},
    },
    "table3a": {  # other initializations, Scenario I, CIFAR-100 (SCAFFOLD, FedDyn, PerFedAvg are not implemented)
        "random": {ACC: (75.32, 1.68), VAR: (41.39, 3.35)},
        "centralized": {ACC: (81.30, 2.92), VAR: (69.44, 2.33)},
        "coprefl": {ACC: (83.29, 2.61), VAR: (34.69, 3.17)},
    },
    "table2": {  # CoPreFL's gamma, Scenario I, **Tiny-ImageNet**
        "0.0": {ACC: (83.11, 2.17), VAR: (24.70, 1.95)},
        "0.25": {ACC: (84.04, 2.00), VAR: (35.88, 2.59)},
        "0.5": {ACC: (85.23, 2.43), VAR: (35.40, 2.75)},
        "0.75": {ACC: (85.19, 2.38), VAR: (39.31, 2.64)},
        "1.0": {ACC: (86.33, 1.92), VAR: (39.81, 2.30)},
    },
}
MISSING = "not finished"  # our cell of a run that has no evaluation yet
DISPLAY = {
    "random": "Random",
    "centralized": "Centralized",
    "fedavg": "FedAvg",
    "fedmeta": "FedMeta",
    "qffl": "q-FFL",
    "coprefl-sgd": "CoPreFL-SGD",
    "coprefl": "CoPreFL",
}


@dataclass(frozen=True)
class Run:
    """One initialization to compare: its label, method and scenario, gamma for CoPreFL, q for q-FFL, its recipe."""

    label: str
    method: str
    scenario: int
    gamma: float | None
    recipe: Any  # copre_hub.fl.recipe.Recipe; None for Random
    q: float | None = None


# ---------------------------------------------------------------------------------------------------- the plan


def plan(scale: Scale, dataset: str, seed: int, overrides: tuple[str, ...] = ()) -> list[Run]:
    """Every initialization this scale compares, with its recipe (``overrides``, ``KEY=VALUE``, go on top)."""
    info = DATASETS[dataset]
    gammas = sorted({*scale.gammas, info["gamma"]})

    def run(method: str, scenario: int, gamma: float | None = None, q: float | None = None) -> Run:
        label = method + ("-hybrid" if scenario == 2 else "") + (f"-g{gamma}" if gamma is not None else "")
        label += f"-q{q:g}" if q is not None else ""
        recipe = build_recipe(label, method, scenario, gamma, scale, dataset, seed, q=q, overrides=overrides)
        return Run(label, method, scenario, gamma, recipe, q)

    def qffl(scenario: int) -> list[Run]:
        return [run("qffl", scenario, q=q) for q in scale.qffl_qs] or [run("qffl", scenario)]

    runs = [Run("random", "random", 1, None, None)]
    runs += [run(m, 1) for m in ("centralized", "fedavg", "fedmeta")] + qffl(1)
    runs += [run("coprefl", 1, g) for g in gammas]
    if scale.scenario2:
        runs += [run(m, 2) for m in ("fedavg", "fedmeta")] + qffl(2)
        runs += [run(m, 2, info["gamma_hybrid"]) for m in ("coprefl-sgd", "coprefl")]
    return runs


def build_recipe(
    label: str,
    method: str,
    scenario: int,
    gamma: float | None,
    scale: Scale,
    dataset: str,
    seed: int,
    q: float | None = None,
    overrides: tuple[str, ...] = (),
):
    """The method's [method] table, the dataset's data/partition/model tables, the scale's overrides, then
    ``overrides``: ``KEY=VALUE`` for every run, or ``METHOD:KEY=VALUE`` (a method or a label) for some, e.g. the
    selected ``coprefl:method.meta_lr=0.01``."""
    from copre_hub.fl.recipe import apply_override, recipe_from_dict

    raw = tomllib.loads((RECIPES / DATASETS[dataset]["base"]).read_text())
    raw["method"] = tomllib.loads((RECIPES / METHOD_RECIPES[(method, scenario)]).read_text())["method"]
    centralized = method == "centralized"
    settings = {
        "name": f'"{label}-{dataset}"',
        "seed": seed,
        "partition.num_clients": scale.clients,
        "run.checkpoint_every": 1,  # resumable after every round
        "method.rounds": scale.centralized_epochs if centralized else scale.rounds,
        **({} if centralized else {"method.participants": scale.participants}),
        **({} if centralized else {"method.local_epochs": scale.local_epochs}),
        **({"method.gamma": gamma} if gamma is not None else {}),
        **({"method.q": q} if q is not None else {}),
        **({"model.architecture": f'"{scale.architecture}"'} if scale.architecture else {}),
        **({"data.pretrain_classes": list(scale.pretrain_classes)} if scale.pretrain_classes else {}),
    }
    for override in [f"{key}={value}" for key, value in settings.items()] + list(overrides):
        target, _, setting = override.rpartition(":") if ":" in override.split("=")[0] else ("", "", override)
        if target in ("", method, label):
            apply_override(raw, setting)
    return recipe_from_dict(raw)


# ---------------------------------------------------------------------------------------------------- stage 1


def pretrain_all(runs: list[Run], work: Path, progress: bool, data_dir: Path | None = None) -> dict[str, Path]:
    """Each run's checkpoint folder: reused when finished with the same recipe, resumed when interrupted."""
    return {
        run.label: pretrain_one(run, work / "pretrain" / run.label, progress, data_dir=data_dir)
        for run in runs
        if run.recipe
    }


def pretrain_one(run: Run, out: Path, progress: bool, data_dir: Path | None = None) -> Path:
    """``run``'s checkpoint in ``out``, with data from ``data_dir`` (default: ``$COPRE_HUB_DATA``, else the Hub)."""
    from copre_hub.fl.pretrain import CHECKPOINT_DIR, RECORD_NAME, STATE_NAME, pretrain

    checkpoint = out / CHECKPOINT_DIR
    if (checkpoint / "config.json").is_file():
        record = json.loads((out / RECORD_NAME).read_text())
        if record.get("fingerprint") != run.recipe.fingerprint():
            raise SystemExit(f"{out} holds a run of other settings; delete it or choose another --work-dir.")
        print(f"[pretrain] {run.label}: done earlier, reusing {checkpoint}")
        return checkpoint
    resume = (out / STATE_NAME).is_file()
    print(f"[pretrain] {run.label}: {'resuming' if resume else 'starting'} ({run.recipe.method})")
    return pretrain(run.recipe, out, resume=resume, progress=progress, data_dir=data_dir)


# ---------------------------------------------------------------------------------------------------- stage 2


def evaluate_all(
    runs: list[Run],
    checkpoints: dict[str, Path],
    protocol,
    data,
    architecture: str,
    work: Path,
    progress: bool,
    data_dir: Path | None = None,
) -> dict:
    """One report over every initialization, each evaluated (or reloaded) on its own under the same protocol."""
    from copre_hub.fl.report import merge_reports

    return merge_reports(
        [
            evaluate_one(
                run, checkpoints.get(run.label), protocol, data, architecture, work, progress, data_dir=data_dir
            )
            for run in runs
        ]
    )


def evaluate_one(
    run: Run,
    checkpoint: Path | None,
    protocol,
    data,
    architecture: str,
    work: Path,
    progress: bool,
    processes=None,
    data_dir: Path | None = None,
):
    """One initialization's report; kept in ``work/evaluate/`` and reused by a rerun with the same protocol.

    ``processes`` (a :class:`copre_hub.fl.distributed.Processes`) sets the device and precision; by default
    CUDA when there is one, in float32. ``data_dir``: as for :func:`pretrain_one`."""
    from copre_hub.fl.evaluate import evaluate

    print(f"[evaluate] {run.label}: {protocol.tasks} tasks x {protocol.rounds} rounds")
    source = str(checkpoint) if checkpoint else "random"
    return evaluate(
        [source],
        protocol,
        data,
        architecture=architecture,
        labels=[run.label],
        progress=progress,
        cache_dir=work / "evaluate",
        processes=processes,
        data_dir=data_dir,
    )


# ---------------------------------------------------------------------------------------------------- stage 3


def paper_tables(runs: list[Run], report: Report, dataset: str) -> list[dict]:
    """Our numbers beside the paper's: each table a title, a note, a header and rows of cells.

    A run missing from ``report`` (not finished) keeps its row, with ``MISSING`` in our cells."""
    ours = {entry["label"]: entry["summary"] for entry in report["initializations"]}
    label: dict[tuple[str, int, float | None], str] = {}
    for r in runs:  # of a sweep (q-FFL's q), the best mean accuracy stands for the method, as in the paper
        key = (r.method, r.scenario, r.gamma)
        if r.label not in ours:
            label.setdefault(key, r.label)
            continue
        if key not in label or label[key] not in ours or ours[r.label][ACC] > ours[label[key]][ACC]:
            label[key] = r.label
    gamma, gamma_hybrid = DATASETS[dataset]["gamma"], DATASETS[dataset]["gamma_hybrid"]
    paper = "CIFAR-100" + ("" if dataset == "cifar100" else " (FEMNIST's Tables 43-46 are not in our reference notes)")
    four = (ACC, VAR, L10, L20)

    def rows(table: str, methods: list[tuple[str, int, float | None]], metrics: tuple[str, ...]) -> list[list[str]]:
        out = []
        for method, scenario, g in methods:
            name = label.get((method, scenario, g))  # None: not in the plan (a subset of it was run)
            theirs = PAPER[table].get(method, {})
            cells = [cell for m in metrics for cell in (_cell(ours.get(name), m), _paper_cell(theirs.get(m)))]
            out.append([f"{DISPLAY[method]} ({name or 'not run'})", *cells])
        return out

    table1a = [("fedavg", 1, None), ("fedmeta", 1, None), ("qffl", 1, None), ("coprefl", 1, gamma)]
    table1b = [("fedavg", 2, None), ("fedmeta", 2, None), ("qffl", 2, None)]
    table1b += [("coprefl-sgd", 2, gamma_hybrid), ("coprefl", 2, gamma_hybrid)]
    table3a = [("random", 1, None), ("centralized", 1, None), ("coprefl", 1, gamma)]
    sweep = [r for r in runs if r.method == "coprefl" and r.scenario == 1]
    tables = [
        {
            "title": "Table 1a: Scenario I, non-IID pre-training, non-IID downstream FedAvg",
            "note": f"ours: {dataset}; paper: {paper}",
            "header": ["pre-training", *_pairs(four)],
            "rows": rows("table1a", table1a, four),
        },
        {
            "title": "Table 3a: other initializations, Scenario I, non-IID downstream FedAvg",
            "note": f"ours: {dataset}; paper: {paper}; SCAFFOLD, FedDyn and PerFedAvg are not implemented",
            "header": ["pre-training", *_pairs((ACC, VAR))],
            "rows": rows("table3a", table3a, (ACC, VAR)),
        },
        {
            "title": "Table 2: CoPreFL's gamma, Scenario I",
            "note": f"ours: {dataset}; paper: Tiny-ImageNet, shown as the trend to compare (larger gamma, higher "
            "accuracy and higher variance)",
            "header": ["gamma", "Acc (ours)", "Acc (paper, Tiny-IN)", "Var (ours)", "Var (paper, Tiny-IN)"],
            "rows": [
                [str(r.gamma), *(c for m in (ACC, VAR) for c in _gamma_cells(ours.get(r.label), r.gamma, m))]
                for r in sweep
            ],
        },
    ]
    if any(r.scenario == 2 for r in runs):
        tables.insert(
            1,
            {
                "title": "Table 1b: Scenario II (5% server data), non-IID downstream FedAvg",
                "note": f"ours: {dataset}; paper: {paper}",
                "header": ["pre-training", *_pairs(four)],
                "rows": rows("table1b", table1b, four),
            },
        )
    return tables


def paired_table(report: Report, reference: str = "fedavg") -> dict:
    """Each initialization minus ``reference`` task by task (they faced the same tasks), with 95% intervals.

    A per-task difference is free of how hard each task is, which the ± over tasks of the other tables is not; with
    few tasks it is the fair way to read an ordering.
    """
    from copre_hub.fl.report import paired
    from copre_hub.fl.report_format import initialization

    reference_entry = initialization(report, reference)
    base = reference_entry["tasks"]
    rows = []
    for entry in report["initializations"]:
        if entry is reference_entry:
            continue
        every = paired(entry, reference_entry)
        diffs = {m: every[m] for m in (ACC, VAR, L10)}
        n = diffs[ACC]["tasks"]
        lower_var = sum(ours[VAR] < theirs[VAR] for ours, theirs in zip(entry["tasks"], base, strict=True))
        cells = [f"{d['mean']:+.2f} ± {d['ci95']:.2f}" for d in diffs.values()]
        rows.append([entry["label"], *cells, f"{diffs[ACC]['higher']}/{n}", f"{lower_var}/{n}"])
    return {
        "title": f"Paired: each initialization minus {reference}, task by task",
        "note": "mean over tasks of the per-task difference ± the half-width of its 95% t interval; then the tasks "
        "where it has the higher accuracy and the lower variance",
        "header": ["pre-training", "ΔAcc", "ΔVar", "ΔL10", "higher Acc", "lower Var"],
        "rows": rows,
    }


def _gamma_cells(summary: dict | None, gamma: float, metric: str) -> tuple[str, str]:
    return _cell(summary, metric), _paper_cell(PAPER["table2"].get(str(gamma), {}).get(metric))


def _pairs(metrics: tuple[str, ...]) -> list[str]:
    names = {ACC: "Acc", VAR: "Var", L10: "L10", L20: "L20"}
    return [f"{names[m]} ({who})" for m in metrics for who in ("ours", "paper")]


def _cell(summary: dict | None, metric: str) -> str:
    if summary is None:
        return MISSING
    return f"{summary[metric]:.2f} ± {summary[metric + '_std']:.2f}"


def _paper_cell(value: tuple[float, float] | None) -> str:
    return "—" if value is None else f"{value[0]:.2f} ± {value[1]:.2f}"


def markdown(tables: list[dict], header: str) -> str:
    """The tables as Markdown, under a header line."""
    parts = [header]
    for table in tables:
        parts += [f"\n### {table['title']}\n", f"_{table['note']}_\n"]
        parts.append("| " + " | ".join(table["header"]) + " |")
        parts.append("|" + "---|" * len(table["header"]))
        parts += ["| " + " | ".join(row) + " |" for row in table["rows"]]
    return "\n".join(parts) + "\n"


# ---------------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    from copre_hub import _io
    from copre_hub.fl.downstream import DownstreamConfig
    from copre_hub.fl.report import plot_client_accuracies

    began = time.perf_counter()
    scale = SCALES[(args.scale, args.dataset)]
    name = f"reproduce-{args.scale}-{args.dataset}" + ("" if args.protocol == "literal" else f"-{args.protocol}")
    work = args.work_dir or REPO / "runs" / f"reproduce-{args.scale}-{args.dataset}"
    protocol = DownstreamConfig.for_dataset(
        args.dataset, args.protocol, tasks=scale.tasks, rounds=scale.downstream_rounds, seed=args.task_seed
    )
    if args.shard != "0/1":
        return run_shard(args, scale, protocol, work)
    reports, initializations = [], {}
    for seed in args.seeds:
        runs = plan(scale, args.dataset, seed, tuple(args.pretrain_set))
        checkpoints = pretrain_all(runs, work / f"seed-{seed}", not args.quiet, data_dir=args.data_dir)
        first = next(r.recipe for r in runs if r.recipe)
        data, architecture = first.data, first.model.architecture
        reports.append(
            evaluate_all(runs, checkpoints, protocol, data, architecture, work, not args.quiet, data_dir=args.data_dir)
        )
        for run, entry in zip(runs, reports[-1]["initializations"], strict=True):
            record = _pretrain_record(checkpoints.get(run.label))
            initializations.setdefault(run.label, {"method": run.method, "scenario": run.scenario, "seeds": {}})
            initializations[run.label].update(gamma=run.gamma, q=run.q)
            initializations[run.label]["seeds"][str(seed)] = {
                "recipe": run.recipe.to_dict() if run.recipe else None,
                "checkpoint": str(checkpoints[run.label]) if run.recipe else None,
                "pretrain_seconds": record["seconds"],
                "final_train_loss": record["final_train_loss"],
                "evaluate_seconds": entry["seconds"],
                "summary": entry["summary"],
            }
    report = combine_seeds(reports)
    for entry in report["initializations"]:
        seeds = initializations[entry["label"]]["seeds"].values()
        losses = [s["final_train_loss"] for s in seeds if s["final_train_loss"] is not None]
        initializations[entry["label"]].update(
            summary=entry["summary"],
            pretrain_seconds=sum(s["pretrain_seconds"] for s in seeds),
            evaluate_seconds=sum(s["evaluate_seconds"] for s in seeds),
            final_train_loss=sum(losses) / len(losses) if losses else None,
        )
    tables = [
        *paper_tables(runs, report, args.dataset),
        paired_table(report),
        *([paired_table(report, "centralized")] if args.scale == "paper" else []),
        pretraining_table(initializations, len(report["data"]["pretrain_classes"])),
        *([seed_table(initializations)] if len(args.seeds) > 1 else []),
    ]
    header = (
        f"## {name}\n\nScale {args.scale}: {dataclasses.asdict(scale)}\n\nPre-training seeds: {args.seeds} "
        f"(each initialization's per-task metrics are averaged over them); overrides: {args.pretrain_set or 'none'}"
        f"\n\nDownstream protocol ({args.protocol}): {dataclasses.asdict(protocol)}"
    )
    text = markdown(tables, header)
    results = {
        "scale": args.scale,
        "dataset": args.dataset,
        "seeds": args.seeds,
        "task_seed": args.task_seed,
        "pretrain_overrides": args.pretrain_set,
        "protocol_name": args.protocol,
        "settings": dataclasses.asdict(scale),
        "protocol": dataclasses.asdict(protocol),
        "initializations": initializations,
        "tables": tables,
        "paper": PAPER,
        "evaluation": report,
        "seconds": {
            # compute, summed over every run and task, however many invocations it took (work is reused)
            "pretrain": sum(entry["pretrain_seconds"] or 0 for entry in initializations.values()),
            "evaluate": sum(entry["evaluate_seconds"] for entry in initializations.values()),
            # wall time of this invocation only
            "this_invocation": time.perf_counter() - began,
        },
    }
    args.results_dir.mkdir(parents=True, exist_ok=True)
    _io.atomic_write_json(args.results_dir / f"{name}.json", results)  # per-seed reports: work/evaluate
    _io.atomic_write_text(args.results_dir / f"{name}.md", text)
    plot_client_accuracies(report, args.results_dir / f"{name}.png")
    print(text)
    print(f"wrote {args.results_dir / name}.{{json,md,png}} in {results['seconds']['this_invocation']:.0f} s")
    return 0


def combine_seeds(reports: list[Report]) -> Report:
    """One report whose entries hold, per task, each metric averaged over the pre-training seeds.

    The seeds' reports share the tasks (one task seed), so the same task's clients line up and their accuracies
    are averaged too. With one seed the report is returned as it is.
    """
    from copre_hub.fl.metrics import METRICS, summarize

    if len(reports) == 1:
        return reports[0]
    entries = []
    for group in zip(*(r["initializations"] for r in reports), strict=True):
        tasks = []
        for same_task in zip(*(e["tasks"] for e in group), strict=True):
            tasks.append(
                {
                    "index": same_task[0]["index"],
                    "client_accuracies": [
                        sum(c) / len(c) for c in zip(*(t["client_accuracies"] for t in same_task), strict=True)
                    ],
                    **{m: sum(t[m] for t in same_task) / len(same_task) for m in METRICS},
                    "seconds": sum(t["seconds"] for t in same_task),
                }
            )
        entries.append({**group[0], "tasks": tasks, "summary": summarize(tasks), "seeds": len(group)})
    return {**reports[0], "initializations": entries}


def _pretrain_record(checkpoint: Path | None) -> dict:
    """Seconds the pre-training rounds took (summed from the run record, so a resumed run counts every round) and
    the training loss of the last round (None for random)."""
    if checkpoint is None:
        return {"seconds": 0.0, "final_train_loss": None}
    rounds = json.loads((checkpoint.parent / "run.json").read_text()).get("rounds", [])
    return {
        "seconds": sum(r.get("seconds", 0.0) for r in rounds),
        "final_train_loss": rounds[-1].get("train_loss") if rounds else None,
    }


def seed_table(initializations: dict, reference: str = "fedavg") -> dict:
    """Each initialization's mean accuracy per pre-training seed, and its difference from ``reference`` seed by
    seed (both faced the same tasks), with a 95% interval over the seeds: how much of a gap the seed can move."""
    from copre_hub.fl.metrics import paired_difference

    seeds = list(initializations[reference]["seeds"])
    theirs = [initializations[reference]["seeds"][s]["summary"][ACC] for s in seeds]
    rows = []
    for label, entry in initializations.items():
        ours = [entry["seeds"][s]["summary"][ACC] for s in seeds]
        cells = [f"{value:.2f}" for value in ours]
        if label == reference:
            rows.append([label, *cells, "—", "—"])
            continue
        diff = paired_difference(ours, theirs)
        rows.append([label, *cells, f"{diff['mean']:+.2f} ± {diff['ci95']:.2f}", f"{diff['higher']}/{len(seeds)}"])
    return {
        "title": f"Seeds: mean accuracy per pre-training seed, and each initialization minus {reference} seed by seed",
        "note": "the difference's mean over seeds ± the half-width of its 95% t interval over seeds; then the seeds "
        "where it has the higher accuracy (random weights depend on the task seed only, so they repeat)",
        "header": ["pre-training", *(f"Acc seed {s}" for s in seeds), f"ΔAcc vs {reference}", "higher"],
        "rows": rows,
    }


def pretraining_table(initializations: dict, classes: int) -> dict:
    """How far each pre-training got: its last round's training loss beside chance, ln(classes).

    A loss still near chance means the weights are close to their random start, whatever the method.
    """
    return {
        "title": "Pre-training: training loss of the last round",
        "note": f"chance (uniform prediction over the {classes} pre-training classes) is ln {classes} = "
        f"{math.log(classes):.3f}",
        "header": ["pre-training", "loss", "seconds"],
        "rows": [
            [label, f"{entry['final_train_loss']:.3f}", f"{entry['pretrain_seconds']:.0f}"]
            for label, entry in initializations.items()
            if entry["final_train_loss"] is not None
        ],
    }


def run_shard(args: argparse.Namespace, scale: Scale, protocol, work: Path) -> int:
    """Pre-train and evaluate every n-th initialization of each seed (``--shard i/n``), for parallel processes.

    The shards share the work folder; a final run without ``--shard`` reuses all of it and writes the tables.
    """
    index, count = (int(part) for part in args.shard.split("/"))
    for seed in args.seeds:
        runs = plan(scale, args.dataset, seed, tuple(args.pretrain_set))
        first = next(r.recipe for r in runs if r.recipe)
        for run in runs[index::count]:
            checkpoint = (
                pretrain_one(
                    run, work / f"seed-{seed}" / "pretrain" / run.label, not args.quiet, data_dir=args.data_dir
                )
                if run.recipe
                else None
            )
            evaluate_one(
                run,
                checkpoint,
                protocol,
                first.data,
                first.model.architecture,
                work,
                not args.quiet,
                data_dir=args.data_dir,
            )
    print(f"shard {args.shard} done; rerun without --shard to write the tables")
    return 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", choices=sorted({s for s, _ in SCALES}), default="cpu")
    parser.add_argument("--dataset", choices=sorted(DATASETS), default="cifar100")
    from copre_hub.fl.protocols import PROTOCOLS

    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="pre-training seeds (default 0)")
    parser.add_argument("--task-seed", type=int, default=0, help="seed of the downstream tasks (default 0)")
    parser.add_argument(
        "--protocol", choices=list(PROTOCOLS), default="literal", help="reading of the downstream protocol"
    )
    parser.add_argument(
        "--pretrain-set",
        action="append",
        default=[],
        metavar="[METHOD:]KEY=VALUE",
        help="a recipe override for every pre-training run, or for one method or label (repeatable)",
    )
    parser.add_argument(
        "--work-dir",
        type=Path,
        help="pre-training runs and per-initialization evaluations (default: runs/reproduce-<scale>-<dataset>); "
        "rerunning reuses what is there",
    )
    parser.add_argument(
        "--shard", default="0/1", help="i/n: only every n-th initialization from i, for parallel processes (no tables)"
    )
    parser.add_argument("--results-dir", type=Path, default=REPO / "benchmarks" / "results")
    default_data = os.environ.get("COPRE_HUB_DATA") or (REPO.parent / "shared" / "data")
    parser.add_argument("--data-dir", type=Path, default=default_data, help="local dataset copies (COPRE_HUB_DATA)")
    parser.add_argument(
        "--threads", type=int, help="torch threads (default: torch's); 1 is faster while other jobs share the cores"
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    return parser.parse_args(argv)


if __name__ == "__main__":
    raise SystemExit(main())
