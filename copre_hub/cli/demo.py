"""The ``copre-hub demo`` verb; what it runs is :mod:`copre_hub.demo`."""

from __future__ import annotations

import argparse
from pathlib import Path

from copre_hub.cli._options import add_data_dir, data_dir
from copre_hub.demo import DEFAULT_OUTPUT, SIZES, check_output_folder, run_demo


def register(verbs: argparse._SubParsersAction) -> None:
    """Add the ``demo`` verb to the top-level parser (nothing heavy is imported here)."""
    parser = verbs.add_parser(
        "demo",
        help="pre-train, publish, load and compare an initialization, all on this machine",
        description="Start a local Hub endpoint, pre-train a small CoPreFL initialization on CIFAR-100, push it, "
        "load it back with copre_hub.load, and compare one downstream FedAvg task from random and from CoPreFL "
        "weights, then one task of the paper's protocol from random and from the published "
        "copreFL-resnet18-cifar100. No account or Hub access needed when the data is local (--data-dir). About "
        "5 minutes on 2 idle CPU cores.",
    )
    parser.add_argument("--size", choices=sorted(SIZES), default="default", help="default, or tiny (seconds)")
    add_data_dir(parser)
    parser.add_argument(
        "-o", "--output", type=Path, default=DEFAULT_OUTPUT, help=f"output folder (default: {DEFAULT_OUTPUT})"
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(handler=_demo)


def _demo(args: argparse.Namespace) -> int:
    from copre_hub.fl.data import DataConfig, resolve_source

    folder_of_copies = data_dir(args)
    check_output_folder(args.output)  # these two checks run before anything heavy is imported
    resolve_source(DataConfig(dataset="cifar100"), folder_of_copies)
    try:
        run_demo(SIZES[args.size], args.output, progress=not args.quiet, data_dir=folder_of_copies)
    except KeyboardInterrupt:
        raise KeyboardInterrupt(
            f"the rounds saved in {args.output / 'runs'} are kept: run the same command again to continue."
        ) from None
    return 0
