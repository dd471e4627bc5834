"""The package's shape, as docs/design.md draws it: layers that import only downwards, no import
circle, no module too long to read, and a trial package that knows nothing of the orchestration.

Imports are read from the source (every `import`, at module level or inside a function), so a
lazy import that breaks the layering is caught as well as an eager one.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("wgtune", "trainables")
MAX_LINES = 500

# What each layer may import, besides itself and `trainables` (the bottom: what runs in a trial).
# cli -> commands -> run -> {search, tracking, report} -> spec; search and report read tracking's records.
ALLOWED = {
    "wgtune.cli": {"wgtune.commands", "wgtune.spec"},
    "wgtune.commands": {"wgtune.run", "wgtune.search", "wgtune.tracking", "wgtune.report", "wgtune.spec"},
    "wgtune.run": {"wgtune.search", "wgtune.tracking", "wgtune.report", "wgtune.spec"},
    "wgtune.search": {"wgtune.tracking", "wgtune.spec"},
    "wgtune.report": {"wgtune.tracking", "wgtune.spec"},
    "wgtune.tracking": {"wgtune.spec"},
    "wgtune.spec": set(),
}
TRAINABLES_NEVER = ("wgtune", "ray", "mlflow", "hyperopt")


def modules() -> dict[str, Path]:
    """Every module of our packages by dotted name."""
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


def imports(path: Path, name: str, runtime: bool = False) -> set[str]:
    """The dotted names a module imports (relative imports resolved), wherever the import stands;
    with `runtime`, not those under `if TYPE_CHECKING:` (a type-only import runs no code)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(path.read_text(), str(path))
    typing_only = {id(n) for block in ast.walk(tree) if isinstance(block, ast.If) and
                   ast.unparse(block.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING")
                   for stmt in block.body for n in ast.walk(stmt)}
    out: set[str] = set()
    for node in ast.walk(tree):
        if runtime and id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            out.add(base)
            out.update(f"{base}.{alias.name}" for alias in node.names)  # `from pkg import module`
    return out


def layer(name: str) -> str | None:
    """The layer a wgtune module belongs to (`wgtune.cli` is one of its own)."""
    return next((lay for lay in ALLOWED if name == lay or name.startswith(lay + ".")), None)


def upward_imports(graph: dict[str, set[str]]) -> list[tuple[str, str]]:
    """(importer, imported) pairs where a wgtune module reaches a layer it may not."""
    return sorted((name, dep) for name, deps in graph.items() if (own := layer(name))
                  for dep in deps if (other := layer(dep)) and other != own and other not in ALLOWED[own])


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Import circles among modules (a package's `__init__` importing its own modules is not one)."""
    found, state = [], {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = "open"
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == "open":
                found.append(stack[stack.index(dep):] + [dep])
            elif dep not in state:
                visit(dep, [*stack, dep])
        state[node] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    return [c for c in found if not any(m in MODULES and MODULES[m].name == "__init__.py" for m in c)]


MODULES = modules()
GRAPH = {name: {m for m in imports(path, name) if m in MODULES and m != name} for name, path in MODULES.items()}
RUNTIME_GRAPH = {name: {m for m in imports(path, name, runtime=True) if m in MODULES and m != name}
                 for name, path in MODULES.items()}


def test_no_module_imports_from_a_layer_above_its_own() -> None:
    wrong = upward_imports(GRAPH)
    assert not wrong, "imports against the layering of docs/design.md: " + "; ".join(f"{a} -> {b}" for a, b in wrong)


def test_every_wgtune_module_belongs_to_a_layer() -> None:
    stray = [n for n in MODULES if n.startswith("wgtune.") and layer(n) is None]
    assert not stray, f"modules outside every layer of docs/design.md: {stray}"


def test_the_trial_package_never_imports_the_orchestration() -> None:
    for name, path in MODULES.items():
        if name.startswith("trainables"):
            bad = sorted(m for m in imports(path, name) if m.split(".")[0] in TRAINABLES_NEVER)
            assert not bad, f"{name} imports {bad}: trainables runs inside a trial and must stand alone"


def test_there_is_no_import_circle() -> None:
    found = circles(RUNTIME_GRAPH)
    assert not found, "import circles: " + "; ".join(" -> ".join(c) for c in found)


@pytest.mark.parametrize("name", sorted(MODULES))
def test_no_module_is_too_long_to_read(name: str) -> None:
    lines = len(MODULES[name].read_text().splitlines())
    assert lines <= MAX_LINES, f"{name} has {lines} lines: split it by concept (STYLE: ~{MAX_LINES} at most)"


def test_the_checks_catch_an_upward_import_and_a_circle() -> None:
    bad = {"wgtune.spec.grid": {"wgtune.run.plan"}, "wgtune.run.plan": {"wgtune.spec.grid"},
           "wgtune.report.build": {"wgtune.search.router"}, "wgtune.search.router": set()}
    assert upward_imports(bad) == [("wgtune.report.build", "wgtune.search.router"),
                                   ("wgtune.spec.grid", "wgtune.run.plan")]
    assert circles(bad) == [["wgtune.run.plan", "wgtune.spec.grid", "wgtune.run.plan"]]


def test_a_type_only_import_is_a_dependency_but_runs_no_code(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("from typing import TYPE_CHECKING\nimport wgtune.spec.grid\n"
                      "if TYPE_CHECKING:\n    from wgtune.run.plan import PlannedCell\n")
    assert {"wgtune.spec.grid", "wgtune.run.plan"} <= imports(module, "wgtune.x.m")
    assert "wgtune.run.plan" not in imports(module, "wgtune.x.m", runtime=True)
