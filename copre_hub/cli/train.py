"""Training verbs of the ``copre-hub`` command: ``pretrain`` and ``evaluate`` (both run :mod:`copre_hub.fl`)."""

from __future__ import annotations

import argparse
import contextlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from copre_hub.cli._options import add_data_dir, data_dir
from copre_hub.errors import ConfigError

if TYPE_CHECKING:
    from copre_hub.fl.report_format import Report

# Flags that are shorthands for recipe keys: (flag, recipe key, type, help).
_SHORTHANDS = [
    ("--method", "method.name", str, "pre-training method ({methods})"),
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


class _MethodsHelpFormatter(argparse.HelpFormatter):
    """Fills ``{methods}`` in a help text with the discovered method names when help is printed, not when the
    parser is built: finding the methods imports torch, which a plain ``copre-hub push`` must not pay for."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = super()._get_help_string(action)
        if text and "{methods}" in text:
            from copre_hub.fl.methods import available

            text = text.replace("{methods}", ", ".join(available()))
        return text


def register(verbs: argparse._SubParsersAction) -> None:
    """Add the training verbs to the top-level parser."""
    parser = verbs.add_parser(
        "pretrain",
        formatter_class=_MethodsHelpFormatter,
        help="pre-train an initialization from a recipe",
        description="Pre-train an initialization. Settings come from the recipe file, then the shorthand flags, "
        "then --set overrides. Under `accelerate launch` or torchrun the participants are shared across processes.",
    )
    parser.add_argument(
        "recipe",
        nargs="?",
        type=Path,
        help="recipe TOML file (see training/recipes/); with --resume, default: the recipe stored in the run folder",
    )
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
    add_data_dir(parser)
    parser.add_argument("--resume", action="store_true", help="continue the run saved in the output folder")
    parser.add_argument(
        "-q", "--quiet", action="store_true", help="no progress bar or summary; still prints the checkpoint path"
    )
    parser.set_defaults(handler=_pretrain)
    _register_evaluate(verbs)


def _pretrain(args: argparse.Namespace) -> int:
    folder_of_copies = data_dir(args)
    raw = _recipe_data(args)
    output = args.output or Path("runs") / str(raw.get("name") or "pretrain")
    _check_data_source(raw.get("data"), folder_of_copies)
    # Only now the heavy imports (torch, timm, accelerate): every check above costs a fraction of a second.
    from copre_hub._progress import only_our_progress_bars
    from copre_hub.fl.distributed import is_main_process
    from copre_hub.fl.pretrain import pretrain
    from copre_hub.fl.recipe import recipe_from_dict

    recipe = recipe_from_dict(raw)
    try:
        with only_our_progress_bars() if args.quiet else contextlib.nullcontext():
            folder = pretrain(recipe, output, resume=args.resume, progress=not args.quiet, data_dir=folder_of_copies)
    except KeyboardInterrupt:
        raise KeyboardInterrupt(_how_to_continue(output, folder_of_copies)) from None
    if is_main_process():  # once, not once per launched process
        if not args.quiet:
            print(run_summary(output, folder))
        print(f"checkpoint: {folder}")
    return 0


def _recipe_data(args: argparse.Namespace) -> dict[str, Any]:
    """The recipe as plain data with the shorthand flags and ``--set`` applied: from the file, else (``--resume``)
    the one stored in the run folder, else from flags that name a whole setup.

    Raises:
        ConfigError: no recipe and nothing to take one from; the message lists ``training/recipes/``.
    """
    from copre_hub.fl.recipe_files import apply_override, list_recipes, read_recipe, stored_recipe

    if args.recipe is not None:
        raw = read_recipe(args.recipe)
    elif args.resume:
        if args.output is None:
            raise ConfigError("--resume without a recipe needs the run folder: copre-hub pretrain --resume -o RUN_DIR.")
        raw = stored_recipe(args.output)
    else:
        raw = {}
    shorthands = [
        f"{key}={_toml(value)}" for _, key, _, _ in _SHORTHANDS if (value := getattr(args, f"short_{key}")) is not None
    ]
    for item in [*shorthands, *args.overrides]:
        apply_override(raw, item)
    if args.recipe is None and not args.resume:
        missing = [flag for flag, key in _SETUP_FLAGS if not _has(raw, key)]
        if missing:
            raise ConfigError(
                "pretrain needs a recipe, e.g. `copre-hub pretrain training/recipes/smoke.toml`; "
                f"{list_recipes()} (or name a whole setup with {', '.join(flag for flag, _ in _SETUP_FLAGS)})."
            )
        method, model, data = raw["method"], raw["model"], raw["data"]
        raw.setdefault("name", f"{method['name']}-{model['architecture']}-{data['dataset']}".replace("/", "-"))
    return raw


# Flags that together name a whole pre-training setup, so that no recipe file is needed: (flag, recipe key).
_SETUP_FLAGS = [
    ("--method", "method.name"),
    ("--arch", "model.architecture"),
    ("--dataset", "data.dataset"),
    ("--rounds", "method.rounds"),
]


def _has(raw: dict[str, Any], key: str) -> bool:
    node: Any = raw
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def _check_data_source(table: Any, folder_of_copies: Path | None) -> None:
    """Refuse, before any heavy import, a local dataset source that is named but does not hold the dataset."""
    from copre_hub.fl.data import DataConfig, resolve_source

    table = table if isinstance(table, dict) else {}
    dataset, path = table.get("dataset", DataConfig.dataset), table.get("path")
    if isinstance(dataset, str) and isinstance(path, str | None):  # other kinds: the recipe's validation says so
        resolve_source(DataConfig(dataset=dataset, path=path), folder_of_copies)


def _how_to_continue(output: Path, folder_of_copies: Path | None) -> str:
    """What to run after Ctrl-C, from what the run folder holds (and the data folder the run read)."""
    from copre_hub.fl.pretrain import RECORD_NAME, STATE_NAME

    if not (output / STATE_NAME).exists():
        return "no round was saved yet: run the same command again to start over."
    try:
        saved = json.loads((output / RECORD_NAME).read_text()).get("saved_round")
    except (OSError, ValueError):
        saved = None
    at = f"round {saved} is saved" if saved else "the last saved round is kept"
    data_flag = f" --data-dir {folder_of_copies}" if folder_of_copies else ""
    return f"{at} in {output}: continue with `copre-hub pretrain --resume -o {output}{data_flag}`."


def run_summary(run_dir: Path, checkpoint: Path) -> str:
    """What a finished pre-training reports: rounds, time, final loss, the weights' sha256 and what to run next."""
    from copre_hub.fl.pretrain import RECORD_NAME
    from copre_hub.hub.checkpoint import CONFIG_NAME, WEIGHTS_NAME
    from copre_hub.hub.meta import CheckpointMeta

    record = json.loads((run_dir / RECORD_NAME).read_text())
    sha256 = CheckpointMeta.from_config(json.loads((checkpoint / CONFIG_NAME).read_text())).sha256
    last = (record.get("rounds") or [{}])[-1]
    loss = next((f"{key} {last[key]:.4f}" for key in ("train_loss", "query_loss_mean") if key in last), "no loss")
    lines = [
        f"finished {record.get('name')}: {last.get('round', 0)} rounds in {_duration(record.get('seconds', 0.0))}, "
        f"final {loss}",
        f"weights: {checkpoint / WEIGHTS_NAME} (sha256 {sha256})",
        "next:",
        f"  copre-hub evaluate {checkpoint} random -o {run_dir / 'evaluation'}   # downstream FL vs random weights",
        f"  copre-hub push {checkpoint} ORG/NAME   # publish to $HF_ENDPOINT with $HF_TOKEN",
    ]
    return "\n".join(lines)


def _duration(seconds: float) -> str:
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min {rest} s" if minutes else f"{seconds:.1f} s"


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
    add_data_dir(parser)
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
        "--reuse",
        action="append",
        default=[],
        type=Path,
        metavar="REPORT",
        help="an earlier report (results.json, or a card's evaluation.json) whose tasks count as finished for the "
        "same weights under the same protocol and data, so published initializations are not run again "
        "(repeatable)",
    )
    parser.add_argument(
        "--task-indices",
        type=int,
        nargs="+",
        metavar="I",
        help="run only these of the --tasks tasks (0-based), e.g. one share per machine: they are the same tasks a "
        "whole run draws, so the shares' reports serve as --reuse of the whole run",
    )
    parser.add_argument(
        "--merge", action="store_true", help="also record the results in each local checkpoint's config and card"
    )
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="where to train")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(handler=_evaluate)


def _evaluate(args: argparse.Namespace) -> int:
    folder_of_copies = data_dir(args)
    if args.data_path and not args.dataset:
        raise ConfigError("--data-path needs --dataset (its name sets the columns and class split), e.g. cifar100.")
    if args.output.exists() and not args.output.is_dir():
        raise ConfigError(f"-o {args.output} is a file; give a folder for the results.")
    for source in args.sources:
        _check_source(source)
    from copre_hub.fl.report_format import read_report

    for path in args.reuse:
        read_report(path)  # a wrong file is refused now, not after the data has loaded
    if args.dataset:
        _check_data_source({"dataset": args.dataset, "path": args.data_path}, folder_of_copies)
    # Only now the heavy imports (torch, timm): every check above costs a fraction of a second.
    import torch

    from copre_hub._progress import only_our_progress_bars
    from copre_hub.fl.data import DataConfig
    from copre_hub.fl.distributed import Processes
    from copre_hub.fl.evaluate import evaluate
    from copre_hub.fl.pretrain import require_device
    from copre_hub.fl.report import format_table, write_report

    require_device(args.device)
    data = DataConfig(dataset=args.dataset, path=args.data_path) if args.dataset else None
    names = [name for _, name, _, _ in _DOWNSTREAM_FLAGS] + ["nesterov"]
    settings = {name: value for name in names if (value := getattr(args, f"downstream_{name}")) is not None}
    settings["protocol"] = args.protocol
    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        with only_our_progress_bars() if args.quiet else contextlib.nullcontext():
            report = evaluate(
                args.sources,
                settings,
                data,
                architecture=args.arch,
                processes=Processes(device=torch.device(device)),
                progress=not args.quiet,
                cache_dir=args.output / "cache",
                reuse=args.reuse,
                data_dir=folder_of_copies,
                task_indices=args.task_indices,
            )
    except KeyboardInterrupt:
        raise KeyboardInterrupt(
            f"finished tasks are kept in {args.output / 'cache'}: run the same command again to continue."
        ) from None
    json_path, plot_path = write_report(report, args.output)
    print(format_table(report))
    print(f"results: {json_path}\nplot: {plot_path}")
    if args.merge:
        _merge(report)
    return 0


def _check_source(source: str) -> None:
    """Refuse a folder that is not a checkpoint before anything heavy runs, pointing at the checkpoint inside it."""
    from copre_hub.hub.checkpoint import CONFIG_NAME
    from copre_hub.hub.ids import LOCAL_DIR_PREFIX

    folder = Path(source.removeprefix(LOCAL_DIR_PREFIX)).expanduser()
    if source.lower() == "random" or not folder.is_dir() or (folder / CONFIG_NAME).is_file():
        return
    inside = sorted(str(config.parent) for config in folder.glob(f"*/{CONFIG_NAME}"))
    inside += sorted(str(config.parent) for config in folder.glob(f"*/checkpoint/{CONFIG_NAME}"))
    hint = f" (checkpoints inside it: {', '.join(inside[:3])})" if inside else ""
    raise ConfigError(
        f"{source!r} is a folder but not a checkpoint (no {CONFIG_NAME}){hint}; give a checkpoint folder such as "
        "runs/<name>/checkpoint, a Hub id, or 'random'."
    )


def _merge(report: Report) -> None:
    """Record each local checkpoint's results in its config block and card; Hub ids are only named."""
    from copre_hub.fl.report import card_eval_result, merge_into_checkpoint
    from copre_hub.fl.report_format import RANDOM

    for entry in report["initializations"]:
        if entry["source"] == RANDOM:
            continue
        if Path(entry["source"]).is_dir():
            folder = merge_into_checkpoint(entry["source"], card_eval_result(report, entry["label"]))
            print(f"merged into {folder}")
        else:
            print(f"not merged into {entry['source']}: not a local folder (copy it out of `copre-hub pull` first)")


def _toml(value: object) -> str:
    return json.dumps(value) if isinstance(value, str) else str(value)  # a JSON string is a TOML basic string
