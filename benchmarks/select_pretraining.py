"""Choose each pre-training method's settings on validation tasks, never on the tasks that are reported.

For every method of the comparison, each candidate of a small grid (the paper's learning-rate grid, CoPreFL's and
FedMeta's meta learning rate from {1e-2, 1e-3}, and momentum 0 or 0.9 with ``--momentum``; ``--lrs``,
``--meta-lrs`` and ``--momentum 0.9`` narrow it where the compute asks, and the record says so) is pre-trained at a
scale of ``reproduce_paper.py`` (``--rounds`` may reduce its budget, and the record says so) and evaluated on
downstream tasks drawn with ``--task-seed`` (default 1; the reported tasks use 0) under ``--protocol``. The rule,
fixed before any reported run: per method, the candidate with the highest mean validation accuracy; ties go to the
lower learning rate. Each method gets the same grid, so the baselines are tuned as much as CoPreFL.

    python benchmarks/select_pretraining.py --scale paper --dataset femnist --rounds 20 --momentum
    python benchmarks/reproduce_paper.py --scale paper --dataset femnist \
        $(cat benchmarks/results/select-paper-femnist.args)

Writes ``benchmarks/results/select-<scale>-<dataset>.{json,md}`` (every candidate: settings, last-round training
loss beside chance, validation accuracy, seconds) and ``.args``: the ``--pretrain-set`` flags of the winners.
Pre-trainings and evaluations are kept in the work folder, so an interrupted selection resumes.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import reproduce_paper as rp  # the scales, recipes and runners of the comparison

LRS = (1e-2, 5e-3, 1e-3, 5e-4)
META_LRS = (1e-2, 1e-3)
MOMENTA = (0.0, 0.9)
META_METHODS = ("coprefl", "fedmeta")
METHODS = ("centralized", "fedavg", "fedmeta", "qffl", "coprefl")


def grid(method: str, args: argparse.Namespace) -> dict[str, tuple[float, ...]]:
    """The values each ``method.*`` setting of ``method`` takes (momentum only when ``--momentum`` is given)."""
    axes = {"lr": tuple(args.lrs), **({"meta_lr": tuple(args.meta_lrs)} if method in META_METHODS else {})}
    if args.momentum is not None:
        axes["momentum"] = tuple(args.momentum) or MOMENTA
    return axes


def candidates(method: str, args: argparse.Namespace) -> list[dict[str, float]]:
    """Every combination of ``method``'s grid."""
    grid_ = grid(method, args)
    return [dict(zip(grid_, values, strict=True)) for values in itertools.product(*grid_.values())]


def label(method: str, settings: dict[str, float]) -> str:
    return method + "".join(f"-{key}{value:g}" for key, value in settings.items())


def run_candidate(method: str, settings: dict[str, float], scale, args, protocol, work: Path) -> dict:
    """Pre-train one candidate (or reuse it) and evaluate it on the validation tasks."""
    name = label(method, settings)
    gamma = rp.DATASETS[args.dataset]["gamma"] if method == "coprefl" else None
    overrides = tuple(f"method.{key}={value}" for key, value in settings.items())
    recipe = rp.build_recipe(name, method, 1, gamma, scale, args.dataset, args.seed, overrides=overrides)
    run = rp.Run(name, method, 1, gamma, recipe)
    checkpoint = rp.pretrain_one(run, work / "pretrain" / name, not args.quiet, data_dir=args.data_dir)
    entry = rp.evaluate_one(
        run, checkpoint, protocol, recipe.data, recipe.model.architecture, work, not args.quiet, data_dir=args.data_dir
    )
    record = rp._pretrain_record(checkpoint)
    summary = entry["initializations"][0]["summary"]
    return {
        "label": name,
        "method": method,
        "settings": settings,
        "final_train_loss": record["final_train_loss"],
        "pretrain_seconds": record["seconds"],
        "validation_accuracy": summary["mean_accuracy"],
        "validation_accuracy_std": summary["mean_accuracy_std"],
        "evaluate_seconds": entry["initializations"][0]["seconds"],
        "pretrain_classes": len(entry["data"]["pretrain_classes"]),
    }


def random_reference(scale, args, protocol, work: Path) -> dict:
    """Random weights on the same validation tasks: the floor every candidate is read against (not a candidate)."""
    recipe = rp.build_recipe("random", "fedavg", 1, None, scale, args.dataset, args.seed)
    run = rp.Run("random", "random", 1, None, None)
    entry = rp.evaluate_one(
        run, None, protocol, recipe.data, recipe.model.architecture, work, not args.quiet, data_dir=args.data_dir
    )
    summary = entry["initializations"][0]["summary"]
    return {"validation_accuracy": summary["mean_accuracy"], "validation_accuracy_std": summary["mean_accuracy_std"]}


def select(rows: list[dict]) -> dict[str, dict]:
    """The rule of the module docstring: per method, the highest validation accuracy, then the lower lr."""
    best: dict[str, dict] = {}
    for row in rows:
        key = (row["validation_accuracy"], -row["settings"]["lr"])
        current = best.get(row["method"])
        if current is None or key > (current["validation_accuracy"], -current["settings"]["lr"]):
            best[row["method"]] = row
    return best


def markdown(rows: list[dict], best: dict[str, dict], header: str, classes: int, random: dict) -> str:
    floor = f"{random['validation_accuracy']:.2f} ± {random['validation_accuracy_std']:.2f}"
    lines = [header, "", f"chance loss: ln {classes} = {math.log(classes):.3f}; random weights: {floor}", ""]
    lines += [
        "| candidate | last-round loss | validation accuracy | pre-train s | evaluate s |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        mark = " **selected**" if best.get(row["method"]) is row else ""
        lines.append(
            f"| {row['label']}{mark} | {row['final_train_loss']:.3f} | {row['validation_accuracy']:.2f} ± "
            f"{row['validation_accuracy_std']:.2f} | {row['pretrain_seconds']:.0f} | {row['evaluate_seconds']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from copre_hub import _io
    from copre_hub.fl.downstream import DownstreamConfig

    began = time.perf_counter()
    scale = rp.SCALES[(args.scale, args.dataset)]
    scale = dataclasses.replace(scale, rounds=args.rounds or scale.rounds)
    scale = dataclasses.replace(scale, centralized_epochs=args.centralized_epochs or scale.centralized_epochs)
    name = f"select-{args.scale}-{args.dataset}"
    work = args.work_dir or rp.REPO / "runs" / name
    protocol = DownstreamConfig.for_dataset(
        args.dataset, args.protocol, tasks=args.tasks, rounds=scale.downstream_rounds, seed=args.task_seed
    )
    rows = [
        run_candidate(method, settings, scale, args, protocol, work)
        for method in args.methods
        for settings in candidates(method, args)
    ]
    random = random_reference(scale, args, protocol, work)
    best = select(rows)
    winners = [f"--pretrain-set {m}:method.{k}={v}" for m, row in best.items() for k, v in row["settings"].items()]
    classes = rows[0]["pretrain_classes"]
    header = (
        f"## {name}\n\nBudget: {dataclasses.asdict(scale)} (rounds {'reduced to ' if args.rounds else ''}"
        f"{scale.rounds}); validation tasks: seed {args.task_seed}, {args.tasks} tasks, protocol {args.protocol}; "
        "rule: highest validation accuracy per method, ties to the lower lr.\n\nGrid: "
        + "; ".join(
            f"{m}: " + ", ".join(f"{k} " + "/".join(f"{x:g}" for x in v) for k, v in grid(m, args).items())
            for m in args.methods
        )
    )
    text = markdown(rows, best, header, classes, random)
    args.results_dir.mkdir(parents=True, exist_ok=True)
    payload = {
        "scale": args.scale,
        "dataset": args.dataset,
        "budget": dataclasses.asdict(scale),
        "rounds_reduced": bool(args.rounds),
        "protocol": dataclasses.asdict(protocol),
        "protocol_name": args.protocol,
        "rule": "per method: highest mean validation accuracy; ties: lower lr",
        "grid": {m: grid(m, args) for m in args.methods},
        "random": random,
        "candidates": rows,
        "selected": {m: row["label"] for m, row in best.items()},
        "pretrain_set": winners,
        "seconds": time.perf_counter() - began,
    }
    _io.atomic_write_json(args.results_dir / f"{name}.json", payload)
    _io.atomic_write_text(args.results_dir / f"{name}.md", text)
    _io.atomic_write_text(args.results_dir / f"{name}.args", " ".join(winners) + "\n")
    print(text)
    print(json.dumps(payload["selected"], indent=2))
    return 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    from copre_hub.fl.protocols import PROTOCOLS

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", choices=sorted({s for s, _ in rp.SCALES}), default="paper")
    parser.add_argument("--dataset", choices=sorted(rp.DATASETS), default="femnist")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument(
        "--lrs", nargs="+", type=float, default=list(LRS), help="learning rates (default: the paper's grid)"
    )
    parser.add_argument("--meta-lrs", nargs="+", type=float, default=list(META_LRS), help="meta learning rates")
    parser.add_argument(
        "--momentum", nargs="*", type=float, help="try momentum: alone, 0 and 0.9; with values, those values"
    )
    parser.add_argument("--rounds", type=int, help="pre-training rounds instead of the scale's (a reduced budget)")
    parser.add_argument("--centralized-epochs", type=int, help="centralized epochs instead of the scale's")
    parser.add_argument("--tasks", type=int, default=5, help="validation tasks (default 5)")
    parser.add_argument("--task-seed", type=int, default=1, help="seed of the validation tasks (reported: 0)")
    parser.add_argument("--seed", type=int, default=0, help="pre-training seed")
    parser.add_argument("--protocol", choices=list(PROTOCOLS), default="literal", help="downstream protocol")
    parser.add_argument("--work-dir", type=Path, help="pre-trainings and evaluations (default: runs/select-...)")
    parser.add_argument("--results-dir", type=Path, default=rp.REPO / "benchmarks" / "results")
    parser.add_argument("--data-dir", type=Path, default=rp.REPO.parent / "shared" / "data")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    return parser.parse_args(argv)


if __name__ == "__main__":
    raise SystemExit(main())
