"""No import cycle in ``models/`` or ``streams/``: the composition root imports the agents, the
agents import what they use (``streams.runtime``), never the root (STYLE.md, The edges).

Every import counts, also those inside functions: a cycle hidden in a function body is still a
cycle, one that only bites at run time.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("models", "streams")


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path, known: set[str], root: Path = ROOT) -> set[str]:
    """The modules of ours that ``path`` imports (``from a.b import c`` counts ``a.b.c`` when
    that is a module, else ``a.b``)."""
    name = module_name(path, root)
    package = name.rsplit(".", 1)[0] if path.name != "__init__.py" else name
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                found.add(candidate if candidate in known else base)
    return {name for name in found if name in known}


def graph(root: Path = ROOT) -> dict[str, set[str]]:
    files = [p for package in PACKAGES for p in sorted((root / package).rglob("*.py"))]
    known = {module_name(p, root) for p in files}
    return {
        module_name(p, root): imports_of(p, known, root) - {module_name(p, root)} for p in files
    }


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
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
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def test_there_is_no_import_cycle_in_models_or_streams() -> None:
    edges = graph()
    assert "streams.app" in edges and "streams.agents.ledger" in edges  # we look where it counts
    assert cycles(edges) == []


def test_the_agents_do_not_import_the_composition_root() -> None:
    edges = graph()
    for name, imported in edges.items():
        if name.startswith("streams.agents"):
            assert "streams.app" not in imported, name


def test_the_check_finds_a_cycle_even_inside_a_function(tmp_path: Path) -> None:
    (tmp_path / "streams").mkdir()
    (tmp_path / "models").mkdir()
    (tmp_path / "streams" / "__init__.py").write_text("")
    (tmp_path / "models" / "__init__.py").write_text("")
    (tmp_path / "streams" / "a.py").write_text("from streams.b import thing\n")
    (tmp_path / "streams" / "b.py").write_text("def f():\n    from streams import a\n")
    assert cycles(graph(tmp_path)) == [["streams.a", "streams.b"]]
    (tmp_path / "streams" / "b.py").write_text("thing = 1\n")
    assert cycles(graph(tmp_path)) == []
