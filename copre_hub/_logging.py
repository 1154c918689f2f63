"""The ``copre_hub`` library logger, configured as huggingface_hub configures its own.

Every module logs through ``get_logger(__name__)``, a child of the ``copre_hub`` logger. That logger has one stderr
handler and its level comes from ``COPRE_HUB_VERBOSITY`` (``debug``, ``info``, ``warning``, ``error`` or
``critical``; default ``warning``), read once, when this module is first imported. Records still propagate, so an
application's own logging configuration sees them too.

>>> # COPRE_HUB_VERBOSITY=info python -c 'import copre_hub; copre_hub.load("copreFL-resnet18-cifar100")'
>>> # copre_hub.hub.api: loaded copreFL-resnet18-cifar100: sha256 ..., from http://... (revision v1, commit ...)
"""

from __future__ import annotations

import logging
import os

LIBRARY = "copre_hub"
LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}
_DEFAULT_LEVEL = logging.WARNING


def get_logger(name: str) -> logging.Logger:
    """The logger of module ``name`` (``copre_hub.*``), under the configured library logger."""
    return logging.getLogger(name)


def set_verbosity(level: int | str) -> None:
    """Set the level of every ``copre_hub`` logger (a ``logging`` level or one of :data:`LEVELS`' names)."""
    logging.getLogger(LIBRARY).setLevel(LEVELS[level] if isinstance(level, str) else level)


def _default_level() -> int:
    value = os.environ.get("COPRE_HUB_VERBOSITY", "").strip().lower()
    if value and value not in LEVELS:
        logging.getLogger(LIBRARY).warning(
            "COPRE_HUB_VERBOSITY=%s is not a level; use one of %s.", value, ", ".join(LEVELS)
        )
    return LEVELS.get(value, _DEFAULT_LEVEL)


def _configure() -> None:
    logger = logging.getLogger(LIBRARY)
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
    logger.addHandler(handler)  # first, so that a warning about the variable itself is shown
    logger.setLevel(_default_level())


_configure()
