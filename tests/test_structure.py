"""The package's shape: no import circle between its modules, and no function or module too long to read at once.

Every import counts, also one inside a function: an import deferred only to break a circle hides the circle, it
does not remove it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "benchmark"
#: Folders whose code counts for the size limits (the package and the plug-in folders).
CODE = [PACKAGE, REPO / "methods", REPO / "datasets"]
MAX_FUNCTION_LINES = 80
MAX_MODULE_LINES = 500


def module_name(path: Path) -> str:
    """``benchmark/phantom/anatomy.py`` -> ``benchmark.phantom.anatomy``; a package's ``__init__`` is the package."""
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def package_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imported_modules(name: str, source: str, modules: dict[str, Path], *, is_package: bool = False) -> set[str]:
    """The package's modules that module ``name`` (code ``source``) imports anywhere (relative or absolute)."""
    package = name if is_package else name.rpartition(".")[0]
    found: set[str] = set()

    def add(target: str) -> None:
        # ``from .x import y`` may import the module ``x.y`` or the name ``y`` of ``x``: take the longest module
        while target and target not in modules:
            target = target.rpartition(".")[0]
        if target and target != name:
            found.add(target)

    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            for alias in node.names:
                add(f"{prefix}.{alias.name}")
    return found


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (or a module importing itself), sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1 or v in graph[v]:
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(cycles)


def test_the_cycle_finder_finds_a_known_circle_and_nothing_else():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert import_cycles(graph) == [["a", "b", "c"]]
    assert import_cycles({"a": {"b"}, "b": set()}) == []


def test_imports_inside_functions_count():
    source = "def f():\n    from . import cache\n    import benchmark.metrics\n    from .streams import Batch\n"
    found = imported_modules("benchmark.probe", source, package_modules())
    assert found == {"benchmark.cache", "benchmark.metrics", "benchmark.streams"}


def test_the_package_has_no_import_circle():
    modules = package_modules()
    graph = {name: imported_modules(name, path.read_text(), modules, is_package=path.name == "__init__.py")
             for name, path in modules.items()}
    assert "benchmark.protocol" in graph["benchmark.streams"]  # the walk sees imports at all
    cycles = import_cycles(graph)
    assert not cycles, "Import circles between the package's modules: " + "; ".join(
        " <-> ".join(c) for c in cycles)


def _code_files() -> list[Path]:
    return [p for folder in CODE for p in sorted(folder.rglob("*.py"))]


@pytest.mark.parametrize("path", _code_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_functions_and_modules_are_short_enough_to_read(path):
    lines = path.read_text().splitlines()
    assert len(lines) <= MAX_MODULE_LINES, (
        f"{path.relative_to(REPO)} has {len(lines)} lines (at most {MAX_MODULE_LINES}): split it by job.")
    long = [f"{node.name} ({node.end_lineno - node.lineno + 1} lines, line {node.lineno})"
            for node in ast.walk(ast.parse("\n".join(lines)))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES]
    assert not long, f"{path.relative_to(REPO)}: functions over {MAX_FUNCTION_LINES} lines: {', '.join(long)}."
