"""The ``copre-hub`` command: one verb per concern, each registered by the part of the package that owns it.

User mistakes surface as one line on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from copre_hub import __version__
from copre_hub.errors import CopreHubError


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser; each area adds its verbs without importing anything heavy."""
    from copre_hub import demo
    from copre_hub.fl import cli as fl_cli
    from copre_hub.hub import cli as hub_cli

    parser = argparse.ArgumentParser(
        prog="copre-hub",
        description="Train, publish and load CoPreFL initializations for federated learning.",
    )
    parser.add_argument("--version", action="version", version=f"copre-hub {__version__}")
    verbs = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    fl_cli.register(verbs)
    hub_cli.register(verbs)
    demo.register(verbs)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the process exit status."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except CopreHubError as error:
        print(f"copre-hub: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("copre-hub: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
