"""The ``copre-hub`` command: one module per verb group (:mod:`.train`, :mod:`.hub`, :mod:`.demo`), each adding
its verbs to the parser built here without importing anything heavy.

User mistakes surface as one line on stderr and exit status 2, never a traceback: the package's own errors, bad
arguments (argparse's usage dump is replaced by one line pointing at ``--help``), and a closed output pipe.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

from copre_hub import __version__
from copre_hub.errors import CopreHubError

USAGE_ERROR = 2


class OneLineParser(argparse.ArgumentParser):
    """An argument parser whose errors are one line on stderr (``copre-hub VERB: error: ...``) and exit 2.

    argparse prints the whole usage block before the error; one line naming the problem and ``--help`` is what
    every other copre-hub mistake prints, so bad flags read the same.
    """

    def error(self, message: str) -> NoReturn:
        self.exit(USAGE_ERROR, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser; each verb group adds its verbs without importing anything heavy."""
    from copre_hub.cli import demo, hub, train

    parser = OneLineParser(
        prog="copre-hub",
        description="Train, publish and load CoPreFL initializations for federated learning.",
    )
    parser.add_argument("--version", action="version", version=f"copre-hub {__version__}")
    verbs = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    train.register(verbs)
    hub.register(verbs)
    demo.register(verbs)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the process exit status.

    A ``KeyboardInterrupt`` carrying a message (a verb's way to say how to continue) prints that message.
    """
    args = build_parser().parse_args(argv)
    try:
        status = int(args.handler(args) or 0)
        sys.stdout.flush()  # a closed pipe shows up here at the latest, while we can still report it
        return status
    except CopreHubError as error:
        print(f"copre-hub: error: {error}", file=sys.stderr)
        return USAGE_ERROR
    except BrokenPipeError:
        _silence_stdout()
        print("copre-hub: error: the output was closed before it was all written (e.g. by `| head`).", file=sys.stderr)
        return USAGE_ERROR
    except KeyboardInterrupt as interrupt:
        hint = str(interrupt)
        print(f"copre-hub: interrupted{'; ' + hint if hint else ''}", file=sys.stderr)
        return 130


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so the interpreter's final flush of a closed pipe raises nothing (Python docs,
    "Note on SIGPIPE")."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
