"""Training verbs of the ``copre-hub`` command: ``pretrain``."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

# Flags that are shorthands for recipe keys: (flag, recipe key, type, help).
_SHORTHANDS = [
    ("--method", "method.name", str, "pre-training method (coprefl, coprefl-sgd, fedavg, fedmeta, qffl, centralized)"),
    ("--scenario", "method.scenario", int, "1: all data on clients; 2: hybrid with server data"),
    ("--gamma", "method.gamma", float, "CoPreFL balance between mean and variance of query losses, in [0, 1]"),
    ("--rounds", "method.rounds", int, "pre-training rounds T"),
    ("--participants", "method.participants", int, "clients per round |m|"),
    ("--clients", "partition.num_clients", int, "number of clients M"),
    ("--dataset", "data.dataset", str, "cifar100, femnist, tiny-imagenet or a Hub dataset id"),
    ("--data-path", "data.path", str, "local dataset folder (Parquet shards or imagefolder)"),
    ("--arch", "model.architecture", str, "timm architecture name"),
    ("--seed", "seed", int, "run seed"),
    ("--device", "run.device", str, "auto, cpu or cuda"),
]


def register(verbs: argparse._SubParsersAction) -> None:
    """Add the training verbs to the top-level parser."""
    parser = verbs.add_parser(
        "pretrain",
        help="pre-train an initialization from a recipe",
        description="Pre-train an initialization. Settings come from the recipe file, then the shorthand flags, "
        "then --set overrides. Under `accelerate launch` or torchrun the participants are shared across processes.",
    )
    parser.add_argument("recipe", nargs="?", type=Path, help="recipe TOML file (see training/recipes/)")
    parser.add_argument("-o", "--output", type=Path, help="run folder (default: runs/<recipe name>)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override any recipe key, e.g. --set method.local_epochs=1 (repeatable)",
    )
    for flag, key, kind, text in _SHORTHANDS:
        parser.add_argument(flag, dest=f"short_{key}", type=kind, metavar=kind.__name__.upper(), help=text)
    parser.add_argument("--data-dir", type=Path, help="folder of local dataset copies (sets COPRE_HUB_DATA)")
    parser.add_argument("--resume", action="store_true", help="continue the run saved in the output folder")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(handler=_pretrain)


def _pretrain(args: argparse.Namespace) -> int:
    from copre_hub.fl.pretrain import pretrain
    from copre_hub.fl.recipe import load_recipe

    if args.data_dir:
        os.environ["COPRE_HUB_DATA"] = str(args.data_dir)
    overrides = [
        f"{key}={_toml(value)}" for _, key, _, _ in _SHORTHANDS if (value := getattr(args, f"short_{key}")) is not None
    ]
    recipe = load_recipe(args.recipe, overrides + args.overrides)
    output = args.output or Path("runs") / recipe.name
    folder = pretrain(recipe, output, resume=args.resume, progress=not args.quiet)
    if not args.quiet:
        print(f"checkpoint: {folder}")
    return 0


def _toml(value: object) -> str:
    return f'"{value}"' if isinstance(value, str) else str(value)
