"""Recipe files as plain data: found, read and overridden without importing torch, so that a mistyped path,
malformed TOML or a bad ``--set`` is reported at once (:mod:`copre_hub.fl.recipe` then validates the values)."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

from copre_hub.errors import ConfigError, ResumeError

RECIPES_DIR = Path("training") / "recipes"
RECORD_NAME = "run.json"  # the run record of a pre-training run folder, which stores its resolved recipe


def recipes_folder() -> Path | None:
    """``training/recipes/`` of the working directory, else of the source tree copre-hub runs from, else None."""
    here = Path(__file__).resolve().parents[2] / RECIPES_DIR
    return next((folder for folder in (RECIPES_DIR, here) if folder.is_dir()), None)


def recipe_names(folder: Path) -> list[str]:
    """The recipe files of ``folder`` (``*.toml``), sorted."""
    return sorted(path.name for path in folder.glob("*.toml"))


def list_recipes(folder: Path | None = None) -> str:
    """One line naming the recipes to choose from, e.g. ``training/recipes/: smoke.toml, ...``."""
    folder = folder if folder is not None else recipes_folder()
    if folder is None:
        return "see training/recipes/ in the copre-hub repository for examples"
    return f"recipes in {folder}/: {', '.join(recipe_names(folder)) or 'none'}"


def read_recipe(path: str | Path) -> dict[str, Any]:
    """The parsed TOML of a recipe file.

    Raises:
        ConfigError: the path is missing, is a folder, or is not valid TOML; the message lists the recipes.
    """
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{str(path)!r} is a folder, not a recipe file; {list_recipes(path)}.")
    if not path.is_file():
        raise ConfigError(f"recipe file {str(path)!r} does not exist; {list_recipes()}.")
    try:
        return tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"recipe {str(path)!r} is not valid TOML: {error}.") from error
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"cannot read recipe {str(path)!r} ({error}).") from error


def stored_recipe(run_dir: Path) -> dict[str, Any]:
    """The resolved recipe recorded in a run folder's ``run.json`` (what ``--resume`` without a recipe reuses).

    Raises:
        ResumeError: the folder holds no run record with a recipe.
    """
    try:
        recipe = json.loads((run_dir / RECORD_NAME).read_text()).get("recipe")
    except (OSError, ValueError, AttributeError):
        recipe = None
    if not isinstance(recipe, dict):
        raise ResumeError(
            f"{str(run_dir)!r} holds no run record with a recipe ({RECORD_NAME}); give the recipe file, or drop "
            "--resume to start a new run there."
        )
    return recipe


def apply_override(raw: dict[str, Any], item: str) -> None:
    """Set ``section.key=value`` (or a top-level ``key=value``) in a parsed recipe.

    The value is parsed as a TOML value (``2``, ``0.5``, ``true``, ``[0, 1]``), else taken as a string.

    Raises:
        ConfigError: not ``KEY=VALUE``, or a key that goes through a value that is not a table.
    """
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
