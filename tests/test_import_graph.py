"""bptrain's modules import each other one way: no cycle, and no function-level import hiding one.

The graph is read statically (ast) from every module in ``bptrain/``: an edge A -> B for each
``import bptrain.B`` / ``from bptrain.B import name`` in A (``from pkg import sub`` counts as an
edge to the submodule ``pkg.sub``). Imports inside functions count too: a lazy import is fine
(``bptrain --help`` must not import torch), but one that would close a cycle if it were moved to
the top of its module only hides the cycle. The implicit import of a module's parent package is
not an edge: Python always runs a package's ``__init__`` before its submodules, so a package that
re-exports from its own submodules is not a cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "bptrain"


def module_files() -> dict[str, Path]:
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def imported_modules(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The bptrain modules that ``name`` imports anywhere in its body."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name in modules)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from . import x, from ..y import z
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                found.add(submodule if submodule in modules else base)
    return {m for m in found if m in modules and m != name}


def import_graph() -> dict[str, set[str]]:
    modules = module_files()
    return {name: imported_modules(name, path, modules) for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as [a, b, ..., a], or None: depth-first search with the path on a stack."""
    state: dict[str, str] = {}  # "open" while on the current path, "done" after
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_graph_reader_sees_cycles_and_submodule_imports():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None
    graph = import_graph()
    assert "bptrain.diagnostics.analysis" in graph["bptrain.diagnostics"]
    assert "bptrain.diagnostics.curvature" in graph["bptrain.diagnostics.analysis"]
    assert "bptrain.grads" in graph["bptrain.diagnostics.analysis"]


def test_bptrain_has_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, (
        "import cycle: " + " -> ".join(cycle) + " (move what both sides need into a module of its"
        " own that imports neither; a function-level import only hides the cycle)"
    )
