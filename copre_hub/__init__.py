"""copre-hub: CoPreFL initializations for federated learning, loaded like timm weights.

>>> import copre_hub
>>> model = copre_hub.load("copreFL-resnet18-cifar100", num_classes=5)  # doctest: +SKIP

The public API is six functions: ``load``, ``pull``, ``push``, ``list_models``, ``info`` and ``save`` (weights
trained elsewhere, e.g. by a Flower run, as a checkpoint folder). torch, timm and huggingface_hub are imported on
first use, not here.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_LAZY = {
    "load": "copre_hub.hub.api",
    "pull": "copre_hub.hub.api",
    "push": "copre_hub.hub.api",
    "list_models": "copre_hub.hub.api",
    "info": "copre_hub.hub.api",
    "save": "copre_hub.hub.from_weights",
}

__all__ = ["__version__", "info", "list_models", "load", "pull", "push", "save"]

if TYPE_CHECKING:
    from copre_hub.hub.api import info, list_models, load, pull, push
    from copre_hub.hub.from_weights import save


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'copre_hub' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
