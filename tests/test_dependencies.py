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


def _imports_of(path: Path) -> list[str]:
    """Every module a file imports, anywhere in it: import statements (relative ones resolved against the file's
    package) and ``importlib.import_module`` calls with a literal name."""
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    found: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1]) if node.level else ""
            module = ".".join(part for part in (base, node.module or "") if part)
            found += [module, *(f"{module}.{alias.name}" for alias in node.names)]
        elif name := _import_module_name(node):
            found.append(name)
    return found


def _import_module_name(node: ast.AST) -> str | None:
    """The literal module name of an ``importlib.import_module("...")`` call; None for any other node."""
    if not (isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "import_module" and node.args):
        return None
    first = node.args[0]
    return first.value if isinstance(first, ast.Constant) and isinstance(first.value, str) else None


def test_the_hub_imports_nothing_from_the_engine() -> None:
    """copre_hub.hub (load, push, cards, serve) stands on its own: the engine may use it, never the reverse."""
    engine = ("copre_hub.fl", "copre_hub.flower")
    crossings = [
        f"{path.relative_to(ROOT)}: {module}"
        for path in sorted((ROOT / "copre_hub" / "hub").rglob("*.py"))
        for module in _imports_of(path)
        if module in engine or module.startswith(tuple(f"{name}." for name in engine))
    ]
    assert not crossings
    assert "copre_hub.timm_models" in _imports_of(ROOT / "copre_hub" / "hub" / "checkpoint.py")
