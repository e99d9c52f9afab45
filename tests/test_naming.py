"""The naming rule for sync/async twins (docs/architecture.md, "Naming sync and async twins"),
checked over the package's source: a bare name has one kind everywhere, ``aX`` is the coroutine
twin of a blocking ``X``, ``X_sync`` the blocking twin of a coroutine ``X``."""

from __future__ import annotations

import ast
import collections
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "aiotrain"

#: The documented exceptions: ``aiotrain.run(coro)`` starts a loop as ``asyncio.run`` does, and
#: ``Track.run(...)`` opens a Run (a context manager); neither is the coroutine verb ``run``.
#: ``Engine.run`` is the one exception to the rule (docs/architecture.md, rule 5): on an event loop
#: it returns its coroutine (captured with the caller's torch modes), from sync code it blocks and
#: returns the State, as Ignite's ``run``; so it is a plain function, neither async nor ``_sync``.
SYNC_RUNS = {"runtime/loop.py:run", "tracking/track.py:Track.run", "engine/engine.py:Engine.run"}


def _public_functions() -> dict[str, dict[str, str]]:
    """{name: {"module:Class.name": "sync" | "async"}} for public functions and methods."""
    found: dict[str, dict[str, str]] = collections.defaultdict(dict)
    for path in PACKAGE.rglob("*.py"):
        module = path.relative_to(PACKAGE).as_posix()
        tree = ast.parse(path.read_text(encoding="utf-8"))
        scopes: list[tuple[str, ast.AST]] = [("", tree)]
        while scopes:
            prefix, node = scopes.pop()
            for child in ast.iter_child_nodes(node):
                if isinstance(child, ast.ClassDef) and not child.name.startswith("_"):
                    scopes.append((f"{prefix}{child.name}.", child))
                elif isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                    if not child.name.startswith("_"):
                        kind = "async" if isinstance(child, ast.AsyncFunctionDef) else "sync"
                        found[child.name][f"{module}:{prefix}{child.name}"] = kind
    return found


def test_a_bare_name_has_one_kind_everywhere():
    found = _public_functions()
    mixed = {name: places for name, places in found.items() if len(set(places.values())) > 1}
    assert set(mixed) <= {"run"}, mixed
    sync_runs = {place for place, kind in found["run"].items() if kind == "sync"}
    assert sync_runs == SYNC_RUNS


def test_twins_follow_the_rule():
    found = _public_functions()
    kinds = {name: set(places.values()) for name, places in found.items()}
    pairs = 0
    for name, kind in kinds.items():
        if name.startswith("a") and name[1:] in kinds:
            assert kind == {"async"} and "sync" in kinds[name[1:]], (name, found[name])
            pairs += 1
        if name.endswith("_sync"):
            assert kind == {"sync"} and "async" in kinds.get(name[:-5], set()), (name, found[name])
            pairs += 1
    assert pairs >= 8  # run_sync, validate_all_sync, aget, aflush, afinish, afire_event, aagent...
