"""Options that several verbs share, defined and resolved here once."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_data_dir(parser: argparse.ArgumentParser) -> None:
    """Add ``--data-dir``: the folder of local dataset copies (``cifar100/``, ``femnist/``, ...)."""
    parser.add_argument("--data-dir", type=Path, help="folder of local dataset copies (default: $COPRE_HUB_DATA)")


def data_dir(args: argparse.Namespace) -> Path | None:
    """The folder of local dataset copies for this command: ``--data-dir``, else ``$COPRE_HUB_DATA``, else None
    (known datasets then come from the Hub). Passed on explicitly; the environment is never written."""
    from copre_hub.fl.data import data_folder

    return data_folder(args.data_dir)
