"""Which reading of the paper's downstream protocol reproduces its random-weights row?

The paper's text (section 2.5: 5 local SGD iterations a round, plain SGD at lr 1e-3, 50 rounds, 10 clients) gives
about 40% from random resnet18 weights on CIFAR-100, where its Table 3a reports 75.32. This benchmark runs downstream
FedAvg from random weights under candidate readings of that protocol and prints each one's accuracy beside the
paper's row:

* local work per round: ``5steps`` (the text) or ``5epochs`` (5 passes over the client's train split);
* learning rate: the paper's grid {1e-2, 5e-3, 1e-3, 5e-4} and 5e-2 above it;
* momentum: 0 (the text) or 0.9;
* architecture: timm ``resnet18`` (its stem shrinks 32x32 inputs to 8x8) or ``resnet18_cifar`` (3x3 stem, 15x the
  FLOPs).

Selection rule, fixed before any reported run: among the readings whose mean accuracy on the *validation* tasks
(drawn with ``--seed``, default 1; the reported tasks use seed 0) is within 3 points of 75.32, the one with the
fewest local SGD steps per task; ties go to the one closer to 75.32. Every reading is evaluated with the engine's own
``evaluate`` and task cache, so an interrupted run resumes, and several processes may share the work folder
(``--shard i/n`` takes every n-th reading)::

    python benchmarks/calibrate.py --list                                  # the readings, cheapest first
    OMP_NUM_THREADS=1 python benchmarks/calibrate.py --shard 0/2 &         # run them (resumable)
    OMP_NUM_THREADS=1 python benchmarks/calibrate.py --shard 1/2 &
    python benchmarks/calibrate.py --only resnet18/5epochs/lr0.01/m0.9 --task-indices 1   # one more task of one
    python benchmarks/calibrate.py --report                                # the table from what has finished

A reading's tasks may come from several runs (``--task-indices``): the table joins them by task index.

Writes ``benchmarks/results/calibrate-cifar100.{json,md}``: every reading's per-task accuracies, seconds, cost and
gap to the paper's row, and the selected reading.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from copre_hub._io import atomic_write_json

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
PAPER_RANDOM = 75.32  # Table 3a, CIFAR-100, random initialization, FedAvg downstream
PAPER_RANDOM_VARIANCE = 41.39  # its client-accuracy variance
TOLERANCE = 3.0
LRS = (5e-2, 1e-2, 5e-3, 1e-3, 5e-4)
MOMENTA = (0.0, 0.9)
WORK = ("5steps", "5epochs")
ARCHITECTURES = ("resnet18", "resnet18_cifar")


@dataclass(frozen=True)
class Reading:
    """One reading of the downstream protocol: architecture, local work per round, learning rate and momentum."""

    architecture: str
    work: str
    lr: float
    momentum: float

    @property
    def name(self) -> str:
        return f"{self.architecture}/{self.work}/lr{self.lr:g}/m{self.momentum:g}"

    def settings(self) -> dict[str, Any]:
        """The reading as :class:`DownstreamConfig` settings over the paper's protocol."""
        amount = {"local_steps": 5} if self.work == "5steps" else {"local_epochs": 5}
        return {"lr": self.lr, "momentum": self.momentum, **amount}

    def relative_cost(self) -> float:
        """Compute per task relative to the text's reading (5 steps, resnet18): local steps x FLOPs per step.

        A client's train split holds about 3,000 x 0.8 / 10 = 240 images, 8 batches of 32, so 5 epochs are 40 steps.
        """
        steps = 5 if self.work == "5steps" else 40
        return steps / 5 * (15.0 if self.architecture == "resnet18_cifar" else 1.0)


def readings(architectures: tuple[str, ...]) -> list[Reading]:
    """Every reading of the grid, cheapest first (then larger learning rates first)."""
    grid = [Reading(a, w, lr, m) for a in architectures for w in WORK for m in MOMENTA for lr in LRS]
    return sorted(grid, key=lambda r: (r.relative_cost(), -r.lr, r.momentum))


def evaluate_reading(reading: Reading, args: argparse.Namespace) -> dict[str, Any]:
    """The reading's report entry for random weights, from the task cache where tasks already finished."""
    from copre_hub.fl.data import DataConfig
    from copre_hub.fl.downstream import DownstreamConfig
    from copre_hub.fl.evaluate import evaluate

    rounds = {"rounds": args.rounds} if args.rounds else {}
    cfg = DownstreamConfig.for_dataset("cifar100", tasks=args.tasks, seed=args.seed, **reading.settings(), **rounds)
    data = DataConfig(dataset="cifar100", path=str(args.data_dir / "cifar100") if args.data_dir else None)
    report = evaluate(
        ["random"],
        cfg,
        data,
        architecture=reading.architecture,
        labels=[reading.name],
        progress=args.progress,
        cache_dir=args.work / "cache",
        task_indices=args.task_indices,
    )
    entry = report["initializations"][0]
    return {
        "reading": dataclasses.asdict(reading),
        "name": reading.name,
        "protocol": report["protocol"],
        "relative_cost": reading.relative_cost(),
        "tasks": [{key: t[key] for key in ("index", "mean_accuracy", "variance", "seconds")} for t in entry["tasks"]],
        "summary": entry["summary"],
    }


def join(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One result per reading from runs that each finished some of its tasks: the tasks by index (a later run of
    a task replaces an earlier one), the client-accuracy variance averaged over the tasks (a run recorded before
    tasks kept their own variance gives each of its tasks the run's mean)."""
    runs_by_name: dict[str, list[dict[str, Any]]] = {}
    for result in results:
        runs_by_name.setdefault(result["name"], []).append(result)
    joined = []
    for runs in runs_by_name.values():
        by_index = {t["index"]: {"variance": run["summary"]["variance"], **t} for run in runs for t in run["tasks"]}
        tasks = [by_index[index] for index in sorted(by_index)]
        variance = statistics.fmean(t["variance"] for t in tasks)
        joined.append({**runs[0], "tasks": tasks, "summary": {**runs[0]["summary"], "variance": variance}})
    return joined


def row(result: dict[str, Any]) -> dict[str, Any]:
    """One line of the table."""
    accuracies = [t["mean_accuracy"] for t in result["tasks"]]
    mean = statistics.fmean(accuracies)
    return {
        "reading": result["name"],
        "cost": result["relative_cost"],
        "tasks": len(accuracies),
        "accuracy": mean,
        "by_task": {str(t["index"]): t["mean_accuracy"] for t in result["tasks"]},
        "std": statistics.pstdev(accuracies) if len(accuracies) > 1 else math.nan,
        "gap": mean - PAPER_RANDOM,
        "variance": result["summary"]["variance"],
        "seconds_per_task": statistics.fmean(t["seconds"] for t in result["tasks"]),
    }


def select(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The selection rule of the module docstring: cheapest within TOLERANCE, then closest."""
    within = [r for r in rows if abs(r["gap"]) <= TOLERANCE]
    return min(within, key=lambda r: (r["cost"], abs(r["gap"]))) if within else None


def table(rows: list[dict[str, Any]], chosen: dict[str, Any] | None, seed: int) -> str:
    lines = [
        f"Random resnet18 weights, downstream FedAvg on CIFAR-100 (5 of the unseen classes 80-99, 10 Dir(0.5) "
        f"clients, 50 rounds, batch 32), on validation tasks (seed {seed}); paper's random row (Table 3a): "
        f"{PAPER_RANDOM}, variance {PAPER_RANDOM_VARIANCE}",
        "",
        "| reading (arch/work/lr/momentum) | cost | tasks | accuracy | std | gap to paper | variance | s/task |"
        " by task |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        mark = " **selected**" if chosen is r else ""
        by_task = ", ".join(f"{index}: {accuracy:.2f}" for index, accuracy in r["by_task"].items())
        lines.append(
            f"| {r['reading']}{mark} | {r['cost']:g} | {r['tasks']} | {r['accuracy']:.2f} | {r['std']:.2f} | "
            f"{r['gap']:+.2f} | {r['variance']:.1f} | {r['seconds_per_task']:.0f} | {by_task} |"
        )
    lines.append("")
    if len({tuple(r["by_task"]) for r in rows}) > 1:
        lines.append(
            "The readings did not all finish the same tasks, and tasks differ by several points, so compare "
            "readings task by task (last column), not by their means."
        )
        lines.append("")
    lines.append(
        f"Selected: {chosen['reading']}" if chosen else f"Selected: none of the finished readings is within {TOLERANCE}"
    )
    return "\n".join(lines)


def report(args: argparse.Namespace) -> None:
    """Gather every finished reading from the work folder into the table and the JSON."""
    results = [json.loads(p.read_text()) for p in sorted((args.work / "readings").glob("*.json"))]
    order = {r.name: i for i, r in enumerate(readings((*args.arch, *ARCHITECTURES)))}
    results.sort(key=lambda r: order.get(r["name"], len(order)))
    rows = [row(r) for r in join(results)]
    chosen = select(rows)
    text = table(rows, chosen, args.seed)
    print(text)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    payload = {
        "paper_random": PAPER_RANDOM,
        "tolerance": TOLERANCE,
        "validation_seed": args.seed,
        "rule": "cheapest reading (local steps x FLOPs) within the tolerance on validation tasks; ties: closest",
        "rows": rows,
        "selected": chosen,
        "readings": results,
        "written": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    atomic_write_json(args.out_dir / "calibrate-cifar100.json", payload)
    (args.out_dir / "calibrate-cifar100.md").write_text(text + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=2, help="validation tasks per reading (default 2)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the validation task draw (reported: 0)")
    parser.add_argument(
        "--arch", nargs="+", default=["resnet18"], help=f"architectures (e.g. {' '.join(ARCHITECTURES)})"
    )
    parser.add_argument(
        "--task-indices", type=int, nargs="+", default=None, help="run only these of the --tasks tasks (0-based)"
    )
    parser.add_argument("--rounds", type=int, default=None, help="downstream rounds instead of the paper's 50 (tests)")
    parser.add_argument("--only", nargs="+", default=None, help="run only these readings (names from --list)")
    parser.add_argument("--shard", default="0/1", help="i/n: run every n-th reading starting at i")
    parser.add_argument("--data-dir", type=Path, default=REPO.parent / "shared" / "data", help="local datasets")
    parser.add_argument("--work", type=Path, default=REPO / "runs" / "calibrate", help="work and cache folder")
    parser.add_argument("--list", action="store_true", help="print the readings and exit")
    parser.add_argument("--report", action="store_true", help="only gather finished readings into the table")
    parser.add_argument("--progress", action="store_true", help="show a progress bar per reading")
    parser.add_argument("--out-dir", type=Path, default=RESULTS, help="folder of the table and JSON")
    args = parser.parse_args(argv)
    if args.task_indices and not all(0 <= i < args.tasks for i in args.task_indices):
        parser.error(f"--task-indices must lie in 0..{args.tasks - 1} (the --tasks tasks); raise --tasks")
    grid = readings(tuple(args.arch))
    if args.only:
        unknown = sorted(set(args.only) - {r.name for r in grid})
        if unknown:
            parser.error(f"unknown readings {unknown}; see --list")
        grid = [r for r in grid if r.name in args.only]
    if args.list:
        print("\n".join(f"{r.name}  (relative cost {r.relative_cost():g})" for r in grid))
        return 0
    if not args.report:
        index, count = (int(part) for part in args.shard.split("/"))
        (args.work / "readings").mkdir(parents=True, exist_ok=True)
        for reading in grid[index::count]:
            path = args.work / "readings" / f"{reading.name.replace('/', '_')}-{_tasks_tag(args)}-seed{args.seed}.json"
            if path.is_file():
                continue
            began = time.perf_counter()
            result = evaluate_reading(reading, args)
            atomic_write_json(path, result)
            print(f"{reading.name}: {row(result)['accuracy']:.2f} in {time.perf_counter() - began:.0f} s", flush=True)
    report(args)
    return 0


def _tasks_tag(args: argparse.Namespace) -> str:
    """The part of a reading's file name that says which tasks it ran."""
    if args.task_indices is None:
        return f"{args.tasks}tasks"
    return "task" + "-".join(str(i) for i in sorted(set(args.task_indices)))


if __name__ == "__main__":
    sys.exit(main())
