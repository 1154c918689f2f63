"""Training verbs of the ``copre-hub`` command: ``pretrain`` and ``evaluate``."""

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
    _register_evaluate(verbs)


def _pretrain(args: argparse.Namespace) -> int:
    from accelerate import PartialState

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
    if not args.quiet and PartialState().is_main_process:  # once, not once per launched process
        print(f"checkpoint: {folder}")
    return 0


# Flags of `evaluate` that set DownstreamConfig fields: (flag, field, type, help).
_DOWNSTREAM_FLAGS = [
    ("--tasks", "tasks", int, "downstream FL tasks X (default 10)"),
    ("--classes-per-task", "classes_per_task", int, "classes per task k (default 5)"),
    ("--class-pool", "class_pool", str, "unseen (default), seen or mixed (Table 4)"),
    ("--clients", "clients", int, "clients per task |G| (default 10)"),
    ("--partition", "partition", str, "dirichlet (default) or iid"),
    ("--alpha", "alpha", float, "Dirichlet alpha (default 0.5)"),
    ("--rounds", "rounds", int, "downstream rounds R (default 50; 10 for femnist)"),
    ("--local-steps", "local_steps", int, "local SGD iterations per round (default 5)"),
    ("--local-epochs", "local_epochs", int, "instead of --local-steps, passes over the client's data per round"),
    ("--batch-size", "batch_size", int, "local batch size (default 32)"),
    ("--lr", "lr", float, "local learning rate (default 1e-3)"),
    ("--momentum", "momentum", float, "local SGD momentum, fresh every round (default 0)"),
    ("--weight-decay", "weight_decay", float, "local SGD weight decay (default 0)"),
    ("--algorithm", "algorithm", str, "fedavg (default), fedprox or qffl"),
    ("--mu", "mu", float, "FedProx mu (default 1)"),
    ("--q", "q", float, "q-FFL q (default 2)"),
    ("--seed", "seed", int, "seed of every draw, shared by all initializations (default 0)"),
]


def _register_evaluate(verbs: argparse._SubParsersAction) -> None:
    parser = verbs.add_parser(
        "evaluate",
        help="compare initializations on the same downstream FL tasks",
        description="Run downstream FL tasks (the paper's protocol) from each initialization, on identical tasks, "
        "partitions and batch orders; print a comparison table and write results.json and a per-client accuracy "
        "plot.",
    )
    parser.add_argument("sources", nargs="+", metavar="ID_OR_PATH", help="checkpoint folder, Hub id, or 'random'")
    from copre_hub.fl.protocols import PROTOCOLS

    parser.add_argument(
        "--protocol",
        default="literal",
        choices=list(PROTOCOLS),
        help="reading of the paper's downstream protocol the flags below start from (default literal: its text)",
    )
    for flag, name, kind, text in _DOWNSTREAM_FLAGS:
        parser.add_argument(flag, dest=f"downstream_{name}", type=kind, metavar=kind.__name__.upper(), help=text)
    parser.add_argument(
        "--nesterov", dest="downstream_nesterov", action="store_const", const=True, help="Nesterov momentum"
    )
    parser.add_argument("--dataset", help="dataset (default: the first checkpoint's pre-training dataset)")
    parser.add_argument("--data-path", help="local dataset folder (Parquet shards or imagefolder)")
    parser.add_argument("--data-dir", type=Path, help="folder of local dataset copies (sets COPRE_HUB_DATA)")
    parser.add_argument("--arch", help="timm architecture for 'random' (default: the first checkpoint's)")
    parser.add_argument(
        "-o",
        "--output",
        type=Path,
        default=Path("evaluation"),
        help="folder for the results; each finished task is kept in its cache/ subfolder, and a rerun with the "
        "same settings resumes from there (delete the folder to start over)",
    )
    parser.add_argument(
        "--merge", action="store_true", help="also record the results in each local checkpoint's config and card"
    )
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="where to train")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(handler=_evaluate)


def _evaluate(args: argparse.Namespace) -> int:
    import torch

    from copre_hub.errors import ConfigError
    from copre_hub.fl.data import DataConfig
    from copre_hub.fl.distributed import Processes
    from copre_hub.fl.evaluate import evaluate, format_table, write_report

    if args.data_dir:
        os.environ["COPRE_HUB_DATA"] = str(args.data_dir)
    if args.data_path and not args.dataset:
        raise ConfigError("--data-path needs --dataset (its name sets the columns and class split), e.g. cifar100.")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda but no CUDA device is visible; use --device cpu.")
    data = DataConfig(dataset=args.dataset, path=args.data_path) if args.dataset else None
    names = [name for _, name, _, _ in _DOWNSTREAM_FLAGS] + ["nesterov"]
    settings = {name: value for name in names if (value := getattr(args, f"downstream_{name}")) is not None}
    settings["protocol"] = args.protocol
    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    report = evaluate(
        args.sources,
        settings,
        data,
        architecture=args.arch,
        processes=Processes(device=torch.device(device)),
        progress=not args.quiet,
        cache_dir=args.output / "cache",
    )
    json_path, plot_path = write_report(report, args.output)
    print(format_table(report))
    print(f"results: {json_path}\nplot: {plot_path}")
    if args.merge:
        _merge(report)
    return 0


def _merge(report: dict) -> None:
    """Record each local checkpoint's results in its config block and card; Hub ids are only named."""
    from copre_hub.fl.evaluate import RANDOM, card_eval_result, merge_into_checkpoint

    for entry in report["initializations"]:
        if entry["source"] == RANDOM:
            continue
        if Path(entry["source"]).is_dir():
            folder = merge_into_checkpoint(entry["source"], card_eval_result(report, entry["label"]))
            print(f"merged into {folder}")
        else:
            print(f"not merged into {entry['source']}: not a local folder (copy it out of `copre-hub pull` first)")


def _toml(value: object) -> str:
    return f'"{value}"' if isinstance(value, str) else str(value)
