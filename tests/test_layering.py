"""Imports point one way (issue 14: entry points -> verbs -> spec), with no cycles - read from the source,
every import counted, those inside functions too (a lazy import is still a dependency). Root-free."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src"


def _modules() -> dict[str, Path]:
    out = {}
    for path in (SRC / "pycni").rglob("*.py"):
        name = ".".join(path.relative_to(SRC).with_suffix("").parts)
        out[name.removesuffix(".__init__")] = path
    return out


def _imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            for alias in node.names:  # `from . import x` names a module; `from .m import f` names m
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base)
    return {target for target in found if target in known and target != name}


def _graph() -> dict[str, set[str]]:
    known = _modules()
    return {name: _imports(name, path, known) for name, path in known.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
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
            if len(component) > 1:
                out.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles():
    assert _cycles(_graph()) == []


def test_the_cycle_finder_finds_one():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_the_daemon_does_not_import_the_exec_entry_point():
    """daemon/server.py imported cli and cli imported daemon.client: both now call pycni.runner."""
    graph = _graph()
    assert "pycni.cli" not in graph["pycni.daemon.server"] and "pycni.runner" in graph["pycni.daemon.server"]
    assert "pycni.runner" in graph["pycni.cli"]
    assert not {m for m in graph["pycni.runner"] if m.startswith("pycni.daemon")}


def test_spec_depends_on_nothing_above_it():
    graph = _graph()
    above = ("pycni.bridge", "pycni.ipam", "pycni.daemon", "pycni.agent", "pycni.inspect", "pycni.cli",
             "pycni.runner", "pycni.context")
    for name, targets in graph.items():
        if name.startswith("pycni.spec"):
            assert not {t for t in targets if t.startswith(above)}, (name, targets)
