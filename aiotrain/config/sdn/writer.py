"""Writing SDN: values inline, dicts as blocks, lists of records as named tables; no recursion."""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from typing import IO, Any

from ...files import atomic_write
from ..errors import SdnError
from .lexer import _FLOAT, _IDENT_FULL, _INT, _KEYWORDS, _NUM_START, _SURROGATE, MAX_DEPTH

_NEEDS_QUOTES = re.compile(r"[,#\[\]{}()|:\x00-\x1f\x7f\ud800-\udfff]")
_QUOTE_TABLE = {i: f"\\u{i:04x}" for i in [*range(0x20), 0x7F]}
_QUOTE_TABLE.update({ord('"'): '\\"', ord("\\"): "\\\\", ord("\n"): "\\n", ord("\t"): "\\t",
                     ord("\r"): "\\r"})
_END = object()


def _quote(s: str) -> str:
    if _SURROGATE.search(s):
        raise SdnError(f"cannot write a string holding a lone surrogate: {s[:40]!r}")
    return '"' + s.translate(_QUOTE_TABLE) + '"'


def _string_text(s: str) -> str:
    if (not s or s[0] in ' \t"' or s[-1] in " \t" or s.startswith("table{")
            or _NEEDS_QUOTES.search(s) or s in _KEYWORDS
            or (s[0] in _NUM_START and (_INT.match(s) or _FLOAT.match(s)))):
        return _quote(s)
    return s


def _key_text(key: object) -> str:
    if not isinstance(key, str):
        raise SdnError(f"cannot write a {type(key).__name__} key ({key!r}): keys must be strings")
    return key if _IDENT_FULL.match(key) else _quote(key)


def _scalar_text(v: object) -> str:
    if isinstance(v, str):
        return _string_text(v)
    if v is None:
        return "null"
    if v is True:
        return "true"
    if v is False:
        return "false"
    if isinstance(v, int):
        return int.__repr__(v)
    if isinstance(v, float):
        if not math.isfinite(v):
            raise SdnError(f"cannot write the non-finite float {v!r}")
        return float.__repr__(v)
    raise SdnError(f"cannot write a value of type {type(v).__name__}: {v!r:.60}")


class _Inline:
    """An inline ``{`` or ``[`` being written: its entries (``(key, value)`` pairs of a dict),
    whether it is a dict, and whether no entry was written yet."""

    __slots__ = ("first", "is_dict", "it")

    def __init__(self, it: Iterator[Any], is_dict: bool) -> None:
        self.it, self.is_dict, self.first = it, is_dict, True


def value_text(value: object, depth: int = 0) -> str:
    """One value written inline (``[1, {a: x}]``, ``"quoted"``, ``3.5``); no recursion."""
    out: list[str] = []
    stack: list[_Inline] = []
    cur = value
    while True:
        if isinstance(cur, dict) and cur:
            if depth + len(stack) >= MAX_DEPTH:
                raise SdnError(f"cannot write nesting deeper than {MAX_DEPTH} levels")
            out.append("{")
            stack.append(_Inline(iter(cur.items()), True))
        elif isinstance(cur, list | tuple) and cur:
            if depth + len(stack) >= MAX_DEPTH:
                raise SdnError(f"cannot write nesting deeper than {MAX_DEPTH} levels")
            out.append("[")
            stack.append(_Inline(iter(cur), False))
        elif isinstance(cur, dict):
            out.append("{}")
        elif isinstance(cur, list | tuple):
            out.append("[]")
        else:
            out.append(_scalar_text(cur))
        while stack:
            frame = stack[-1]
            nxt: Any = next(frame.it, _END)  # a (key, value) pair of a dict, an item of a list
            if nxt is _END:
                out.append("}" if frame.is_dict else "]")
                stack.pop()
                continue
            if not frame.first:
                out.append(", ")
            frame.first = False
            if frame.is_dict:
                out.append(_key_text(nxt[0]) + ": ")
                cur = nxt[1]
            else:
                cur = nxt
            break
        else:
            return "".join(out)


def _table_fields(items: Sequence[object]) -> list[str] | None:
    """The fields when ``items`` reads best as a named table: 2+ same-keyed, non-empty dicts."""
    if len(items) < 2 or not isinstance(items[0], dict) or not items[0]:
        return None
    fields = list(items[0])
    if not all(isinstance(f, str) and _IDENT_FULL.match(f) for f in fields):
        return None
    keys = set(fields)
    for row in items:
        if not isinstance(row, dict) or len(row) != len(fields) or row.keys() != keys:
            return None
    return fields


def _entry_lines(mapping: Mapping[str, object], indent: int, out: list[str], depth: int = 0) -> None:
    """Append the block lines of ``mapping``'s entries at ``indent`` spaces; no recursion."""
    stack: list[tuple[Iterator[tuple[object, Any]], str]] = [(iter(mapping.items()), " " * indent)]
    while stack:
        it, pad = stack[-1]
        item = next(it, None)
        if item is None:
            stack.pop()
            continue
        key, v = _key_text(item[0]), item[1]
        level = depth + len(stack)
        if isinstance(v, dict) and v:
            if level >= MAX_DEPTH:
                raise SdnError(f"cannot write nesting deeper than {MAX_DEPTH} levels")
            out.append(f"{pad}{key}:")
            stack.append((iter(v.items()), pad + "    "))
        elif isinstance(v, list | tuple):
            fields = _table_fields(v)
            if fields is None:
                out.append(f"{pad}{key} = {value_text(v, level)}")
                continue
            out.append(f"{pad}{key} |{', '.join(fields)}|")
            row_pad = pad + "    "
            for row in v:
                out.append(row_pad + ", ".join(value_text(row[f], level + 1) for f in fields))
        elif isinstance(v, dict):
            out.append(f"{pad}{key} = {{}}")
        else:
            out.append(f"{pad}{key}: {_scalar_text(v)}")


def dumps(obj: Mapping[str, object], *, extra_depth: int = 0) -> str:
    """Write a dict as SDN text: blocks for dicts, inline lists, named tables for records.

    ``loads(dumps(x)) == x`` for JSON-like values (floats exactly, ints stay ints). Non-finite
    floats, non-string keys and anything that is not a dict at the top raise SdnError.
    """
    if not isinstance(obj, dict):
        raise SdnError(f"the top level of an SDN document must be a dict, not {type(obj).__name__}")
    out: list[str] = []
    _entry_lines(obj, 0, out, -extra_depth)
    return "\n".join(out) + "\n" if out else ""


def write_atomic(path: str | os.PathLike[str], text: str) -> None:
    """Replace ``path`` with ``text`` (UTF-8) so that a crash leaves the old or the new file."""
    atomic_write(path, text)


def dump(obj: Mapping[str, object], target: str | os.PathLike[str] | IO[str]) -> None:
    """Write ``obj`` as SDN to an open text file, or atomically to a path."""
    text = dumps(obj)
    if isinstance(target, str | os.PathLike):
        write_atomic(target, text)
    else:
        target.write(text)
