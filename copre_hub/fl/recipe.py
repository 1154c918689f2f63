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
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from copre_hub.errors import ConfigError
from copre_hub.fl.data import DataConfig
from copre_hub.fl.methods import Method, create_method
from copre_hub.fl.models import ModelConfig
from copre_hub.fl.partition import PartitionConfig

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
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in table.items()}
        try:
            sections[key] = cls(**values)
        except TypeError as error:
            raise ConfigError(f"invalid [{key}] table: {error}.") from error
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
    raw: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"recipe file {str(path)!r} does not exist; see training/recipes/ for examples.")
        try:
            raw = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as error:
            raise ConfigError(f"recipe {str(path)!r} is not valid TOML: {error}.") from error
    for item in overrides or []:
        apply_override(raw, item)
    return recipe_from_dict(raw)


def apply_override(raw: dict[str, Any], item: str) -> None:
    """Set ``section.key=value`` (or a top-level ``key=value``) in a parsed recipe."""
    key, sep, text = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {item!r} is not KEY=VALUE; write e.g. method.rounds=2.")
    try:
        value = tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        value = text
    *tables, leaf = key.strip().split(".")
    node = raw
    for table in tables:
        node = node.setdefault(table, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {item!r}: {table!r} is not a table.")
    node[leaf] = value
