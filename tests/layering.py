"""The import layers of ``semalign_core`` and a checker that reads imports without running code.

Lowest first; a module may import its own layer and the layers below it, never one above.
``docs/architecture.md`` explains each layer; this table is what the tests hold the tree to.
"""

from __future__ import annotations

import ast
from pathlib import Path

LAYERS: tuple[tuple[str, ...], ...] = (
    ("__init__", "errors", "paths", "records", "profiles", "devices", "statistics"),  # foundation
    ("lm", "costs"),  # reading, running and costing a model: surgery, nethook, semantics, cka
    ("models", "data"),
    ("evaluation",),
    ("semalign",),  # the paper's method
    ("baselines", "salf"),  # transfer baselines and controls; the second paper's method
    ("transfer",),  # the registry of transfer methods, SemAlign included
    ("experiments",),  # one module per notebook, budgets
    ("report",),  # tables and figures from results/ alone
    ("cli", "run_notebook", "runs", "release"),  # entry points
)


def layer_of(unit: str, layers=LAYERS) -> int:
    for index, units in enumerate(layers):
        if unit in units:
            return index
    raise KeyError(f"{unit!r} is in no layer: add it to LAYERS in tests/layering.py")


def _unit(module: str, package: str) -> str | None:
    """``semalign_core.lm.surgery`` -> ``lm``; None for modules outside the package."""
    parts = module.split(".")
    if parts[0] != package:
        return None
    return parts[1] if len(parts) > 1 else "__init__"


def _imported(tree: ast.AST, package: str) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            base = node.module
            # `from pkg import sub` imports the subpackage `pkg.sub`
            found += [
                (node.lineno, f"{base}.{a.name}" if base == package else base) for a in node.names
            ]
    return found


def violations(root: Path, package: str = "semalign_core", layers=LAYERS) -> list[str]:
    """Every import in ``root`` (the package directory) that reaches a higher layer."""
    out = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root.parent).with_suffix("")
        here = _unit(".".join(rel.parts), package)
        for lineno, target in _imported(ast.parse(path.read_text()), package):
            there = _unit(target, package)
            if there is None or there == here:
                continue
            if layer_of(there, layers) > layer_of(here, layers):
                out.append(f"{path.relative_to(root.parent)}:{lineno} {here} imports {there}")
    return out


def function_level_imports(root: Path) -> dict[str, set[str]]:
    """Module (relative path) -> the modules it imports inside functions."""
    found: dict[str, set[str]] = {}
    for path in sorted(root.rglob("*.py")):
        tree = ast.parse(path.read_text())
        for func in ast.walk(tree):
            if not isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(func):
                if isinstance(node, ast.ImportFrom):
                    name = node.module or ""
                elif isinstance(node, ast.Import):
                    name = node.names[0].name
                else:
                    continue
                found.setdefault(str(path.relative_to(root)), set()).add(name)
    return found
