"""Fail on HTML sinks fed with data in the dashboard's JavaScript (run by ``make lint``).

    python tests/security/html_sinks.py [FILE_OR_DIR ...]   (default: aiotrain/dashboard/static)

An HTML sink parses its argument as markup: ``innerHTML``/``outerHTML`` assignments,
``insertAdjacentHTML``, ``document.write``/``writeln``, ``createContextualFragment``,
``DOMParser.parseFromString``, an ``srcdoc``. The dashboard shows values that training code wrote
(names, tags, configs, table cells), so none of them may reach a sink: pages are built from DOM
nodes. Only a constant without interpolation (``el.innerHTML = ""``) passes; anything else is
reported as ``file:line: sink`` and the exit status is 1.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

__all__ = ["scan"]

_SINK = re.compile(r"\.(?:inner|outer)HTML\s*\+?=(?!=)|\binsertAdjacentHTML\s*\(|\bdocument\s*\.\s*write(?:ln)?\s*\("
                   r"|\bcreateContextualFragment\s*\(|\bparseFromString\s*\(|\bsrcdoc\b")
# a sink whose whole argument is one string literal with no interpolation
_CONSTANT = re.compile(r"""\s*(?:"[^"\\$]*"|'[^'\\$]*'|`[^`\\$]*`)\s*(?:[;)]|$)""")


def scan(text: str, name: str = "<js>") -> list[str]:
    """Every sink in ``text`` fed with something other than a constant, as ``name:line: code``."""
    found = []
    for match in _SINK.finditer(text):
        rest = text[match.end():]
        if match.group().endswith("=") and _CONSTANT.match(rest):
            continue
        line = text.count("\n", 0, match.start()) + 1
        code = text.splitlines()[line - 1].strip()
        found.append(f"{name}:{line}: HTML sink fed with data: {code[:120]}")
    return found


def main(argv: list[str]) -> int:
    paths = [Path(a) for a in argv] or [Path(__file__).resolve().parents[2] / "aiotrain" / "dashboard" / "static"]
    files = [f for p in paths for f in (sorted(p.rglob("*.js")) if p.is_dir() else [p])]
    problems = [line for f in files for line in scan(f.read_text(encoding="utf-8"), str(f))]
    for line in problems:
        print(line)
    if problems:
        print(f"{len(problems)} HTML sink(s) fed with data: build DOM nodes (textContent) instead")
        return 1
    print(f"html sinks: none fed with data in {len(files)} script(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
