"""The federated simulation engine: CoPreFL, its baselines, and the machinery they share.

Use it from Python with your own model and per-client data::

    from copre_hub.fl import CoPreFL, FederatedData

    data = FederatedData.from_tensors([(x0, y0), (x1, y1), (x2, y2)])   # one (inputs, labels) pair per client
    history = CoPreFL(rounds=10, participants=2, gamma=0.5).fit(my_model, data, seed=0)

or from a recipe (what ``copre-hub pretrain`` does)::

    from copre_hub.fl import load_recipe, pretrain

    pretrain(load_recipe("training/recipes/smoke.toml"), "runs/smoke")

Names are imported on first use, so ``import copre_hub.fl`` stays cheap. Every method class is exported under
its class name (``CoPreFL``, ``FedProx``, ...), found by :func:`copre_hub.fl.methods.available` rather than listed
here; for precise static types, import a method from its module (``copre_hub.fl.methods.coprefl``).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_LAZY = {
    "FederatedData": "copre_hub.fl.partition",
    "Simulation": "copre_hub.fl.simulation",
    "Processes": "copre_hub.fl.distributed",
    "Method": "copre_hub.fl.methods.base",
    "available": "copre_hub.fl.methods",
    "create_method": "copre_hub.fl.methods",
    "Recipe": "copre_hub.fl.recipe",
    "load_recipe": "copre_hub.fl.recipe",
    "pretrain": "copre_hub.fl.pretrain",
}

if TYPE_CHECKING:  # `X as X`: re-exported for type checkers (the method classes come from discovery at run time)
    from copre_hub.fl.distributed import Processes as Processes
    from copre_hub.fl.methods import available as available
    from copre_hub.fl.methods import create_method as create_method
    from copre_hub.fl.methods.base import Method as Method
    from copre_hub.fl.partition import FederatedData as FederatedData
    from copre_hub.fl.pretrain import pretrain as pretrain
    from copre_hub.fl.recipe import Recipe as Recipe
    from copre_hub.fl.recipe import load_recipe as load_recipe
    from copre_hub.fl.simulation import Simulation as Simulation


def __getattr__(name: str) -> Any:
    if name == "__all__":  # `from copre_hub.fl import *`: the names above and every method class
        return [*_LAZY, *_method_classes()]
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
    elif name[:1].isupper() and name in (methods := _method_classes()):  # a class name, never a submodule
        value = methods[name]
    else:
        raise AttributeError(f"module 'copre_hub.fl' has no attribute {name!r}")
    globals()[name] = value
    return value


def _method_classes() -> dict[str, type]:
    """Every discovered method class by its class name (imports the methods, and with them torch)."""
    from copre_hub.fl.methods import available

    return {cls.__name__: cls for cls in available().values()}
