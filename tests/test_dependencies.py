"""Every package the code imports is declared in pyproject.toml (core dependencies or an extra)."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _imported_top_level_names() -> dict[str, str]:
    """Top-level names imported by the package (absolute imports), each with one file importing it."""
    names: dict[str, str] = {}
    for path in sorted((ROOT / "copre_hub").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules = [node.module]
            else:
                continue
            for module in modules:
                names.setdefault(module.split(".")[0], str(path.relative_to(ROOT)))
    return names


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_every_imported_package_is_declared() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    extras = project["optional-dependencies"].values()
    requirements = [*project["dependencies"], *(requirement for extra in extras for requirement in extra)]
    declared = {_normalise(re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0]) for requirement in requirements}
    distributions = importlib.metadata.packages_distributions()
    undeclared = {}
    for name, where in _imported_top_level_names().items():
        if name in sys.stdlib_module_names or name == "copre_hub" or name == "__future__":
            continue
        providers = {_normalise(dist) for dist in distributions.get(name, [name])}
        if not providers & declared:
            undeclared[name] = f"{', '.join(sorted(providers))} (imported in {where})"
    assert not undeclared, f"imported but not declared in pyproject.toml: {undeclared}"
