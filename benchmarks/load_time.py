"""Target 6: ``copre_hub.load`` from a warm cache against ``timm.create_model`` on the same safetensors file.

    python benchmarks/load_time.py                                # resnet18 (80 classes), 20 timed loads each
    python benchmarks/load_time.py --arch test_resnet --repeats 3

A checkpoint folder is written once with ``save_checkpoint``; then, interleaved, each repetition times:

* ``timm``: ``timm.create_model(arch, pretrained=True, num_classes=K, pretrained_cfg_overlay=dict(file=...,
  num_classes=K))`` on the folder's ``model.safetensors`` (the reference);
* ``folder``: ``copre_hub.load(folder)``;
* ``hub id``: ``copre_hub.load("bench/load-time")`` with ``HF_HUB_OFFLINE=1``, after the folder was pushed to a
  ``copre-hub serve`` endpoint on loopback and pulled once into a temporary Hugging Face cache.

All three must give the same weights (checked). Both copre-hub paths verify the weights' sha256 on every load
(the integrity check is part of the contract); its cost is timed alone and reported. Goal: each copre-hub median at
most 1.1 times timm's.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import torch
from _common import (
    CIFAR_MEAN,
    CIFAR_STD,
    common_args,
    create_model,
    print_table,
    print_targets,
    seconds,
    set_threads,
    summary,
    target,
    write_result,
)

GOAL = 1.1
REPO_ID = "bench/load-time"
TOKEN = "load-time-benchmark"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--num-classes", type=int, default=80)
    args = common_args(parser, repeats=20).parse_args(argv)
    set_threads(args.threads)

    import timm

    import copre_hub
    from copre_hub.hub.checkpoint import sha256_file

    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-load-")))
        folder = write_checkpoint(tmp / "checkpoint", args)
        weights = folder / "model.safetensors"
        stack.enter_context(cached_hub_copy(folder, tmp))
        loaders = {
            "timm": lambda: timm.create_model(
                args.arch,
                pretrained=True,
                num_classes=args.num_classes,
                pretrained_cfg_overlay={"file": str(weights), "num_classes": args.num_classes},
            ),
            "copre_hub.load(folder)": lambda: copre_hub.load(folder),
            "copre_hub.load(hub id, cached)": lambda: copre_hub.load(REPO_ID),
        }
        reference = loaders["timm"]().state_dict()
        for name, load in loaders.items():  # warm-up, and the weights must be the same
            state = load().state_dict()
            if state.keys() != reference.keys() or any(not torch.equal(state[k], reference[k]) for k in state):
                raise AssertionError(f"{name} loaded other weights than timm")
        times: dict[str, list[float]] = {name: [] for name in loaders}
        times["sha256 of the weights alone"] = []
        for _ in range(args.repeats):
            for name, load in loaders.items():
                times[name].append(seconds(load))
            times["sha256 of the weights alone"].append(seconds(lambda: sha256_file(weights)))
        size_mb = weights.stat().st_size / 1e6

    results = {"weights_mb": size_mb, "loads": {name: summary(values) for name, values in times.items()}}
    base = results["loads"]["timm"]["median"]
    print(f"{args.arch}, {args.num_classes} classes, {size_mb:.1f} MB of weights, {args.repeats} loads each\n")
    print_table(
        [
            {
                "loader": name,
                "median ms": s["median"] * 1e3,
                "min ms": min(s["runs"]) * 1e3,
                "over timm": s["median"] / base,
            }
            for name, s in results["loads"].items()
        ]
    )
    sha = results["loads"]["sha256 of the weights alone"]["median"] / base
    results["targets"] = [
        target(
            f"6 {name} over timm",
            results["loads"][name]["median"] / base,
            GOAL,
            higher_is_better=False,
            note=f"of which the sha256 check: {sha:.2f}",
        )
        for name in loaders
        if name != "timm"
    ]
    print_targets(results["targets"])
    print(f"\nwrote {write_result('load_time', args, results)}")
    return results


def write_checkpoint(folder: Path, args: argparse.Namespace) -> Path:
    from copre_hub.hub.checkpoint import save_checkpoint

    return save_checkpoint(
        create_model(args.arch, args.num_classes, seed=args.seed),
        folder,
        architecture=args.arch,
        model_args={},
        num_classes=args.num_classes,
        input_size=(3, 32, 32),
        mean=CIFAR_MEAN,
        std=CIFAR_STD,
        copre_hub_meta={"model_id": "load-time", "method": "coprefl", "seed": args.seed},
    )


@contextlib.contextmanager
def cached_hub_copy(folder: Path, tmp: Path) -> Iterator[None]:
    """Push ``folder`` to a loopback ``copre-hub serve``, pull it into a fresh cache, then stay offline in the
    block (the environment is restored afterwards)."""
    import copre_hub
    from copre_hub.hub.serve.server import running

    names = ("HF_HOME", "HF_TOKEN", "HF_ENDPOINT", "HF_HUB_OFFLINE", "HF_HUB_CACHE")
    saved = {name: os.environ.get(name) for name in names}
    os.environ.update(HF_HOME=str(tmp / "hf-home"), HF_TOKEN=TOKEN)
    os.environ.pop("HF_HUB_OFFLINE", None)
    os.environ.pop("HF_HUB_CACHE", None)
    try:
        with running(tmp / "hub-storage", tokens=[TOKEN]) as url:
            os.environ["HF_ENDPOINT"] = url
            copre_hub.push(folder, REPO_ID)
            copre_hub.pull(REPO_ID)
        os.environ["HF_HUB_OFFLINE"] = "1"
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


if __name__ == "__main__":
    main()
