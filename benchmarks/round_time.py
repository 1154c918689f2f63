"""Seconds per pre-training round of a recipe on this machine (the rounds of the recipe itself, real data).

    python benchmarks/round_time.py training/recipes/copreFL-resnet18-cifar100.toml --rounds 2

Prints a table and writes benchmarks/results/round-time-<recipe>.json. Data loading and model construction are
timed separately and excluded from the per-round figure; the first round is reported apart from the median of the
rest when more than one round runs.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from copre_hub.fl.distributed import Processes
from copre_hub.fl.pretrain import prepare, software_versions
from copre_hub.fl.recipe import load_recipe
from copre_hub.fl.simulation import Simulation

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipe", type=Path)
    parser.add_argument("--rounds", type=int, default=1, help="rounds to time")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()

    began = time.perf_counter()
    recipe = load_recipe(args.recipe, args.overrides)
    prepared = prepare(recipe)
    sim = Simulation(prepared.model, prepared.data, Processes.from_accelerate(cpu=recipe.run.device == "cpu"))
    setup = time.perf_counter() - began
    history: list[float] = []
    for t in range(args.rounds):
        began = time.perf_counter()
        prepared.method.round(sim, recipe.seed, t)
        history.append(time.perf_counter() - began)

    method = prepared.method
    participants_data = method.participants * statistics.mean(prepared.data.client_sizes)
    result = {
        "recipe": recipe.name,
        "machine": {"platform": platform.platform(), "cpus": torch.get_num_threads(), "device": str(sim.device)},
        "versions": software_versions(),
        "setup_seconds": setup,
        "round_seconds": history,
        "median_round_seconds": statistics.median(history),
        "local_image_steps_per_round": participants_data * method.local_epochs,
    }
    result["local_images_per_second"] = result["local_image_steps_per_round"] / result["median_round_seconds"]
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"round-time-{recipe.name}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"| recipe | setup s | rounds timed | median s/round | local images/s |\n|---|---|---|---|---|\n"
        f"| {recipe.name} | {setup:.1f} | {len(history)} | {result['median_round_seconds']:.1f} | "
        f"{result['local_images_per_second']:.0f} |"
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
