"""CPU execution options for long runs: the CIFAR-100 recipe's client training under each option against fp32
eager, and the smoke recipe's downstream accuracy under the options that change numerics.

    python benchmarks/cpu_options.py --data-dir ../shared/data    # resnet18, 4 clients x 480 images, 1 epoch
    python benchmarks/cpu_options.py --arch test_resnet --participants 2 --client-size 64 --repeats 1 --no-accuracy

Speed: one FedAvg round of the engine (:class:`~copre_hub.fl.simulation.Simulation`, the recipe's batch 32 and
client size, synthetic uint8 CIFAR-shaped data) per option, interleaved (the order rotates each repetition),
medians, projected to the recipe's round (20 participants x 5 local epochs). The options:

* ``fp32 eager``: what every recipe runs today;
* ``channels_last inputs``: the batches in NHWC (the weights stay views of the engine's flat vector, in the
  standard layout, so only the inputs can change format);
* ``bf16 autocast``: ``run.mixed_precision = "bf16"`` (AMX or AVX-512 BF16 make this fast where the CPU has them);
* ``bf16 + channels_last``;
* ``torch.compile``: the model compiled by inductor (fp32); its compile time is reported apart.

Process and thread layouts are measured by ``processes.py`` (two processes of one thread each against one of two).

Accuracy (numerics-changing options, ``--data-dir``): the smoke recipe (``training/recipes/smoke.toml``) pre-trained
in fp32 and in bf16, each evaluated downstream in its own precision on the same tasks; the paired difference of
mean accuracy over tasks, with its 95% interval.
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
from _common import (
    REPO,
    common_args,
    create_model,
    interleaved,
    print_table,
    print_targets,
    seconds,
    set_threads,
    summary,
    synthetic_federation,
    target,
    write_result,
)

from copre_hub.fl.distributed import Processes
from copre_hub.fl.methods import create_method
from copre_hub.fl.simulation import Simulation

RECIPE_PARTICIPANTS, RECIPE_EPOCHS = 20, 5  # training/recipes/copreFL-resnet18-cifar100.toml


class ChannelsLastSimulation(Simulation):
    """The engine's simulation with every batch handed to the model in channels_last (NHWC) memory format."""

    def batch(self, indices, generator=None):
        x, y = super().batch(indices, generator)
        return x.contiguous(memory_format=torch.channels_last), y


def build(option: str, arch: str, data, seed: int) -> Simulation:
    """A fresh simulation (same seeded weights for every option) set up for ``option``."""
    bf16 = option.startswith("bf16")
    kind = ChannelsLastSimulation if "channels_last" in option else Simulation
    sim = kind(create_model(arch, seed=seed), data, Processes(mixed_precision="bf16" if bf16 else "no"))
    if option == "torch.compile":
        sim.model = torch.compile(sim.model)
    return sim


OPTIONS = ("fp32 eager", "channels_last inputs", "bf16 autocast", "bf16 + channels_last", "torch.compile")


def speed(args: argparse.Namespace) -> tuple[dict[str, list[float]], dict[str, float]]:
    """Seconds per round of each option (interleaved repetitions), and each option's first-round time (for
    ``torch.compile`` that includes compiling)."""
    data = synthetic_federation(args.clients, args.client_size, args.seed)
    method = create_method("fedavg", participants=args.participants, local_epochs=1, batch_size=args.batch_size)
    sims = {option: build(option, args.arch, data, args.seed) for option in args.options}
    first = {option: seconds(lambda sim=sim: method.round(sim, args.seed, 0)) for option, sim in sims.items()}
    runs = {option: functools.partial(method.round, sim, args.seed) for option, sim in sims.items()}
    return interleaved(runs, args.repeats, first=1), first


def accuracy(args: argparse.Namespace) -> dict[str, object]:
    """The smoke recipe pre-trained and evaluated in fp32 and in bf16 on the same tasks: each one's mean accuracy
    and the paired difference bf16 - fp32 over tasks."""
    from copre_hub.fl.evaluate import evaluate
    from copre_hub.fl.metrics import paired_difference
    from copre_hub.fl.pretrain import pretrain
    from copre_hub.fl.recipe import load_recipe

    recipe = load_recipe(REPO / "training" / "recipes" / "smoke.toml")
    protocol = {"tasks": args.tasks, "rounds": args.rounds, "local_steps": 5, "lr": 1e-2}
    per_task: dict[str, list[float]] = {}
    spent: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as work:
        for precision in ("no", "bf16"):
            processes = Processes(mixed_precision=precision)
            started = time.perf_counter()
            checkpoint = pretrain(
                recipe, Path(work) / precision, progress=False, processes=processes, data_dir=args.data_dir
            )
            report = evaluate([str(checkpoint)], protocol, processes=processes, data_dir=args.data_dir)
            spent[precision] = time.perf_counter() - started
            per_task[precision] = [task["mean_accuracy"] for task in report["initializations"][0]["tasks"]]
    return {
        "protocol": protocol,
        "mean_accuracy": {p: statistics.fmean(values) for p, values in per_task.items()},
        "per_task": per_task,
        "seconds": spent,
        "bf16_minus_fp32": paired_difference(per_task["bf16"], per_task["no"]),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--participants", type=int, default=4)
    parser.add_argument("--client-size", type=int, default=480, help="the recipe's clients: 48000 images / 100")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--options", nargs="+", default=list(OPTIONS), choices=OPTIONS)
    parser.add_argument("--data-dir", type=Path, default=os.environ.get("COPRE_HUB_DATA"))
    parser.add_argument("--tasks", type=int, default=5, help="downstream tasks of the accuracy check")
    parser.add_argument("--rounds", type=int, default=10, help="downstream rounds of the accuracy check")
    parser.add_argument("--no-accuracy", dest="accuracy", action="store_false", help="measure speed only")
    args = common_args(parser, repeats=3).parse_args(argv)
    set_threads(args.threads)

    times, first = speed(args)
    medians = {option: statistics.median(values) for option, values in times.items()}
    base = medians[args.options[0]]
    scale = RECIPE_PARTICIPANTS / args.participants * RECIPE_EPOCHS
    print(
        f"{args.arch} at 32x32, {args.participants} clients x {args.client_size} images, 1 epoch, batch "
        f"{args.batch_size}, {args.repeats} interleaved repetitions (medians), {torch.get_num_threads()} thread(s), "
        f"load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}; recipe round = x{scale:g}\n"
    )
    rows = [
        {
            "option": option,
            "s/round": medians[option],
            "speed vs fp32 eager": base / medians[option],
            "recipe s/round (projected)": medians[option] * scale,
            "first round s": first[option],
        }
        for option in times
    ]
    print_table(rows)
    results: dict[str, object] = {
        "seconds_per_round": {option: summary(values) for option, values in times.items()},
        "first_round_seconds": first,
        "recipe_round_scale": scale,
        "speedup": {option: base / medians[option] for option in times},
    }
    if args.accuracy:
        results["accuracy"] = checked = accuracy(args)
        diff = checked["bf16_minus_fp32"]
        print(
            f"\nsmoke recipe, {args.tasks} downstream tasks: fp32 {checked['mean_accuracy']['no']:.2f}%, bf16 "
            f"{checked['mean_accuracy']['bf16']:.2f}%, bf16 - fp32 {diff['mean']:+.2f} ± {diff['ci95']:.2f} points"
        )
    targets = [target(f"{option} over fp32 eager (speed)", base / medians[option], 1.0) for option in times]
    print_targets(targets[1:])
    results["targets"] = targets[1:]
    print(f"\nwrote {write_result('cpu_options', args, results)}")
    return results


if __name__ == "__main__":
    main()
