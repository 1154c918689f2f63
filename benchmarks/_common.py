"""What every benchmark shares: the machine and versions block, timing, synthetic federations, the plain
centralized loop they are compared with, FLOP counts, the markdown table and the JSON record.

A result file (``benchmarks/results/<script>.json``) holds::

    machine     cpu model, cores, torch threads, device, load average when written (noise shows there)
    versions    python, torch, timm, copre-hub, ... (read from package metadata, nothing imported)
    args        the sizes the script ran with
    ...         the measurements: every repetition and their median (``summary``)
    targets     each ratio against its goal, with pass/fail
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import functools
import importlib.metadata
import json
import math
import os
import platform
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import psutil
import torch
from torch import nn
from torch.nn import functional as F

RESULTS = Path(__file__).resolve().parent / "results"
REPO = RESULTS.parents[1]
# CIFAR-100 statistics; synthetic images are normalised with them exactly as real ones are.
CIFAR_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR_STD = (0.2673, 0.2564, 0.2762)
PACKAGES = ("torch", "torchvision", "timm", "accelerate", "copre-hub", "flwr", "ray", "huggingface_hub", "safetensors")


# ---------------------------------------------------------------------------------------------- the record


def common_args(parser: argparse.ArgumentParser, repeats: int) -> argparse.ArgumentParser:
    """Flags every script has: repetitions, torch threads, seed and where the JSON goes."""
    parser.add_argument("--repeats", type=int, default=repeats, help="measured repetitions (the median is reported)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's own)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out-dir", type=Path, default=RESULTS, help="folder of the JSON result")
    return parser


def set_threads(threads: int | None) -> None:
    if threads:
        torch.set_num_threads(threads)


def machine(device: torch.device | str = "cpu") -> dict[str, Any]:
    """The machine a figure came from."""
    device = torch.device(device)
    info = {
        "cpu": _cpu_model(),
        "logical_cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)),
        "torch_threads": torch.get_num_threads(),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "platform": platform.platform(),
        "load_average": os.getloadavg(),
    }
    info["memory_gb"] = round(psutil.virtual_memory().total / 2**30, 1)
    return info


def versions() -> dict[str, str]:
    """Installed versions of everything that can change a figure (absent packages are left out)."""
    found = {"python": platform.python_version()}
    for name in PACKAGES:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            found[name] = importlib.metadata.version(name)
    return found


def summary(values: Sequence[float]) -> dict[str, Any]:
    """Every repetition and their median."""
    return {"runs": list(values), "median": statistics.median(values)}


def paired_ratio(numerator: Sequence[float], denominator: Sequence[float]) -> dict[str, Any]:
    """Repetition-by-repetition ratios of two interleaved runs: their median, and a distribution-free interval for
    it (order statistics, the narrowest at 95% or more, else the widest there is: min to max, at ``level``).

    A drift in the machine's speed moves both runs of a repetition alike, so it cancels in the repetition's ratio
    and not in the ratio of two medians taken apart.
    """
    ratios = sorted(a / b for a, b in zip(numerator, denominator, strict=True))
    n, k = len(ratios), 1  # the interval is [ratios[k-1], ratios[n-k]]
    while k < n // 2 and _median_coverage(n, k + 1) >= 0.95:
        k += 1
    return {
        "median": statistics.median(ratios),
        "low": ratios[k - 1],
        "high": ratios[n - k],
        "level": _median_coverage(n, k),
        "ratios": ratios,
    }


def _median_coverage(n: int, k: int) -> float:
    """P(k-th smallest < median < k-th largest) of n draws: 1 - 2 P(Binomial(n, 1/2) < k)."""
    return 1 - 2 * sum(math.comb(n, i) for i in range(k)) / 2**n


def target(name: str, value: float, goal: float, higher_is_better: bool = True, note: str = "") -> dict[str, Any]:
    """A ratio against its goal."""
    passed = value >= goal if higher_is_better else value <= goal
    return {
        "name": name,
        "value": value,
        "goal": f"{'>=' if higher_is_better else '<='} {goal}",
        "pass": passed,
        "note": note,
    }


def write_result(script: str, args: argparse.Namespace, payload: dict[str, Any], device: str = "cpu") -> Path:
    """Write ``<out_dir>/<script>.json`` with the machine, versions and arguments around ``payload``."""
    record = {
        "script": f"benchmarks/{script}.py",
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": machine(device),
        "versions": versions(),
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        **payload,
    }
    args.out_dir.mkdir(parents=True, exist_ok=True)
    path = args.out_dir / f"{script}.json"
    path.write_text(json.dumps(record, indent=2) + "\n")
    return path


def print_table(rows: list[dict[str, Any]]) -> None:
    """A markdown table of ``rows`` (keys of the first row are the columns)."""
    columns = list(rows[0])
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    for row in rows:
        print("| " + " | ".join(_cell(row.get(c, "")) for c in columns) + " |")


def print_targets(targets: list[dict[str, Any]]) -> None:
    print()
    print_table(
        [
            {
                "target": t["name"],
                "value": t["value"],
                "goal": t["goal"],
                "result": "PASS" if t["pass"] else "FAIL",
                "note": t["note"],
            }
            for t in targets
        ]
    )


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


# ---------------------------------------------------------------------------------------------- timing


def seconds(fn: Callable[[], object], device: torch.device | str = "cpu") -> float:
    """Wall-clock seconds of ``fn()`` (on a GPU, from idle to idle)."""
    _sync(device)
    began = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - began


def interleaved(runs: dict[str, Callable[[int], object]], repeats: int, first: int = 0) -> dict[str, list[float]]:
    """Seconds of each run, ``repeats`` times, in an order that rotates each repetition, so that drift in the
    machine's speed falls on every run alike; repetition ``r`` calls each run with ``first + r`` (its round)."""
    names = list(runs)
    times: dict[str, list[float]] = {name: [] for name in names}
    for rep in range(repeats):
        shift = rep % len(names)
        for name in names[shift:] + names[:shift]:
            times[name].append(seconds(functools.partial(runs[name], first + rep)))
    return times


def _sync(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def run_worker(command: list[str], env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run a worker process that writes its JSON result to the path in ``$BENCH_OUT``; return that result."""
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        out = Path(tmp) / "result.json"
        subprocess.run(command, env={**os.environ, **(env or {}), "BENCH_OUT": str(out)}, check=True, cwd=REPO)
        return json.loads(out.read_text())


def worker_output(result: dict[str, Any]) -> None:
    """The worker side of :func:`run_worker`."""
    Path(os.environ["BENCH_OUT"]).write_text(json.dumps(result))


# ---------------------------------------------------------------------------------------------- workloads


def synthetic_federation(
    num_clients: int,
    client_size: int,
    seed: int,
    num_classes: int = 80,
    image_size: int = 32,
    distinct: int | None = None,
):
    """uint8 CIFAR-shaped clients of ``client_size`` images each (normalised per batch like real data).

    Client ``c`` holds block ``c % distinct`` of the images, generated from (seed, block) alone, so any process can
    rebuild one client's data without the others (:func:`synthetic_client`). With ``distinct`` below
    ``num_clients`` several clients share one block (and one index tensor), which keeps data memory fixed while
    the federation grows.
    """
    from copre_hub.fl.partition import FederatedData

    blocks = min(num_clients, distinct or num_clients)
    parts = [synthetic_client(b, client_size, seed, num_classes, image_size) for b in range(blocks)]
    indices = [torch.arange(b * client_size, (b + 1) * client_size) for b in range(blocks)]
    return FederatedData(
        images=torch.cat([x for x, _ in parts]),
        labels=torch.cat([y for _, y in parts]),
        clients=[indices[c % blocks] for c in range(num_clients)],
        num_classes=num_classes,
        mean=CIFAR_MEAN,
        std=CIFAR_STD,
    )


def synthetic_client(
    block: int, size: int, seed: int, num_classes: int = 80, image_size: int = 32
) -> tuple[torch.Tensor, torch.Tensor]:
    """One block of synthetic data: uint8 images [size, 3, H, W] and labels, from (seed, block) only."""
    from copre_hub.fl.seeding import generator

    draws = generator(seed, "synthetic", block)
    images = torch.randint(0, 256, (size, 3, image_size, image_size), generator=draws, dtype=torch.uint8)
    return images, torch.randint(0, num_classes, (size,), generator=draws)


def create_model(architecture: str, num_classes: int = 80, seed: int = 0) -> nn.Module:
    """A timm model (copre-hub's own ``resnet18_cifar`` and ``femnist_cnn`` included), seeded."""
    import timm

    import copre_hub.fl.models  # noqa: F401  (registers resnet18_cifar with timm)

    torch.manual_seed(seed)
    return timm.create_model(architecture, num_classes=num_classes)


def normalizer(device: torch.device | str) -> Callable[[torch.Tensor], torch.Tensor]:
    """uint8 batch -> float, standardised with the CIFAR statistics (what the engine does per batch)."""
    from copre_hub.fl.data import normalize

    mean = torch.tensor(CIFAR_MEAN, device=device).view(1, -1, 1, 1)
    std = torch.tensor(CIFAR_STD, device=device).view(1, -1, 1, 1)
    return lambda images: normalize(images, mean, std)


def centralized_sgd(
    model: nn.Module,
    data,
    image_steps: int,
    batch_size: int,
    lr: float,
    seed: int,
    device: torch.device | str = "cpu",
    autocast: contextlib.AbstractContextManager | None = None,
    channels_last: bool = False,
) -> None:
    """The reference: a plain PyTorch loop (torch.optim.SGD) over the pooled data for ``image_steps`` images.

    Batches are drawn from a shuffled order of every image, ``batch_size`` at a time, read from the same uint8
    tensor and normalised the same way as in the engine. ``model`` must already be on ``device``.
    """
    images, labels = data.images.to(device), data.labels.to(device)
    norm = normalizer(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    draws = torch.Generator().manual_seed(seed)
    model.train()
    done = 0
    while done < image_steps:
        order = torch.randperm(labels.numel(), generator=draws).to(device)
        for batch in order.split(batch_size):
            batch = batch[: image_steps - done]
            x = norm(images[batch])
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with autocast or contextlib.nullcontext():
                logits = model(x)
            loss = F.cross_entropy(logits.float(), labels[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            done += batch.numel()
            if done >= image_steps:
                return


def image_counts(method, sim, seed: int, rounds: range) -> tuple[int, int]:
    """(local SGD image-steps, query images) of these rounds, from the engine's own sampling and batching.

    Query images are forward and backward passes at the averaged model (CoPreFL); methods without them give 0.
    """
    from copre_hub.fl.seeding import generator
    from copre_hub.fl.simulation import iterate_batches

    schedule = method.local_schedule()
    local = query = 0
    for t in rounds:
        participants = method.sample(sim.data, seed, t)
        for client in participants:
            support = method.training_indices(sim, seed, t, client)
            batches = iterate_batches(
                support,
                schedule["batch_size"],
                generator(seed, "batches", t, client),
                epochs=schedule.get("epochs"),
                steps=schedule.get("steps"),
            )
            local += sum(batch.numel() for batch in batches)
        if hasattr(method, "query_sets"):
            query += sum(q.numel() for q in method.query_sets(sim, seed, t, participants))
    return local, query


def train_gflop_per_image(architecture: str, num_classes: int = 80, image_size: int = 32) -> float:
    """GFLOPs of one training image (forward and backward, 2 per multiply-add), counted by torch's FlopCounterMode
    on a fresh model (DESIGN.md: resnet18 at 32x32 is 0.218, resnet18_cifar 3.33)."""
    from torch.utils.flop_counter import FlopCounterMode

    model = create_model(architecture, num_classes).train()
    counter = FlopCounterMode(display=False)
    with counter:
        model(torch.randn(2, 3, image_size, image_size)).sum().backward()
    return counter.get_total_flops() / 2 / 1e9
