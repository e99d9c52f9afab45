"""docs/architecture.md's module map names every part of the package, and nothing that is gone.

A row of the map is keyed by one or more paths under ``aiotrain/`` (``events.py``, ``engine/``,
``data/remote/``). A subpackage or module is on the map when a row is keyed by it, or when the
row of the nearest package above it that has one names it in backticks (``node.py``, or
``sdn/lexer.py`` from ``config/``; a subpackage as ``sdn/``). A package's ``__init__.py`` is its
row. The other way round, every key and every module or folder a row names must exist, so a
rename or a move cannot leave the map behind (``runtime.py`` and a ``runtime/`` package are
both fine: the map must name whichever is there).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "aiotrain"
MAP = ROOT / "docs" / "architecture.md"
_TICKED = re.compile(r"`([^`]+)`")


def map_rows(text: str) -> dict[str, str]:
    """``{key: row text}`` of the module map table: each key a path relative to ``aiotrain/``
    (a package ends in ``/``), the text the row's second column."""
    section = text.split("## Module map", 1)[1].split("\n## ", 1)[0]
    rows: dict[str, str] = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 2 or not line.lstrip().startswith("|") or set(cells[0]) <= {"-"}:
            continue
        for key in _TICKED.findall(cells[0]):
            rows[key.removeprefix("aiotrain/")] = cells[1]
    rows.pop("module", None)
    return rows


def package_parts(root: Path) -> list[str]:
    """Every subpackage (``engine/``) and module (``engine/driver.py``) under ``root``,
    relative to it; ``__init__.py`` files and ``__pycache__`` left out."""
    parts = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        if "__pycache__" in rel:
            continue
        if path.name == "__init__.py":
            if path.parent != root:
                parts.append(rel.removesuffix("__init__.py"))
        else:
            parts.append(rel)
    return parts


def _parents(part: str) -> list[str]:
    """The packages above ``part``, nearest first (``config/sdn/lexer.py`` -> ``config/sdn/``,
    ``config/``)."""
    pieces = part.rstrip("/").split("/")[:-1]
    return ["/".join(pieces[:i]) + "/" for i in range(len(pieces), 0, -1)]


def missing_from(rows: dict[str, str], parts: list[str]) -> list[str]:
    """The parts that no row covers (see the module docstring)."""
    missing = []
    for part in parts:
        if part in rows:
            continue
        owner = next((p for p in _parents(part) if p in rows), None)
        named = set(_TICKED.findall(rows[owner])) if owner else set()
        rest = part[len(owner):] if owner else part
        name = part.rstrip("/").rsplit("/", 1)[-1] + ("/" if part.endswith("/") else "")
        if not named & {rest, name}:
            missing.append(part)
    return missing


def stale_in(rows: dict[str, str], root: Path) -> list[str]:
    """What the map names that does not exist: a key, or a ``*.py`` / ``folder/`` a package's
    row names that is neither under that package nor a path under ``root``."""
    stale = [key for key in rows if not (root / key).exists() and key != "__init__.py"]
    for key, text in rows.items():
        if not key.endswith("/") or not (root / key).is_dir():
            continue
        under = {p.relative_to(root / key).as_posix() + ("/" if p.is_dir() else "")
                 for p in (root / key).rglob("*") if "__pycache__" not in p.parts}
        names = under | {u.rstrip("/").rsplit("/", 1)[-1] + ("/" if u.endswith("/") else "")
                         for u in under}
        for word in _TICKED.findall(text):
            if re.fullmatch(r"[\w/]+\.py|[\w/]+/", word) and word not in names \
                    and not (root / word).exists():  # another package named by its path
                stale.append(f"{key}: {word}")
    return stale


def test_every_module_and_subpackage_is_on_the_map():
    missing = missing_from(map_rows(MAP.read_text()), package_parts(PACKAGE))
    assert not missing, ("docs/architecture.md's module map does not name: " + ", ".join(missing)
                         + " (add a row, or name it in its package's row)")


def test_the_map_names_nothing_that_is_gone():
    stale = stale_in(map_rows(MAP.read_text()), PACKAGE)
    assert not stale, "docs/architecture.md's module map names what does not exist: " + ", ".join(stale)


_TOY_MAP = """
## Module map

| module | holds |
|---|---|
| `aiotrain/__init__.py` | the names |
| `a.py`, `b/` | a, and b with `x.py` and `c/` (`y.py`) |

## Next
"""


def _toy(tmp_path: Path, files: list[str]) -> Path:
    for f in files:
        (tmp_path / f).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / f).write_text("")
    return tmp_path


@pytest.mark.parametrize("extra, missing", [
    ([], []),
    (["z.py"], ["z.py"]),                      # a new top-level module needs a row
    (["b/new.py"], ["b/new.py"]),              # a new module in a package needs its row's word
    (["b/d/__init__.py"], ["b/d/"]),           # and so does a new subpackage
    (["b/c/z.py"], ["b/c/z.py"]),
])
def test_the_check_finds_what_is_not_on_a_map(tmp_path, extra, missing):
    root = _toy(tmp_path, ["__init__.py", "a.py", "b/__init__.py", "b/x.py", "b/c/__init__.py",
                           "b/c/y.py", *extra])
    rows = map_rows(_TOY_MAP)
    assert missing_from(rows, package_parts(root)) == missing
    assert stale_in(rows, root) == []


def test_the_check_finds_what_a_map_names_that_is_gone(tmp_path):
    root = _toy(tmp_path, ["__init__.py", "b/__init__.py", "b/c/__init__.py", "b/c/y.py"])
    assert stale_in(map_rows(_TOY_MAP), root) == ["a.py", "b/: x.py"]
