"""The paper's Table 1a at the paper's scale on one GPU, in one go, within a time budget.

    python benchmarks/paper_on_gpu.py --workers 8 --budget-seconds 600 --results-dir OUT   # one H200
    python benchmarks/paper_on_gpu.py --device cpu --tiny --workers 2                      # a check on a CPU

The comparison is the one ``reproduce_paper.py --scale paper --dataset cifar100`` plans (its ``plan``,
``pretrain_one``, ``evaluate_one``, ``paper_tables``, ``paired_table`` and ``combine_seeds`` are used as they are):
Random, Centralized, FedAvg, FedMeta, q-FFL (the q sweep) and CoPreFL at each gamma, each pre-trained with 100
clients, 20 a round, 50 rounds of 5 local epochs at batch 32, then evaluated on 10 downstream tasks; Scenario II's
hybrid initializations with ``--scenario2``. ``--protocol``, ``--seeds``, ``--task-seed`` and ``--pretrain-set``
mean what they mean there.

How the GPU is used:

* a pool of ``--workers`` subprocesses, each taking the next pending piece of work: a pre-training (one
  initialization, one seed) or an evaluation (its 10 tasks), so different initializations run concurrently on the
  one GPU. An evaluation waits for its pre-training; finished rows come first (ready evaluations before new
  pre-trainings, Table 1a's rows before the rest);
* bf16 autocast on CUDA (``run.mixed_precision = "bf16"`` for pre-training, ``Processes(mixed_precision="bf16")``
  for the downstream tasks). channels_last is not used: the engine's weights are views of one flat vector in the
  standard layout, and only ``gpu_throughput.py`` feeds channels_last inputs. ``torch.func`` vmap over clients
  is not used either: it was not measured to help (DESIGN.md: grouped convolutions, slower on CPU);
* every piece is resumable and reusable through the work folder: a finished checkpoint or evaluation is skipped,
  an interrupted pre-training resumes from its last round (``run.checkpoint_every = 1``), an interrupted
  evaluation from its last finished task.

``--budget-seconds``: no piece is started when the median duration of the finished pieces of its kind would take
the run past the budget, and pieces still running at the budget are stopped (they resume on a rerun); the tables
are written from whatever finished, unfinished rows marked ``not finished``.

First ``gpu_throughput.py`` runs at short settings on the recipe's architecture (``--no-throughput`` reuses the
JSON of an earlier one), for the peak: the best images per second of a large-batch centralized loop. The summary
gives the table's wall time and its nominal training image-steps per second (local SGD of pre-training and of
the downstream tasks; query and evaluation passes not counted) as a fraction of that peak.

Writes ``<results-dir>/paper-on-gpu-<dataset>.{md,json}``; the workers' logs are in ``<work-dir>/logs/``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import reproduce_paper as rp

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
THROUGHPUT_SHORT = ["--rounds", "2", "--research-rounds", "1", "--central-steps", "20", "--processes", "1", "4"]
THROUGHPUT_TINY = ["--device", "cpu", "--tiny", "--processes", "1", "--threads", "1"]
POLL_SECONDS = 0.5


@dataclass(frozen=True)
class Job:
    """One piece of work: pre-train or evaluate the initialization ``label`` of pre-training seed ``seed``."""

    kind: str  # "pretrain" or "evaluate"
    seed: int
    label: str

    @property
    def name(self) -> str:
        return f"{self.kind}:{self.seed}:{self.label}"


# ---------------------------------------------------------------------------------------------------- the plan


def scale_of(args: argparse.Namespace) -> rp.Scale:
    """The paper's scale (the smoke scale with ``--tiny``), Scenario II only with ``--scenario2``."""
    scale = rp.SCALES[("smoke" if args.tiny else "paper", args.dataset)]
    return dataclasses.replace(scale, scenario2=args.scenario2)


def overrides(args: argparse.Namespace) -> tuple[str, ...]:
    """``--pretrain-set`` plus the device and precision of every pre-training (``run`` is outside the
    fingerprint, so checkpoints made on another device are still reused)."""
    device = ["run.device=cpu"] if args.device == "cpu" else ['run.device="cuda"', 'run.mixed_precision="bf16"']
    return (*args.pretrain_set, *device)


def runs_of(args: argparse.Namespace, seed: int) -> list[rp.Run]:
    """The initializations compared for ``seed`` (``--labels`` keeps some), Table 1a's rows first."""
    runs = rp.plan(scale_of(args), args.dataset, seed, overrides(args))
    if args.labels:
        runs = [r for r in runs if r.label in args.labels]
    return sorted(runs, key=lambda r: (priority(r, args.dataset), runs.index(r)))


def priority(run: rp.Run, dataset: str) -> int:
    """Table 1a's rows (with Random, whose evaluation needs no pre-training) before the rest of the plan."""
    first = ("random", "fedavg", f"coprefl-g{rp.DATASETS[dataset]['gamma']}", "fedmeta", "qffl-q1", "qffl")
    return first.index(run.label) if run.label in first else len(first)


def jobs_of(args: argparse.Namespace) -> list[Job]:
    """Every pre-training and evaluation of every seed, in the order they are preferred."""
    jobs = []
    for seed in args.seeds:
        for run in runs_of(args, seed):
            if run.recipe is not None:
                jobs.append(Job("pretrain", seed, run.label))
            jobs.append(Job("evaluate", seed, run.label))
    return jobs


def protocol_of(args: argparse.Namespace):
    from copre_hub.fl.downstream import DownstreamConfig

    scale = scale_of(args)
    return DownstreamConfig.for_dataset(
        args.dataset, args.protocol, tasks=scale.tasks, rounds=scale.downstream_rounds, seed=args.task_seed
    )


# ---------------------------------------------------------------------------------------------------- state


def run_dir(args: argparse.Namespace, seed: int, label: str) -> Path:
    return args.work_dir / f"seed-{seed}" / "pretrain" / label


def report_path(args: argparse.Namespace, seed: int, label: str) -> Path:
    return args.work_dir / "reports" / args.protocol / f"seed-{seed}" / f"{label}.json"


def checkpoint_of(args: argparse.Namespace, seed: int, label: str) -> Path | None:
    from copre_hub.fl.pretrain import CHECKPOINT_DIR

    folder = run_dir(args, seed, label) / CHECKPOINT_DIR
    return folder if (folder / "config.json").is_file() else None


def finished_report(args: argparse.Namespace, seed: int, label: str) -> dict | None:
    """The saved evaluation of ``label``, if it was made under this protocol (else None)."""
    path = report_path(args, seed, label)
    if not path.is_file():
        return None
    report = json.loads(path.read_text())
    return report if report["protocol"] == dataclasses.asdict(protocol_of(args)) else None


def is_done(args: argparse.Namespace, job: Job) -> bool:
    if job.kind == "pretrain":
        return checkpoint_of(args, job.seed, job.label) is not None
    return finished_report(args, job.seed, job.label) is not None


def is_ready(args: argparse.Namespace, job: Job, labels_with_recipe: set[tuple[int, str]]) -> bool:
    """An evaluation is ready once its pre-training is done (Random needs none)."""
    if job.kind == "pretrain" or (job.seed, job.label) not in labels_with_recipe:
        return True
    return checkpoint_of(args, job.seed, job.label) is not None


# ---------------------------------------------------------------------------------------------------- the pool


def run_pool(args: argparse.Namespace, jobs: list[Job], deadline: float) -> dict[str, dict]:
    """Run the pending ``jobs`` on ``--workers`` subprocesses until done or ``deadline`` (``time.perf_counter``).

    Returns what happened to each job this call touched: ``seconds`` and ``returncode`` when it ran, ``stopped``
    when the deadline stopped it, ``skipped`` when it never started (no time left, or its pre-training failed).
    """
    with_recipe = {(j.seed, j.label) for j in jobs if j.kind == "pretrain"}
    pending = [j for j in jobs if not is_done(args, j)]
    for job in jobs:
        if job not in pending:
            print(f"[pool] {job.name}: done earlier, reused")
    running: dict[Job, tuple[subprocess.Popen, float]] = {}
    outcome: dict[str, dict] = {}
    durations: dict[str, list[float]] = {"pretrain": [], "evaluate": []}
    threads = args.threads or max(1, len(os.sched_getaffinity(0)) // args.workers)
    (args.work_dir / "logs").mkdir(parents=True, exist_ok=True)
    while True:
        for job, (proc, started) in list(running.items()):
            if proc.poll() is None:
                continue
            del running[job]
            seconds = time.perf_counter() - started
            outcome[job.name] = {"seconds": seconds, "returncode": proc.returncode}
            print(f"[pool] {job.name}: {'finished' if proc.returncode == 0 else 'FAILED'} in {seconds:.0f} s")
            if proc.returncode == 0:
                durations[job.kind].append(seconds)
            else:  # its evaluation cannot run
                pending = [j for j in pending if (j.seed, j.label) != (job.seed, job.label)]
        now = time.perf_counter()
        if now >= deadline:
            for job, (proc, started) in running.items():
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait()
                outcome[job.name] = {"seconds": time.perf_counter() - started, "stopped": True}
                print(f"[pool] {job.name}: stopped at the budget (resumable)")
            running.clear()
            break
        ready = sorted(  # a ready evaluation finishes a row: it goes first
            (j for j in pending if is_ready(args, j, with_recipe)), key=lambda j: j.kind != "evaluate"
        )
        for job in ready:
            if len(running) == args.workers:
                break
            estimate = statistics.median(durations[job.kind]) if durations[job.kind] else 0.0
            if now + estimate > deadline:
                continue  # would not finish in time; a piece of the other kind may still fit
            pending.remove(job)
            running[job] = (start_worker(args, job, threads), time.perf_counter())
            print(f"[pool] {job.name}: started ({len(running)} running)")
        if not running:
            break  # all done, or nothing left that can start
        time.sleep(POLL_SECONDS)
    for job in pending:
        outcome.setdefault(job.name, {"skipped": True})
    return outcome


def start_worker(args: argparse.Namespace, job: Job, threads: int) -> subprocess.Popen:
    """``python paper_on_gpu.py --job KIND SEED LABEL`` with this invocation's settings, in its own session (so the
    budget can stop it with its children), logging to ``<work-dir>/logs/<job>.log``."""
    command = [sys.executable, str(Path(__file__).resolve()), *shared_argv(args)]
    command += ["--threads", str(threads), "--job", job.kind, str(job.seed), job.label]
    log = (args.work_dir / "logs" / f"{job.kind}-{job.seed}-{job.label}.log").open("w")
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env=env, start_new_session=True)


def shared_argv(args: argparse.Namespace) -> list[str]:
    """The flags a worker needs to rebuild this invocation's plan, protocol and folders."""
    argv = ["--dataset", args.dataset, "--protocol", args.protocol, "--task-seed", str(args.task_seed)]
    argv += ["--device", args.device, "--work-dir", str(args.work_dir), "--seeds", *map(str, args.seeds)]
    argv += [f"--pretrain-set={item}" for item in args.pretrain_set]
    argv += ["--tiny"] * args.tiny + ["--scenario2"] * args.scenario2
    argv += ["--labels", *args.labels] if args.labels else []
    return argv + (["--data-dir", str(args.data_dir)] if args.data_dir else [])


def work(args: argparse.Namespace, kind: str, seed: int, label: str) -> int:
    """The worker side: one pre-training or one evaluation."""
    import torch

    from copre_hub import _io
    from copre_hub.fl.distributed import Processes

    torch.set_num_threads(args.threads or torch.get_num_threads())
    run = next(r for r in runs_of(args, seed) if r.label == label)
    if kind == "pretrain":
        rp.pretrain_one(run, run_dir(args, seed, label), False, data_dir=args.data_dir)
        return 0
    recipe = next(r.recipe for r in runs_of(args, seed) if r.recipe)
    device = torch.device(args.device if args.device == "cpu" or torch.cuda.is_available() else "cpu")
    processes = Processes(device=device, mixed_precision="bf16" if device.type == "cuda" else "no")
    checkpoint = checkpoint_of(args, seed, label)
    report = rp.evaluate_one(
        run,
        checkpoint,
        protocol_of(args),
        recipe.data,
        recipe.model.architecture,
        args.work_dir,
        False,
        processes,
        data_dir=args.data_dir,
    )
    _io.atomic_write_json(report_path(args, seed, label), report)
    return 0


# ---------------------------------------------------------------------------------------------------- results


def assemble(args: argparse.Namespace) -> tuple[dict | None, list[rp.Run], list[str]]:
    """The combined report of the initializations evaluated for every seed, the plan, and the labels missing."""
    from copre_hub.fl.report import merge_reports

    runs = runs_of(args, args.seeds[0])
    finished = [r.label for r in runs if all(finished_report(args, seed, r.label) is not None for seed in args.seeds)]
    missing = [r.label for r in runs if r.label not in finished]
    if not finished:
        return None, runs, missing
    per_seed = [merge_reports([finished_report(args, seed, label) for label in finished]) for seed in args.seeds]
    return rp.combine_seeds(per_seed), runs, missing


def tables_of(args: argparse.Namespace, report: dict | None, runs: list[rp.Run]) -> list[dict]:
    """reproduce_paper's tables over what finished (missing rows marked), its paired differences where the
    reference finished, and the pre-training losses."""
    if report is None:
        report = {"initializations": []}
    tables = rp.paper_tables(runs, report, args.dataset)
    labels = {entry["label"] for entry in report["initializations"]}
    tables += [rp.paired_table(report, ref) for ref in ("fedavg", "centralized") if ref in labels and len(labels) > 1]
    losses = {}
    for run in runs:
        records = [rp._pretrain_record(checkpoint_of(args, seed, run.label)) for seed in args.seeds]
        records = [r for r in records if r["final_train_loss"] is not None]
        if run.recipe is not None and len(records) == len(args.seeds):
            losses[run.label] = {
                "final_train_loss": statistics.mean(r["final_train_loss"] for r in records),
                "pretrain_seconds": sum(r["seconds"] for r in records),
            }
    if losses:
        record = json.loads((run_dir(args, args.seeds[0], next(iter(losses))) / "run.json").read_text())
        tables.append(rp.pretraining_table(losses, len(record["data"]["pretrain_classes"])))
    return tables


def nominal_images(args: argparse.Namespace, job: Job) -> int:
    """Local SGD image-steps of a finished job (pre-training: every round's participants' support sets times
    the local epochs, or the pooled data per centralized epoch; evaluation: tasks x rounds x clients x local
    work), read from its run record and report."""
    if job.kind == "pretrain":
        record = json.loads((run_dir(args, job.seed, job.label) / "run.json").read_text())
        method = next(r for r in runs_of(args, job.seed) if r.label == job.label).recipe.build_method()
        sizes = record["data"]["client_sizes"]
        if method.name == "centralized":
            return method.rounds * sum(sizes)
        support = 1 - method.query_fraction if method.uses_query else 1.0
        return int(method.rounds * method.participants * statistics.mean(sizes) * support * method.local_epochs)
    report = finished_report(args, job.seed, job.label)
    protocol = report["protocol"]
    steps = protocol["local_steps"] * protocol["batch_size"]
    epochs = protocol["local_epochs"]
    per_client = [epochs * size if epochs else steps for task in report["tasks"] for size in task["train_sizes"]]
    return protocol["rounds"] * sum(per_client)


def throughput(args: argparse.Namespace, architecture: str) -> dict | None:
    """Run ``gpu_throughput.py`` (short settings) on ``architecture``, or with ``--no-throughput`` read the JSON
    of an earlier run; None when there is none. A failed measurement is reported and the table runs anyway (its
    time is what the budget is for)."""
    path = args.results_dir / "gpu_throughput.json"
    if not args.no_throughput:
        settings = THROUGHPUT_TINY if args.tiny else THROUGHPUT_SHORT
        command = [sys.executable, str(HERE / "gpu_throughput.py"), *settings, "--arch", architecture]
        path.unlink(missing_ok=True)  # an older record must not pass for this measurement
        done = subprocess.run([*command, "--out-dir", str(args.results_dir)], cwd=REPO)
        if done.returncode != 0:
            print(f"[throughput] gpu_throughput.py failed (exit {done.returncode}); no peak, the table runs anyway")
    return json.loads(path.read_text()) if path.is_file() else None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.job:
        kind, seed, label = args.job
        return work(args, kind, int(seed), label)
    from copre_hub import _io
    from copre_hub.fl.data import load_image_data

    began = time.perf_counter()
    runs = runs_of(args, args.seeds[0])
    first = next(r.recipe for r in runs if r.recipe)
    peak_record = throughput(args, first.model.architecture)
    load_image_data(first.data, args.data_dir)  # decode once into the tensor cache, before the workers all want it
    table_began = time.perf_counter()
    jobs = jobs_of(args)
    outcome = run_pool(args, jobs, deadline=began + (math.inf if args.budget_seconds is None else args.budget_seconds))
    table_seconds = time.perf_counter() - table_began
    report, runs, missing = assemble(args)
    tables = tables_of(args, report, runs)
    images = sum(nominal_images(args, j) for j in jobs if outcome.get(j.name, {}).get("returncode") == 0)
    peak = peak_record["peak_images_per_second"] if peak_record else None
    rate = images / table_seconds if table_seconds > 0 else 0.0
    summary = {
        "wall_seconds": time.perf_counter() - began,
        "table_seconds": table_seconds,
        "budget_seconds": args.budget_seconds,
        "workers": args.workers,
        "jobs": outcome,
        "not_finished": missing,
        "nominal_image_steps": images,
        "images_per_second": rate,
        "peak_images_per_second": peak,
        "fraction_of_peak": rate / peak if peak else None,
        "throughput": peak_record,
    }
    name = f"paper-on-gpu-{args.dataset}" + ("-tiny" if args.tiny else "")
    header = (
        f"## {name}\n\nScale: {dataclasses.asdict(scale_of(args))}\n\nSeeds {args.seeds}, protocol {args.protocol}: "
        f"{dataclasses.asdict(protocol_of(args))}; overrides: {list(overrides(args))}; {args.workers} workers on "
        f"{args.device}. Not finished: {', '.join(missing) or 'none'}."
    )
    text = rp.markdown(tables, header)
    args.results_dir.mkdir(parents=True, exist_ok=True)
    payload = {"args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}, **summary}
    _io.atomic_write_json(args.results_dir / f"{name}.json", {**payload, "tables": tables, "evaluation": report})
    _io.atomic_write_text(args.results_dir / f"{name}.md", text)
    print(text)
    fraction = f"{summary['fraction_of_peak']:.3f} of the peak {peak:.0f} images/s" if peak else "no peak measured"
    print(
        f"[summary] wall {summary['wall_seconds']:.0f} s (table {table_seconds:.0f} s, budget {args.budget_seconds}"
        f" s), {len(runs) - len(missing)}/{len(runs)} rows finished, {images} nominal image-steps this run, "
        f"{rate:.0f} images/s, {fraction}; wrote {args.results_dir / name}.{{md,json}}"
    )
    failed = [job for job, result in outcome.items() if result.get("returncode")]
    if failed:
        print(f"[summary] FAILED: {', '.join(failed)} (logs in {args.work_dir / 'logs'})")
    return 1 if failed else 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    from copre_hub.fl.protocols import PROTOCOLS

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", choices=sorted(rp.DATASETS), default="cifar100")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="pre-training seeds (default 0)")
    parser.add_argument("--task-seed", type=int, default=0, help="seed of the downstream tasks (default 0)")
    parser.add_argument("--protocol", choices=list(PROTOCOLS), default="literal")
    parser.add_argument("--pretrain-set", action="append", default=[], metavar="[METHOD:]KEY=VALUE")
    parser.add_argument("--scenario2", action="store_true", help="also Table 1b's hybrid initializations")
    parser.add_argument("--labels", nargs="+", help="only these initializations (labels of the plan)")
    parser.add_argument("--tiny", action="store_true", help="the smoke scale (test_resnet, 10 classes, 2 rounds)")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--workers", type=int, default=8, help="engine subprocesses sharing the device")
    parser.add_argument("--budget-seconds", type=float, help="wall seconds of this invocation (default: no limit)")
    parser.add_argument("--no-throughput", action="store_true", help="reuse <results-dir>/gpu_throughput.json")
    parser.add_argument("--threads", type=int, help="torch threads per worker (default: the cores shared out)")
    parser.add_argument("--work-dir", type=Path, help="default: runs/paper-on-gpu-<dataset>[-tiny]")
    parser.add_argument("--results-dir", type=Path, default=HERE / "results")
    default_data = os.environ.get("COPRE_HUB_DATA") or (REPO.parent / "shared" / "data")
    parser.add_argument("--data-dir", type=Path, default=default_data, help="local dataset copies (COPRE_HUB_DATA)")
    parser.add_argument("--job", nargs=3, metavar=("KIND", "SEED", "LABEL"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error("--workers must be at least 1")
    args.work_dir = args.work_dir or REPO / "runs" / f"paper-on-gpu-{args.dataset}{'-tiny' if args.tiny else ''}"
    return args


if __name__ == "__main__":
    raise SystemExit(main())
