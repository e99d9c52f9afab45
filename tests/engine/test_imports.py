"""The engine package's modules import each other without a cycle (type-only imports count too),
and the parts under the facade never import it: the driver and the emitter see the Engine only
through the EngineView protocol."""

from __future__ import annotations

import ast
from pathlib import Path

ENGINE = Path(__file__).resolve().parents[2] / "aiotrain" / "engine"


def _imports(path: Path) -> set[str]:
    """The aiotrain.engine modules ``path`` imports, anywhere in it (TYPE_CHECKING blocks and
    function bodies included), as module names relative to the package (``driver``)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1:  # from .x import y / from . import x
                names = [node.module] if node.module else [a.name for a in node.names]
                found.update(n.split(".")[0] for n in names)
            elif node.level == 0 and (node.module or "").startswith("aiotrain.engine."):
                found.add(node.module.split(".")[2])
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[2] for a in node.names
                         if a.name.startswith("aiotrain.engine."))
    return found


def _graph() -> dict[str, set[str]]:
    modules = {p.stem for p in ENGINE.glob("*.py")} - {"__init__"}
    return {m: _imports(ENGINE / f"{m}.py") & modules for m in modules}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path (first module repeated at the end), or None."""
    done: set[str] = set()

    def visit(node: str, path: list[str]) -> list[str] | None:
        if node in path:
            return path[path.index(node):] + [node]
        if node in done:
            return None
        for nxt in sorted(graph[node]):
            found = visit(nxt, [*path, node])
            if found:
                return found
        done.add(node)
        return None

    for start in sorted(graph):
        found = visit(start, [])
        if found:
            return found
    return None


def test_the_cycle_finder_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle_inside_the_engine_package():
    graph = _graph()
    assert {"engine", "driver", "emitter", "bridge", "feed"} <= set(graph)
    assert _cycle(graph) is None, _cycle(graph)


def test_only_the_package_init_imports_the_facade():
    graph = _graph()
    importers = sorted(m for m, deps in graph.items() if "engine" in deps)
    assert importers == [], importers
