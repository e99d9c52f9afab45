"""SDN's block parser: the indented structure of a text, line by line, and the reading API.

A block structure is a stack of frames (one per indented block); the values on each line are read
by :mod:`.lexer`. Nesting deeper than :data:`MAX_DEPTH` (blocks and inline values together) and
texts over :data:`MAX_FILE_BYTES` are SdnErrors.
"""

from __future__ import annotations

import os
from typing import IO, Any

from ..errors import SdnError
from .lexer import (
    _IDENT,
    MAX_DEPTH,
    Value,
    _at_end,
    _bare_to_eol,
    _column_types,
    _expect_end,
    _fail,
    _fields,
    _inline,
    _inline_typed_rows,
    _quoted,
    _row,
    _scalar,
    _skip_ws,
    _typed_cell,
)

Key = str | int
"""One step of a path into a config tree: a dict's key, or a list's index."""
KeyPath = tuple[Key, ...]
"""Where a value sits in a tree, from its root: ``("model", "layers", 0)``."""
Entry = tuple[int, int, tuple[int, int] | None]
"""Where a dict entry sits in a text: its line index, its indentation, and the span of its
inline value on that line (None for a block)."""


MAX_FILE_BYTES = 64 << 20
"""Largest SDN text (in UTF-8 bytes) that ``load`` and ``loads`` read: a config, not a data set."""


class _Frame:
    """One indented block: a dict, an array, or the rows of a named or typed table."""

    __slots__ = ("columns", "container", "indent", "kind", "path")

    def __init__(self, kind: str, container: Any, indent: int, path: tuple[str, ...],
                 columns: list[str] | None = None) -> None:
        self.kind, self.container, self.indent, self.path = kind, container, indent, path
        self.columns: list[str] = columns or []  # the fields or types of a table frame


def _key_at(s: str, p: int, ln: int) -> tuple[str, str, int] | None:
    """``(key, separator, index after it)`` when ``s[p:]`` starts a key line, else None."""
    c = s[p]
    if c == '"':
        key, end = _quoted(s, p, ln)
    else:
        m = _IDENT.match(s, p)
        if m is None:
            return None
        key, end = m.group(), m.end()
    if end < len(s) and s[end] == ":":
        if end + 1 == len(s) or s[end + 1] in " \t":
            return key, ":", end + 1
        return None
    q = _skip_ws(s, end)
    if q < len(s) and s[q] in "=|":
        return key, s[q], q + 1
    return None


def _split_lines(text: str | bytes) -> list[str]:
    """Decode, drop a BOM, reject a lone CR, and split into lines without their ends."""
    if isinstance(text, bytes | bytearray | memoryview):
        raw = bytes(text)
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            ln = raw.count(b"\n", 0, exc.start) + 1
            col = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
            raise _fail(ln, col, "invalid UTF-8") from None
    elif not isinstance(text, str):
        raise TypeError(f"SDN text must be str or bytes, not {type(text).__name__}")
    if text.startswith("\ufeff"):
        text = text[1:]
    if "\r" in text:
        at = text.find("\r")
        while at >= 0:
            if not text.startswith("\n", at + 1):
                ln = text.count("\n", 0, at) + 1
                raise _fail(ln, at - (text.rfind("\n", 0, at) + 1) + 1,
                            "a carriage return must be followed by a newline")
            at = text.find("\r", at + 2)
        text = text.replace("\r\n", "\n")
    return text.split("\n")


class _Parser:
    """Builds the value of an SDN text line by line; optionally records entry positions."""

    def __init__(self, record: dict[KeyPath, Entry] | None = None, extra_depth: int = 0) -> None:
        self.extra_depth = extra_depth  # levels allowed past MAX_DEPTH (see ``loads``)
        self.root: dict[str, Any] = {}
        self.stack = [_Frame("dict", self.root, 0, ())]
        self.pending: _Frame | None = None  # a block opened by the previous key line
        self.pending_slot: tuple[dict[str, Any], str] | None = None
        self.record = record

    def depth(self) -> int:
        """The nesting of the current block as counted against MAX_DEPTH."""
        return len(self.stack) - self.extra_depth

    def parse(self, lines: list[str]) -> dict[str, Any]:
        for idx, raw in enumerate(lines):
            body = raw.lstrip(" ")
            if not body:
                continue
            first = body[0]
            if first == "#":
                continue
            ind = len(raw) - len(body)
            if first == "\t":
                rest = body.lstrip(" \t")
                if not rest or rest[0] == "#":
                    continue
                raise _fail(idx + 1, ind + 1, "tab in indentation: indent with spaces only")
            s = raw.rstrip(" \t")
            self._line(s, ind, idx)
        return self.root

    def _line(self, s: str, ind: int, idx: int) -> None:
        ln = idx + 1
        stack = self.stack
        top = stack[-1]
        if self.pending is not None:
            frame, self.pending = self.pending, None
            if ind > top.indent:
                self._open(frame, s, ind, ln)
                top = frame
        if ind != top.indent:
            if ind > top.indent:
                raise _fail(ln, ind + 1, "unexpected indentation")
            while ind < top.indent:
                stack.pop()
                top = stack[-1]
            if ind != top.indent:
                raise _fail(ln, ind + 1, "the dedent does not match any enclosing block")
        kind = top.kind
        if kind == "dict":
            self._dict_line(top, s, ind, idx)
        elif kind == "array":
            if _key_at(s, ind, ln) is not None:
                raise _fail(ln, ind + 1, "a key line inside an array block: a block holds "
                            "either keys or values, not both")
            top.container.append(self._line_value(s, ind, ln, self.depth())[0])
        elif kind == "ntable":
            cells, _ = _row(s, ind, ln, self.depth(), len(top.columns))
            top.container.append({f: c[0] for f, c in zip(top.columns, cells, strict=True)})
        else:
            cells, _ = _row(s, ind, ln, self.depth(), len(top.columns))
            top.container.append([_typed_cell(c, t, ln)
                                  for c, t in zip(cells, top.columns, strict=True)])

    def _open(self, frame: _Frame, s: str, ind: int, ln: int) -> None:
        """The first line of a block: fixes its indentation and, for ``key:``, its kind."""
        if self.depth() >= MAX_DEPTH:
            raise _fail(ln, ind + 1, f"nesting deeper than {MAX_DEPTH} levels")
        frame.indent = ind
        if frame.kind == "block":
            is_dict = _key_at(s, ind, ln) is not None
            frame.kind, frame.container = ("dict", {}) if is_dict else ("array", [])
            assert self.pending_slot is not None  # set with pending by the key line
            parent, key = self.pending_slot
            parent[key] = frame.container
        self.stack.append(frame)

    def _line_value(self, s: str, pos: int, ln: int, depth: int) -> tuple[Value, int]:
        """A value that fills the rest of the line; returns it and where its text ends."""
        c = s[pos]
        if c == "{" or c == "[":
            value, end = _inline(s, pos, ln, depth)
        elif c == '"':
            value, end = _quoted(s, pos, ln)
        else:
            text, end = _bare_to_eol(s, pos)
            return _scalar(text, ln, pos + 1), end
        _expect_end(s, end, ln)
        return value, end

    def _dict_line(self, top: _Frame, s: str, ind: int, idx: int) -> None:
        ln = idx + 1
        found = _key_at(s, ind, ln)
        if found is None:
            raise _fail(ln, ind + 1, "expected 'key: value', 'key = value' or 'key |fields|'")
        key, sep, pos = found
        d = top.container
        if key in d:
            raise _fail(ln, ind + 1, f"duplicate key {key!r}")
        depth = self.depth()
        pos = _skip_ws(s, pos)
        span = None
        if sep == "|":
            columns, pos = _fields(s, pos, ln)
            pos = _skip_ws(s, pos)
            if _at_end(s, pos):
                d[key] = self._expect_block("ntable", [], top, key, columns)
            else:
                cells, _ = _row(s, pos, ln, depth, len(columns))
                d[key] = [{f: c[0] for f, c in zip(columns, cells, strict=True)}]
        elif s.startswith("table{", pos):
            types, pos = _column_types(s, pos, ln)
            pos = _skip_ws(s, pos)
            if _at_end(s, pos):
                d[key] = self._expect_block("ttable", [], top, key, types)
            elif s[pos] == "=":
                d[key] = _inline_typed_rows(s, _skip_ws(s, pos + 1), ln, depth, types)
            else:
                raise _fail(ln, pos + 1, "expected '= [(...), ...]' or rows on the next lines "
                            "after 'table{...}'")
        elif _at_end(s, pos):
            if sep == "=":
                raise _fail(ln, pos + 1, "expected a value after '='")
            d[key] = None
            self._expect_block("block", None, top, key, None)
            self.pending_slot = (d, key)
        else:
            d[key], end = self._line_value(s, pos, ln, depth)
            span = (pos, end)
        if self.record is not None:
            self.record[(*top.path, key)] = (idx, ind, span)

    def _expect_block(self, kind: str, container: list[Value] | None, top: _Frame, key: str,
                      columns: list[str] | None) -> list[Value] | None:
        self.pending = _Frame(kind, container, -1, (*top.path, key), columns)
        return container


# --------------------------------------------------------------------------- reading API

def loads(text: str | bytes, *, extra_depth: int = 0) -> dict[str, Any]:
    """Parse SDN text (str or UTF-8 bytes) into plain dicts, lists and scalars.

    Time and memory are linear in the text's length; texts over :data:`MAX_FILE_BYTES` and
    nesting deeper than :data:`MAX_DEPTH` are SdnErrors. ``extra_depth`` allows that many more
    levels, for documents that wrap a config (a run's metadata holds it one level down).
    """
    size = len(text) if isinstance(text, bytes | bytearray | memoryview | str) else 0
    if size > MAX_FILE_BYTES:  # a str holds at least one byte per character
        raise SdnError(f"the text is larger than {MAX_FILE_BYTES} bytes, the limit for an SDN "
                       "config (keep data in data files)", line=1, col=1)
    return _Parser(extra_depth=extra_depth).parse(_split_lines(text))


def load(source: str | os.PathLike[str] | IO[str] | IO[bytes]) -> dict[str, Any]:
    """Read an SDN file (a path or an open file); errors carry the file's name in ``path``."""
    if not isinstance(source, str | os.PathLike):
        return loads(source.read(MAX_FILE_BYTES + 1))
    try:
        with open(source, "rb") as f:  # reads at most one byte past the limit
            data = f.read(MAX_FILE_BYTES + 1)
        return loads(data)
    except SdnError as exc:
        exc.path = os.fspath(source)
        raise


def parse_value(text: str) -> Value:
    """Read one SDN value as written after ``key =`` (a dotlist or ``sdn set`` argument)."""
    if "\n" in text or "\r" in text:
        raise _fail(1, 1, "a value must fit on one line")
    s = text.strip(" \t")
    if not s:
        raise _fail(1, 1, "expected a value")
    if s.startswith("table{"):
        types, pos = _column_types(s, 0, 1)
        pos = _skip_ws(s, pos)
        if pos >= len(s) or s[pos] != "=":
            raise _fail(1, pos + 1, "expected '=' after 'table{...}'")
        return _inline_typed_rows(s, _skip_ws(s, pos + 1), 1, 0, types)
    return _Parser()._line_value(s, 0, 1, 0)[0]
