"""Target 7: images per second of CoPreFL pre-training on a GPU, as a fraction of a large-batch centralized peak.

    python benchmarks/gpu_throughput.py                              # resnet18_cifar at 32x32, bf16, 1/2/4 processes
    python benchmarks/gpu_throughput.py --device cpu --tiny --processes 2   # a seconds-long check of the script

Three measurements on the same device, model (``resnet18_cifar``: 3x3 stride-1 stem, no max-pool, 3.33 GFLOP per
training image at 32x32) and precision (bf16 autocast on a GPU; float32 on a CPU, as the engine does there):

* the peak: a plain centralized loop (``torch.optim.SGD``, channels_last model and inputs) at each of
  ``--central-batches``, the best images per second;
* the engine: CoPreFL rounds of batch-32 clients, with ``--processes`` processes per GPU started by
  ``torchrun`` (gloo process group, so several processes can share one GPU; ``accelerate launch`` gives each
  process its own GPU instead). Inputs are channels_last; the engine's weights stay in the standard layout, being
  views of one flat vector. Images counted: local SGD steps plus query forward and backward passes;
* the usual research loop (:class:`vs_research_loop.ResearchLoop`, deepcopy per client, DataLoader, list of state
  dicts), same precision and layout, in this process.

Goal: the best engine layout at 0.8 of the peak or more; the speedup over the research loop is reported. With
several processes per GPU, CUDA MPS (``nvidia-cuda-mps-control -d``) lets their kernels run concurrently.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import sys
import time
from pathlib import Path

import torch
from _common import (
    centralized_sgd,
    common_args,
    create_model,
    image_counts,
    print_table,
    print_targets,
    run_worker,
    seconds,
    set_threads,
    synthetic_federation,
    target,
    train_gflop_per_image,
    worker_output,
    write_result,
)
from vs_research_loop import ResearchLoop

from copre_hub.fl.distributed import Processes
from copre_hub.fl.methods import create_method
from copre_hub.fl.simulation import Simulation

FRACTION_GOAL = 0.8
TINY = {
    "image_size": 8,
    "clients": 4,
    "client_size": 16,
    "participants": 2,
    "rounds": 1,
    "research_rounds": 1,
    "central_batches": [16],
    "central_steps": 2,
}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda or cpu")
    parser.add_argument("--tiny", action="store_true", help=f"tiny sizes for a quick check: {TINY}")
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2, 4], help="engine processes per GPU")
    parser.add_argument("--arch", default="resnet18_cifar")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--client-size", type=int, default=480)
    parser.add_argument("--participants", type=int, default=20)
    parser.add_argument("--local-epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5, help="timed engine rounds per layout")
    parser.add_argument("--research-rounds", type=int, default=2)
    parser.add_argument("--central-batches", type=int, nargs="+", default=[256, 512, 1024])
    parser.add_argument("--central-steps", type=int, default=50, help="timed steps of each centralized batch size")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = common_args(parser, repeats=1).parse_args(argv)
    if args.tiny:
        vars(args).update(TINY)
    set_threads(args.threads)
    torch.backends.cudnn.benchmark = True
    if args.worker:
        return worker(args)

    device = torch.device(args.device)
    gflop = train_gflop_per_image(args.arch, image_size=args.image_size)
    data = synthetic_federation(args.clients, args.client_size, args.seed, image_size=args.image_size)
    on_device = dataclasses.replace(data, images=data.images.to(device), labels=data.labels.to(device))
    rows = [
        {"loop": f"centralized, batch {b}", "images/s": centralized_peak(args, on_device, b)}
        for b in args.central_batches
    ]
    peak = max(row["images/s"] for row in rows)
    gpus = max(1, torch.cuda.device_count()) if device.type == "cuda" else 1
    engine = {n: launch(n * gpus, args.threads, argv if argv is not None else sys.argv[1:]) for n in args.processes}
    rows += [{"loop": f"engine, {n} process(es) per GPU", "images/s": ips} for n, ips in engine.items()]
    research = research_loop(args, data)
    rows.append({"loop": "research loop", "images/s": research})
    for row in rows:
        row["TFLOP/s"] = row["images/s"] * gflop / 1e3
        row["of peak"] = row["images/s"] / peak

    best = max(engine, key=engine.get)
    print(
        f"{args.arch} at {args.image_size}x{args.image_size}, batch-{args.batch_size} clients, "
        f"{precision(device)}, {args.participants} participants x {args.client_size} images, on {device}\n"
    )
    print_table(rows)
    targets = [
        target(f"7 engine ({best} per GPU) over the centralized peak", engine[best] / peak, FRACTION_GOAL),
        target("7 speedup of the engine over the research loop", engine[best] / research, 1.0),
    ]
    print_targets(targets)
    results = {
        "train_gflop_per_image": gflop,
        "precision": precision(device),
        "rows": rows,
        "peak_images_per_second": peak,
        "targets": targets,
        "images_counted": "local SGD image-steps plus query forward+backward images",
    }
    print(f"\nwrote {write_result('gpu_throughput', args, results, device=str(device))}")
    return results


def precision(device: torch.device) -> str:
    """bf16 on accelerators; float32 on CPU (the engine's own policy, ``Processes.from_accelerate``)."""
    return "bf16" if device.type == "cuda" else "no"


def autocast(device: torch.device) -> contextlib.AbstractContextManager:
    if precision(device) == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def centralized_peak(args: argparse.Namespace, data, batch_size: int) -> float:
    """Images per second of the plain loop at ``batch_size`` on ``data`` already on the device (channels_last,
    after a warm-up)."""
    device = torch.device(args.device)
    model = create_model(args.arch, data.num_classes, seed=args.seed).to(device, memory_format=torch.channels_last)

    def run(steps: int) -> None:
        centralized_sgd(
            model,
            data,
            steps * batch_size,
            batch_size,
            lr=1e-3,
            seed=args.seed,
            device=device,
            autocast=autocast(device),
            channels_last=True,
        )

    run(3)
    return args.central_steps * batch_size / seconds(lambda: run(args.central_steps), device)


def research_loop(args: argparse.Namespace, data) -> float:
    """Images per second of the usual research loop (after a warm-up round)."""
    device = torch.device(args.device)
    method = create_method(
        "coprefl", participants=args.participants, local_epochs=args.local_epochs, batch_size=args.batch_size
    )
    loop = ResearchLoop(
        create_model(args.arch, data.num_classes, seed=args.seed),
        data,
        method,
        args.seed,
        device=args.device,
        precision=precision(device),
        channels_last=True,
    )
    loop.round(0)
    seen = loop.images_seen
    elapsed = seconds(lambda: [loop.round(t) for t in range(1, args.research_rounds + 1)], device)
    return (loop.images_seen - seen) / elapsed


def launch(processes: int, threads: int | None, argv: list[str]) -> float:
    """Images per second of the engine with ``processes`` processes (torchrun), from rank 0's report.

    Each process gets ``threads`` threads, by default the cores shared out evenly.
    """
    threads = threads or max(1, len(os.sched_getaffinity(0)) // processes)
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        str(processes),
        str(Path(__file__).resolve()),
        *argv,
        "--worker",
        "--threads",
        str(threads),
    ]
    return run_worker(command, env={"OMP_NUM_THREADS": str(threads)})["images_per_second"]


class ChannelsLastSimulation(Simulation):
    """The engine's simulation, with every batch handed to the model in channels_last layout."""

    def batch(self, indices: torch.Tensor, generator: torch.Generator | None = None):
        x, y = super().batch(indices, generator)
        return x.contiguous(memory_format=torch.channels_last), y


def worker(args: argparse.Namespace) -> dict:
    """One engine process: join the group, a warm-up round, then ``--rounds`` rounds timed between barriers."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    device = torch.device(args.device)
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
        torch.cuda.set_device(device)
    if world > 1:
        torch.distributed.init_process_group("gloo")  # gloo: several processes may share a GPU (NCCL refuses)
    processes = Processes(rank, world, device, precision(device))
    data = synthetic_federation(args.clients, args.client_size, args.seed, image_size=args.image_size)
    method = create_method(
        "coprefl", participants=args.participants, local_epochs=args.local_epochs, batch_size=args.batch_size
    )
    sim = ChannelsLastSimulation(create_model(args.arch, data.num_classes, seed=args.seed), data, processes)
    method.round(sim, args.seed, 0)
    processes.barrier()
    began = time.perf_counter()
    for t in range(1, args.rounds + 1):
        method.round(sim, args.seed, t)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    processes.barrier()
    elapsed = time.perf_counter() - began
    local, query = image_counts(method, sim, args.seed, range(1, args.rounds + 1))
    result = {"images_per_second": (local + query) / elapsed, "world_size": world}
    if processes.is_main:
        worker_output(result)
    if world > 1:
        torch.distributed.destroy_process_group()
    return result


if __name__ == "__main__":
    main()
