"""Hub verbs of the ``copre-hub`` command (push, pull, list, info, serve)."""

from __future__ import annotations

import argparse


def register(verbs: argparse._SubParsersAction) -> None:
    """Add the hub verbs to the top-level parser."""
