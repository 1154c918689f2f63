"""Recipes: a whole pre-training run as data (TOML file -> frozen dataclasses), validated before anything runs.

```toml
name = "copreFL-resnet18-cifar100"
seed = 0
[data]       # DataConfig
dataset = "cifar100"
[partition]  # PartitionConfig
num_clients = 100
scheme = "dirichlet"
alpha = 0.5
[model]      # ModelConfig
architecture = "resnet18"
[method]     # a method name and its hyperparameters (see copre_hub.fl.methods)
name = "coprefl"
gamma = 0.75
[run]        # RunConfig: how to run it, not what (does not change the result)
checkpoint_every = 5
```
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from copre_hub.errors import ConfigError
from copre_hub.fl.data import DataConfig
from copre_hub.fl.methods import Method, available, create_method
from copre_hub.fl.models import ModelConfig
from copre_hub.fl.partition import PartitionConfig
from copre_hub.fl.recipe_files import apply_override, read_recipe

DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("no", "bf16")


@dataclass(frozen=True)
class RunConfig:
    """How a run executes; none of it changes the resulting weights (beyond bf16 rounding).

    Attributes:
        checkpoint_every: write resumable state every this many rounds (and always after the last).
        device: ``auto`` (an accelerator when there is one), ``cpu`` or ``cuda``.
        mixed_precision: ``no`` or ``bf16`` (autocast on accelerators; ignored on CPU).
        eval_batch_size: batch size of query-loss and evaluation passes.
    """

    checkpoint_every: int = 5
    device: str = "auto"
    mixed_precision: str = "no"
    eval_batch_size: int = 512

    def __post_init__(self) -> None:
        if self.checkpoint_every < 1:
            raise ConfigError(f"run.checkpoint_every must be at least 1, got {self.checkpoint_every}.")
        if self.device not in DEVICES:
            raise ConfigError(f"run.device must be one of {DEVICES}, got {self.device!r}.")
        if self.mixed_precision not in PRECISIONS:
            raise ConfigError(f"run.mixed_precision must be one of {PRECISIONS}, got {self.mixed_precision!r}.")


@dataclass(frozen=True)
class Recipe:
    """Everything that determines a pre-training run's result."""

    name: str = "pretrain"
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    partition: PartitionConfig = field(default_factory=PartitionConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    method: dict[str, Any] = field(default_factory=lambda: {"name": "coprefl"})
    run: RunConfig = field(default_factory=RunConfig)

    def build_method(self) -> Method:
        params = dict(self.method)
        name = params.pop("name", None)
        if not name:
            raise ConfigError('the recipe\'s [method] table needs a name, e.g. name = "coprefl".')
        if not isinstance(name, str):
            raise ConfigError(f'method.name must be a string such as "coprefl", got {name!r}.')
        if (cls := available().get(name.lower())) is not None:
            check_types(cls, params, "method")
        return create_method(name, **params)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def fingerprint(self) -> str:
        """Hash of everything that changes the result (``run`` excluded), to refuse resuming another recipe."""
        content = {k: v for k, v in self.to_dict().items() if k != "run"}
        return hashlib.sha256(json.dumps(content, sort_keys=True, default=str).encode()).hexdigest()[:16]


_SECTIONS = {"data": DataConfig, "partition": PartitionConfig, "model": ModelConfig, "run": RunConfig}


def recipe_from_dict(raw: dict[str, Any]) -> Recipe:
    """Build and validate a :class:`Recipe` from nested plain data (a parsed TOML file).

    Raises:
        ConfigError: unknown section or key, a value of the wrong kind, or an invalid method.
    """
    unknown = sorted(set(raw) - {"name", "seed", "method", *_SECTIONS})
    if unknown:
        raise ConfigError(
            f"unknown recipe keys {unknown}; top-level keys are name, seed, data, partition, model, method, run."
        )
    sections = {}
    for key, cls in _SECTIONS.items():
        table = raw.get(key, {})
        if not isinstance(table, dict):
            raise ConfigError(f"recipe [{key}] must be a table, got {table!r}.")
        names = {f.name for f in dataclasses.fields(cls)}
        bad = sorted(set(table) - names)
        if bad:
            raise ConfigError(f"unknown keys {bad} in [{key}]; allowed: {sorted(names)}.")
        check_types(cls, table, key)
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in table.items()}
        try:
            sections[key] = cls(**values)
        except TypeError as error:
            raise ConfigError(f"invalid [{key}] table: {error}.") from error
    check_types(Recipe, {key: raw[key] for key in ("name", "seed") if key in raw}, "")
    if not isinstance(raw.get("method", {}), dict):
        raise ConfigError(f"recipe [method] must be a table, got {raw['method']!r}.")
    recipe = Recipe(
        name=str(raw.get("name", "pretrain")),
        seed=int(raw.get("seed", 0)),
        method=dict(raw.get("method", {"name": "coprefl"})),
        **sections,
    )
    recipe.build_method()
    return recipe


def load_recipe(path: str | Path | None = None, overrides: list[str] | None = None) -> Recipe:
    """A recipe from a TOML file (or the defaults), with ``section.key=value`` overrides applied.

    Override values are parsed as TOML values (``2``, ``0.5``, ``true``, ``[0, 1]``), else taken as strings.

    Raises:
        ConfigError: missing or malformed file, malformed override, invalid recipe.
    """
    raw: dict[str, Any] = read_recipe(path) if path is not None else {}
    for item in overrides or []:
        apply_override(raw, item)
    return recipe_from_dict(raw)


def differences(saved: dict[str, Any], given: dict[str, Any]) -> list[str]:
    """The result-changing settings (``run`` excluded) where two recipes, as :meth:`Recipe.to_dict`, differ.

    Example:
        >>> differences({"method": {"gamma": 0.75}}, {"method": {"gamma": 0.1}})
        ['method.gamma: saved 0.75, given 0.1']
    """

    def flat(recipe: dict[str, Any]) -> dict[str, Any]:
        plain = json.loads(json.dumps({k: v for k, v in recipe.items() if k != "run"}, default=str))  # tuples: lists
        return dict(_flatten(plain))

    old, new = flat(saved), flat(given)
    return [
        f"{key}: saved {_show(old.get(key, _UNSET))}, given {_show(new.get(key, _UNSET))}"
        for key in sorted(old.keys() | new.keys())
        if old.get(key, _UNSET) != new.get(key, _UNSET)
    ]


_UNSET = object()


def _show(value: Any) -> str:
    return "unset" if value is _UNSET else json.dumps(value)


def _flatten(values: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    rows: list[tuple[str, Any]] = []
    for key, value in values.items():
        if isinstance(value, dict) and value:
            rows += _flatten(value, f"{prefix}{key}.")
        else:
            rows.append((f"{prefix}{key}", value))
    return rows


def check_types(cls: type, values: dict[str, Any], section: str) -> None:
    """Refuse a value whose kind does not fit the field of ``cls`` it sets, naming the key and the value.

    TOML already gives values their kinds; this catches ``rounds = "three"`` (or ``--set method.rounds=three``)
    before the dataclass compares a string with a number. An integer is accepted for a float field.

    Raises:
        ConfigError: e.g. ``method.rounds must be an integer, got 'three'.``
    """
    hints = typing.get_type_hints(cls)
    for key, value in values.items():
        hint = hints.get(key)
        if hint is not None and not _fits(value, hint):
            name = f"{section}.{key}" if section else key
            raise ConfigError(f"{name} must be {_kind(hint)}, got {value!r}.")


def _fits(value: Any, hint: Any) -> bool:
    origin = typing.get_origin(hint)
    if origin in (types.UnionType, typing.Union):
        return any(_fits(value, arg) for arg in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if origin in (tuple, list):
        items = [arg for arg in typing.get_args(hint) if arg is not Ellipsis]
        return isinstance(value, list | tuple) and all(_fits(item, items[0]) for item in value if items)
    if origin is dict:
        return isinstance(value, dict)
    return isinstance(value, hint) if isinstance(hint, type) else True  # Any and the like: the dataclass decides


def _kind(hint: Any) -> str:
    """``int | None`` as "an integer or unset", and so on."""
    origin = typing.get_origin(hint)
    if origin in (types.UnionType, typing.Union):
        return " or ".join(_kind(arg) for arg in typing.get_args(hint))
    if origin in (tuple, list):
        items = [arg for arg in typing.get_args(hint) if arg is not Ellipsis]
        return f"a list of {_kind(items[0]).removeprefix('an ').removeprefix('a ')}s" if items else "a list"
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string", type(None): "unset"}
    return names.get(hint, "a table" if origin is dict else getattr(hint, "__name__", str(hint)))
