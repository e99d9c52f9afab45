"""Filters, sort keys and columns over run rows: one syntax for ``runs ls`` and the dashboard.

A key names a run field (``id``, ``name``, ``project``, ``host``, ``status``, ``tags``,
``notes``, ``created``, ``duration``), a config value (``config.train.lr``, dotted) or a summary metric
(``summary.val/acc``, or just ``val/acc`` when it is not a field name). A filter is
``KEY OP VALUE`` with OP one of ``=  !=  <  <=  >  >=  ~`` (``~``: contains, case-insensitive);
numbers compare as numbers, anything else as text; on ``tags``, ``=`` and ``~`` test membership
(``tag`` is accepted for ``tags``). A metric range is two filters: ``val/acc>=0.9 val/acc<0.95``.
A row without the key never passes a filter and sorts last.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from .index import RunRow

__all__ = ["Filter", "apply", "column_value", "parse_filter", "parse_sort", "search"]

FIELDS = ("id", "name", "project", "host", "status", "tags", "notes", "created", "duration")
_FILTER = re.compile(r"^\s*(?P<key>[^=!<>~]+?)\s*(?P<op>>=|<=|!=|=|<|>|~)\s*(?P<value>.*?)\s*$")
_OPS: dict[str, Callable[[Any, Any], bool]] = {
    "=": operator.eq, "!=": operator.ne, "<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge,
}


def column_value(row: RunRow, key: str) -> object:
    """The value ``key`` names in ``row`` (None when the run has none)."""
    if key == "tag":
        key = "tags"
    if key in FIELDS:
        return row.fields().get(key)  # (every one of FIELDS is there)
    if key.startswith("config."):
        return row.config.get(key[len("config."):])
    if key.startswith("summary."):
        key = key[len("summary."):]
    return row.summary.get(key)


@dataclass(frozen=True)
class Filter:
    """One parsed ``KEY OP VALUE`` condition."""

    key: str
    op: str
    value: str

    def __call__(self, row: RunRow) -> bool:
        actual = column_value(row, self.key)
        if actual is None:
            return False
        if isinstance(actual, list):  # tags (or a list-valued config entry)
            texts = [str(v) for v in actual]
            if self.op == "=":
                return self.value in texts
            if self.op == "!=":
                return self.value not in texts
            if self.op == "~":
                return any(self.value.lower() in t.lower() for t in texts)
            return False
        if self.op == "~":
            return self.value.lower() in _text(actual).lower()
        number = _number(self.value)
        if number is not None and isinstance(actual, int | float) and not isinstance(actual, bool):
            return _OPS[self.op](float(actual), number)
        if self.op in ("=", "!="):
            return _OPS[self.op](_text(actual), self.value)
        raise ValueError(f"filter {self}: {self.op} needs a number, and {self.key} is {actual!r}")

    def __str__(self) -> str:
        return f"{self.key}{self.op}{self.value}"


def parse_filter(text: str) -> Filter:
    """``"config.lr>=0.01"`` -> Filter; ValueError with the accepted shape otherwise."""
    match = _FILTER.match(text)
    if match is None or not match["key"]:
        raise ValueError(f"bad filter {text!r}: write KEY OP VALUE with OP one of = != < <= > >= ~ "
                         "(e.g. status=finished, config.lr<0.1, val/acc>=0.9, tag=baseline)")
    return Filter(match["key"], match["op"], match["value"])


def parse_sort(text: str) -> tuple[str, bool]:
    """``"-val/acc"`` -> ("val/acc", descending=True)."""
    key = text.strip()
    descending = key.startswith("-")
    key = key.lstrip("-+").strip()
    if not key:
        raise ValueError(f"bad sort key {text!r}: write KEY (ascending) or -KEY (descending)")
    return key, descending


def search(rows: Iterable[RunRow], text: str) -> list[RunRow]:
    """Rows whose id, name, project, host, tags or notes contain ``text`` (case-insensitive)."""
    needle = text.lower()
    out = []
    for row in rows:
        f = row.fields()
        hay = " ".join([f["id"], f["name"], f["project"], f["host"] or "", f["notes"], *f["tags"]]).lower()
        if needle in hay:
            out.append(row)
    return out


def apply(rows: Iterable[RunRow], filters: Iterable[str] = (), sort: str | None = None,
          query: str = "") -> list[RunRow]:
    """Rows that pass every filter and contain ``query``, sorted by ``sort`` (stable)."""
    parsed = [parse_filter(f) for f in filters]
    out = [r for r in (search(rows, query) if query else rows) if all(f(r) for f in parsed)]
    if sort:
        key, descending = parse_sort(sort)
        present = [r for r in out if column_value(r, key) is not None]
        absent = [r for r in out if column_value(r, key) is None]
        present.sort(key=lambda r: _sort_key(column_value(r, key)), reverse=descending)
        out = present + absent
    return out


def _sort_key(value: object) -> tuple[int, float | str]:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return (0, float(value) if value == value else float("-inf"))
    return (1, _text(value))


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _text(value: object) -> str:
    if isinstance(value, list):
        return ",".join(map(str, value))
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)
