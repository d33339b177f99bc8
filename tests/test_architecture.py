"""The package's shape: no module imports itself through others (a file-level import
cycle), with imports under TYPE_CHECKING counted as annotations. The layers between
packages are import-linter's contract in pyproject.toml (``lint-imports``, run by make
lint); this guards what a layers contract cannot see, cycles inside one package."""

from __future__ import annotations

import pytest

grimp = pytest.importorskip("grimp", reason="grimp comes with import-linter (dev extra)")


def _cycles(graph: object, modules: set[str]) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for root in sorted(modules):
        if root in index:
            continue
        work = [(root, iter(sorted(graph.find_modules_directly_imported_by(root) & modules)))]  # type: ignore[attr-defined]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    imported = graph.find_modules_directly_imported_by(child) & modules  # type: ignore[attr-defined]
                    work.append((child, iter(sorted(imported))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                group = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    group.append(member)
                    if member == node:
                        break
                if len(group) > 1:
                    found.append(sorted(group))
    return found


def test_no_module_imports_itself_through_others() -> None:
    graph = grimp.build_graph("traitlens", exclude_type_checking_imports=True)
    modules = set(graph.modules)
    assert "traitlens.capture.capture" in modules  # the graph is the real package
    assert _cycles(graph, modules) == []


def test_the_cycle_finder_finds_a_planted_cycle() -> None:
    """The check above can fail: a graph with a three-module loop is reported."""
    graph = grimp.ImportGraph()
    for name in ("pkg", "pkg.a", "pkg.b", "pkg.c", "pkg.d"):
        graph.add_module(name)
    for importer, imported in (("pkg.a", "pkg.b"), ("pkg.b", "pkg.c"), ("pkg.c", "pkg.a")):
        graph.add_import(importer=importer, imported=imported)
    graph.add_import(importer="pkg.d", imported="pkg.a")
    assert _cycles(graph, set(graph.modules)) == [["pkg.a", "pkg.b", "pkg.c"]]
