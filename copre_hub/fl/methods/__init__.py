"""Pre-training methods, one module each. Every ``Method`` subclass with a ``name`` found in this package is
available by that name, so adding a method means adding one file: recipes, ``create_method``, the ``--method``
help, ``copre_hub.fl``'s exports and the model card's method name (``display_name``) all come from here.

A ``Method`` subclass defined elsewhere is available too once its module is imported. Two classes may not share
a ``name``.
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil

from copre_hub.errors import ConfigError
from copre_hub.fl.methods.base import Method


def available() -> dict[str, type[Method]]:
    """Every method by name (imports this package's modules on first call).

    Raises:
        TypeError: two ``Method`` subclasses declare the same ``name``.
    """
    for module in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{module.name}")
    found: dict[str, type[Method]] = {}
    pending = [Method]
    while pending:
        cls = pending.pop()
        pending.extend(cls.__subclasses__())
        if not cls.name or found.get(cls.name) is cls:
            continue
        if cls.name in found:
            raise TypeError(
                f"two methods are named {cls.name!r}: {_qualified(found[cls.name])} and {_qualified(cls)}; "
                "give one of them another `name`."
            )
        found[cls.name] = cls
    return dict(sorted(found.items()))


def _qualified(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def create_method(name: str, **params: object) -> Method:
    """The method ``name`` with keyword hyperparameters ``params``.

    Raises:
        ConfigError: unknown method or hyperparameter, or a value out of range.
    """
    methods = available()
    cls = methods.get(name.lower())
    if cls is None:
        raise ConfigError(f"unknown method {name!r}; choose one of {', '.join(methods)}.")
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(params) - fields)
    if unknown:
        raise ConfigError(f"method {cls.name!r} has no setting {unknown}; its settings are {sorted(fields)}.")
    return cls(**params)


__all__ = ["Method", "available", "create_method"]
