"""Benchmarks reach the product through public seams only, so a refactor cannot break them silently.

Every name a benchmark imports from `wgtune` or `trainables` (at module level or inside a function)
must exist and be public, and no benchmark may replace an attribute of a module it imported
(monkey-patching a private function is how the soak and the throughput benchmark used to work).
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
OURS = ("wgtune", "trainables")


def _imports(tree: ast.AST) -> list[tuple[str, str | None, str]]:
    """(module, name or None, bound alias) for every import of our packages."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(a.name, None, a.asname or a.name.split(".")[0]) for a in node.names if a.name.startswith(OURS)]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith(OURS) and not node.level:
            found += [(node.module, a.name, a.asname or a.name) for a in node.names]
    return found


def problems(source: str) -> list[str]:
    """What in one benchmark's source breaks the public-seam rule."""
    tree = ast.parse(source)
    out, modules = [], set()
    for module, name, alias in _imports(tree):
        imported = importlib.import_module(module)
        if name is None:
            modules.add(alias)
            continue
        if name.startswith("_"):
            out.append(f"imports private {module}.{name}")
        if not hasattr(imported, name):
            try:
                importlib.import_module(f"{module}.{name}")
                modules.add(alias)
            except ImportError:
                out.append(f"imports {module}.{name}, which does not exist")
        elif isinstance(getattr(imported, name), type(importlib)):
            modules.add(alias)
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr.startswith("_") and isinstance(node.value, ast.Name) \
                and node.value.id in modules:
            out.append(f"uses private {node.value.id}.{node.attr}")
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
        for target in targets:
            base = target
            while isinstance(base, ast.Attribute):
                base = base.value
            if isinstance(target, ast.Attribute) and isinstance(base, ast.Name) and base.id in modules:
                out.append(f"replaces {ast.unparse(target)} at run time")
    return sorted(out)


@pytest.mark.parametrize("path", sorted(BENCH.glob("*.py")), ids=lambda p: p.name)
def test_a_benchmark_uses_only_public_names_that_exist(path: Path) -> None:
    assert problems(path.read_text()) == []


def test_the_check_sees_monkey_patching_and_private_or_missing_names() -> None:
    bad = ("from wgtune.run import driver, study\n"
           "from wgtune.run.driver import _join, no_such_function\n"
           "def f():\n    driver._run_trial(1)\n    study.launch = None\n")
    assert problems(bad) == [
        "imports private wgtune.run.driver._join",
        "imports wgtune.run.driver.no_such_function, which does not exist",
        "replaces study.launch at run time",
        "uses private driver._run_trial",
    ]
