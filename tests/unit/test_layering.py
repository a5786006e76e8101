"""The package's import graph, read with ``ast`` from the sources (type-only imports
included: a circle drawn for the type checker is still a circle in the design).

No import circles; nothing imports the composition root ``gateway.app``; pure modules
import no I/O library; only the upstream module and the simulator import aiohttp."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "gateway"

# Modules that may import gateway.app: the entry points that start it.
APP_IMPORTERS = {"gateway.__main__", "gateway.serve", "gateway.cli"}

IO_LIBRARIES = ("aiohttp", "valkey", "blacksheep", "granian", "asyncio", "subprocess", "socket")
PURE = (
    "gateway.translate",
    "gateway.usage",
    "gateway.catalog",
    "gateway.billing",
    "gateway.errors",
    "gateway.wire",
    "gateway.sse",
    "gateway.keyspace",
    "gateway.netaddr",
    "gateway.clock",
    "gateway.pool_choice",
    "gateway.pool_state",
)
AIOHTTP_IMPORTERS = {"gateway.upstream", "gateway.simulator"}
# Known exceptions, each to be removed when its module stops needing aiohttp:
AIOHTTP_PENDING = {
    # Webhook delivery: a second outbound HTTP client (its own timeouts, its own session)
    # that the upstream module does not offer yet.
    "gateway.alerts",
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, name: str) -> set[str]:
    """Every module ``path`` names in an import statement, relative ones resolved."""
    tree = ast.parse(path.read_text("utf-8"), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            # ``from gateway import errors`` imports the module gateway.errors.
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {
        name: {m for m in imports_of(path, name) if m in modules and m != name}
        for name, path in modules.items()
    }


def all_imports() -> dict[str, set[str]]:
    return {module_name(p): imports_of(p, module_name(p)) for p in PACKAGE.rglob("*.py")}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(edges.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def is_under(module: str, prefixes: tuple[str, ...] | set[str]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def test_the_graph_reads_the_package() -> None:
    edges = graph()
    assert "gateway.app" in edges and "gateway.errors" in edges["gateway.wire"]


def test_there_are_no_import_circles() -> None:
    assert cycles(graph()) == []


def test_nothing_below_the_app_imports_it() -> None:
    edges = graph()
    upward = sorted(n for n, deps in edges.items() if "gateway.app" in deps)
    assert [n for n in upward if n not in APP_IMPORTERS] == []


@pytest.mark.parametrize("library", IO_LIBRARIES)
def test_pure_modules_import_no_io_library(library: str) -> None:
    offenders = sorted(
        name
        for name, deps in all_imports().items()
        if is_under(name, PURE) and any(is_under(d, (library,)) for d in deps)
    )
    assert offenders == []


def test_only_the_upstream_module_and_the_simulator_import_aiohttp() -> None:
    offenders = sorted(
        name
        for name, deps in all_imports().items()
        if any(is_under(d, ("aiohttp",)) for d in deps) and name not in AIOHTTP_IMPORTERS
    )
    assert [n for n in offenders if n not in AIOHTTP_PENDING] == []


def test_the_aiohttp_exceptions_are_still_needed() -> None:
    """An entry that no longer imports aiohttp must leave the list (it only shrinks)."""
    importers = {
        n for n, deps in all_imports().items() if any(is_under(d, ("aiohttp",)) for d in deps)
    }
    assert AIOHTTP_PENDING <= importers
