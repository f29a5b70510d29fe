"""The import graph of core/ and connectors/: no cycle, and core never imports connectors.

Built from the source with `ast`, so it sees every import a module can execute: at the top and
inside functions (a lazy import that closes a circle is still a circle). Imports under
`if TYPE_CHECKING:` never run and are left out: they only name types for the checker.
`from package import module` is an edge to that module; the package's `__init__` running
first is Python's doing, not a dependency the importer chose.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("core", "connectors")
# The folders install under one namespace (pyproject.toml): core/engine.py is
# crm_elasticity.core.engine.
NAMESPACE = "crm_elasticity"


def module_name(path: Path) -> str:
    parts = [NAMESPACE, *path.relative_to(ROOT).with_suffix("").parts]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def room(name: str) -> str:
    """`core` or `connectors` for a module name under the namespace."""
    return name.split(".")[1]


def _type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imported_names(tree: ast.Module, package: str) -> set[str]:
    """Every dotted name an executable import statement of the module reaches for."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _type_checking(child.test):
                for stmt in child.orelse:
                    visit_one(stmt)
                continue
            visit_one(child)

    def visit_one(node: ast.AST) -> None:
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            found.update(f"{base}\0{alias.name}" for alias in node.names)
        visit(node)

    visit(tree)
    return found


def import_graph() -> dict[str, set[str]]:
    files = [p for name in PACKAGES for p in sorted((ROOT / name).rglob("*.py"))]
    known = {module_name(p) for p in files}
    graph: dict[str, set[str]] = {}
    for path in files:
        name = module_name(path)
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges: set[str] = set()
        for target in imported_names(ast.parse(path.read_text()), package):
            base, _, member = target.partition("\0")
            # `from pkg import module` reaches the module; `from mod import name`, the module.
            target = f"{base}.{member}" if f"{base}.{member}" in known else base
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                edges.add(target)
        graph[name] = edges
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, edges = work[-1]
            for nxt in edges:
                if nxt not in index:
                    index[nxt] = low[nxt] = counter
                    counter += 1
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(sorted(graph[nxt]))))
                    break
                if nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))
    return found


def test_core_and_connectors_import_without_a_cycle():
    assert cycles(import_graph()) == []


def test_core_never_imports_connectors():
    graph = import_graph()
    backwards = {
        name: sorted(d for d in deps if room(d) == "connectors")
        for name, deps in graph.items()
        if room(name) == "core"
    }
    assert {name: deps for name, deps in backwards.items() if deps} == {}


def test_no_module_imports_the_folders_by_their_bare_names():
    """`import core...` would find another distribution's `core`, or nothing, once installed."""
    bare = {}
    for name in PACKAGES:
        for path in sorted((ROOT / name).rglob("*.py")):
            package = module_name(path).rpartition(".")[0]
            targets = {
                t.partition("\0")[0] for t in imported_names(ast.parse(path.read_text()), package)
            }
            found = sorted(t for t in targets if t.split(".")[0] in PACKAGES)
            if found:
                bare[module_name(path)] = found
    assert bare == {}


@pytest.mark.parametrize(
    ("graph", "expected"),
    [
        ({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}, [["a", "b", "c"]]),
        ({"a": {"b"}, "b": set(), "c": {"b"}}, []),
        ({"a": {"b"}, "b": {"a"}, "c": {"d"}, "d": {"c"}}, [["a", "b"], ["c", "d"]]),
    ],
)
def test_the_cycle_finder_finds_circles_and_only_them(graph, expected):
    assert sorted(cycles(graph)) == expected


def test_the_graph_sees_lazy_imports_and_skips_type_checking_ones():
    tree = ast.parse(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from crm_elasticity.core.mapping import Mapping\n"
        "def f():\n    from crm_elasticity.core.engine import apply_event\n"
    )
    names = imported_names(tree, "crm_elasticity.core")
    assert "crm_elasticity.core.engine\0apply_event" in names
    assert not any(n.startswith("crm_elasticity.core.mapping") for n in names)
    graph = import_graph()
    # The loader compiles the program.
    assert "crm_elasticity.core.experiments" in graph["crm_elasticity.core.mapping"]
    assert "crm_elasticity.core.mapping" not in graph["crm_elasticity.core.experiments"]
