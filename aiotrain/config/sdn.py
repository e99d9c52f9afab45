"""SDN ("Simple Data Notation"): the indentation-based config format aiotrain reads and writes.

The format is described in ``docs/sdn.md``. ``loads`` / ``load`` read, ``dumps`` / ``dump`` write,
every reading error is an :class:`SdnError` whose message starts ``line L, column C:``.

The parser is hand written and line oriented: a block structure is a stack of frames (one per
indented block), inline ``{}`` / ``[]`` values are parsed by an explicit stack as well, so no
input can recurse; nesting deeper than :data:`MAX_DEPTH` (blocks and inline values together)
is an error. :class:`SdnDocument` keeps the text and where each dict entry sits in it, so that
``sdn set`` can change one value and leave every comment and all other formatting alone.
"""

from __future__ import annotations

import json.decoder
import math
import os
import re
from collections.abc import Iterator
from typing import IO, Any

from ..files import atomic_write
from .errors import SdnError

__all__ = ["MAX_DEPTH", "MAX_FILE_BYTES", "SdnDocument", "SdnError", "dump", "dumps", "load", "loads",
           "parse_value", "split_path", "value_text", "write_atomic"]

MAX_DEPTH = 100
"""Deepest nesting (blocks and inline values together) that reading and writing accept.

Every later stage (Config, ``Conf.resolve``, ``Conf.validate`` through msgspec, pickling a
Config into a job process, tracking's metadata) must handle what the parser accepts; some of
them recurse in C under Python's recursion limit, so the limit sits far below it. Real configs
nest fewer than ten levels.
"""

MAX_FILE_BYTES = 64 << 20
"""Largest SDN text (in UTF-8 bytes) that ``load`` and ``loads`` read: a config, not a data set."""

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_IDENT_FULL = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_INT = re.compile(r"-?[0-9]+(?:_[0-9]+)*\Z")
_FLOAT = re.compile(r"-?[0-9]+(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?\Z")
_BARE_END = re.compile(r"[,\]})]|[ \t]#")  # where a bare value ends inside {} [] () and rows
_COMMENT = re.compile(r"[ \t]#")
_KEYWORDS: dict[str, Any] = {"true": True, "false": False, "null": None, "nil": None}
_NUM_START = frozenset("-0123456789")
_ESCAPES = {'"': '"', "\\": "\\", "n": "\n", "t": "\t", "r": "\r"}
_HEX = frozenset("0123456789abcdefABCDEF")
_scan_json_string = json.decoder.scanstring  # type: ignore[attr-defined]  # C, not in the stubs
_JSON_ONLY_ESCAPES = ("\\/", "\\b", "\\f")
_SURROGATE = re.compile(r"[\ud800-\udfff]")
_INT_RANGES: dict[str, tuple[int, int] | tuple[None, None]] = {
    "i8": (-2**7, 2**7 - 1), "i16": (-2**15, 2**15 - 1), "i32": (-2**31, 2**31 - 1),
    "i64": (-2**63, 2**63 - 1), "u8": (0, 2**8 - 1), "u16": (0, 2**16 - 1),
    "u32": (0, 2**32 - 1), "u64": (0, 2**64 - 1), "int": (None, None)}
_F32_MAX = 3.4028234663852886e38
_COLUMN_TYPES = frozenset([*_INT_RANGES, "f32", "f64", "float", "bool", "str"])
_BLOCK = object()  # "the value is an indented block" marker


def _fail(line: int, col: int, msg: str) -> SdnError:
    return SdnError(msg, line=line, col=col)


# --------------------------------------------------------------------------- scalars and strings

def _scalar(text: str, ln: int, col: int) -> Any:
    """A bare value's meaning: keyword, int, float or the text itself."""
    if text in _KEYWORDS:
        return _KEYWORDS[text]
    if text[0] in _NUM_START:
        if _INT.match(text):
            try:
                return int(text)
            except ValueError:  # more digits than Python converts
                raise _fail(ln, col, f"integer literal too long ({len(text)} characters)") from None
        if _FLOAT.match(text):
            value = float(text)
            if math.isinf(value):
                raise _fail(ln, col, f"float literal {text[:40]} overflows")
            return value
    return text


def _quoted(s: str, pos: int, ln: int) -> tuple[str, int]:
    """Read the quoted string opening at ``s[pos]``; returns its value and the index after it.

    SDN's escapes are JSON's less ``\\/ \\b \\f``, so the json module's C string scanner reads
    the string; one holding those three, an escape JSON rejects or an unpaired surrogate takes
    the slow path, which finds the first problem and names its column. Both are linear.
    """
    try:
        value, end = _scan_json_string(s, pos + 1, False)
    except ValueError:
        return _quoted_slowly(s, pos, ln)
    raw = s[pos:end]
    if any(e in raw for e in _JSON_ONLY_ESCAPES) or _SURROGATE.search(value) is not None:
        return _quoted_slowly(s, pos, ln)  # slower, exact (a "\\\\b" lands here too)
    return value, end


def _quoted_slowly(s: str, pos: int, ln: int) -> tuple[str, int]:
    """``_quoted`` one escape at a time, to report the first bad one (or a missing quote).

    Linear too: the next quote and the next backslash are each searched for once and searched
    again only after the scan has passed them.
    """
    end = s.find('"', pos + 1)
    slash = s.find("\\", pos + 1)
    if end >= 0 and (slash < 0 or slash > end):
        return s[pos + 1:end], end + 1
    out: list[str] = []
    i = pos + 1
    while True:
        if 0 <= end < i:
            end = s.find('"', i)
        if 0 <= slash < i:
            slash = s.find("\\", i)
        if end < 0:
            raise _fail(ln, pos + 1, "unterminated string: expected a closing '\"' on this line")
        if slash < 0 or end < slash:
            out.append(s[i:end])
            return "".join(out), end + 1
        out.append(s[i:slash])
        esc = s[slash + 1:slash + 2]
        if esc in _ESCAPES and esc:
            out.append(_ESCAPES[esc])
            i = slash + 2
        elif esc == "u":
            char, i = _unicode_escape(s, slash, ln)
            out.append(char)
        else:
            raise _fail(ln, slash + 1, f"invalid escape '\\{esc}': expected one of "
                        "\\\" \\\\ \\n \\t \\r \\uXXXX")


def _hex4(s: str, at: int, ln: int) -> int:
    digits = s[at:at + 4]
    if len(digits) != 4 or not all(c in _HEX for c in digits):
        raise _fail(ln, at - 1, "invalid \\u escape: expected four hex digits")
    return int(digits, 16)


def _unicode_escape(s: str, slash: int, ln: int) -> tuple[str, int]:
    """``\\uXXXX`` at ``s[slash]``, combining a surrogate pair into one character."""
    code = _hex4(s, slash + 2, ln)
    nxt = slash + 6
    if 0xD800 <= code < 0xDC00 and s.startswith("\\u", nxt):
        low = _hex4(s, nxt + 2, ln)
        if 0xDC00 <= low < 0xE000:
            return chr(0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00)), nxt + 6
    if 0xD800 <= code < 0xE000:
        raise _fail(ln, slash + 1, "unpaired surrogate in \\u escape")
    return chr(code), nxt


def _skip_ws(s: str, pos: int) -> int:
    n = len(s)
    while pos < n and s[pos] in " \t":
        pos += 1
    return pos


def _at_end(s: str, pos: int) -> bool:
    """True when nothing but a comment is left at ``pos`` (already past whitespace)."""
    return pos >= len(s) or (s[pos] == "#" and (pos == 0 or s[pos - 1] in " \t"))


def _expect_end(s: str, pos: int, ln: int) -> None:
    pos = _skip_ws(s, pos)
    if not _at_end(s, pos):
        raise _fail(ln, pos + 1, f"unexpected text after the value: {s[pos:pos + 20]!r}")


def _bare_to_eol(s: str, pos: int) -> tuple[str, int]:
    """A bare value that runs to the end of the line (or a comment); returns it and its end."""
    m = _COMMENT.search(s, pos)
    end = len(s.rstrip(" \t")) if m is None else len(s[:m.start()].rstrip(" \t"))
    return s[pos:end], end


# --------------------------------------------------------------------------- inline values

def _inline(s: str, pos: int, ln: int, depth: int) -> tuple[Any, int]:
    """Parse one inline value at ``s[pos]`` (``{}``, ``[]``, quoted or bare); no recursion."""
    stack: list[list[Any]] = []  # [container, closer, key or None, opening column]
    while True:
        pos = _skip_ws(s, pos)
        if _at_end(s, pos):
            raise _unclosed(s, ln, stack) if stack else _fail(ln, pos + 1, "expected a value")
        c = s[pos]
        if c == "{" or c == "[":
            if depth + len(stack) >= MAX_DEPTH:
                raise _fail(ln, pos + 1, f"nesting deeper than {MAX_DEPTH} levels")
            closer = "}" if c == "{" else "]"
            frame: list[Any] = [{} if c == "{" else [], closer, None, pos + 1]
            stack.append(frame)
            pos = _skip_ws(s, pos + 1)
            if pos < len(s) and s[pos] == closer:
                value, pos = stack.pop()[0], pos + 1
            else:
                if c == "{":
                    pos = _inline_key(s, pos, ln, frame)
                continue
        elif c == '"':
            value, pos = _quoted(s, pos, ln)
        else:
            m = _BARE_END.search(s, pos)
            end = len(s) if m is None else m.start()
            text = s[pos:end].rstrip(" \t")
            if not text:
                raise _fail(ln, pos + 1, "expected a value")
            value, pos = _scalar(text, ln, pos + 1), end
        # a value is complete: hand it to the enclosing containers
        while True:
            if not stack:
                return value, pos
            frame = stack[-1]
            container, closer = frame[0], frame[1]
            if closer == "}":
                container[frame[2]] = value
            else:
                container.append(value)
            pos = _skip_ws(s, pos)
            c = s[pos] if pos < len(s) else ""
            if c == ",":
                pos = _skip_ws(s, pos + 1)
                if pos < len(s) and s[pos] == closer:  # trailing comma
                    value, pos = stack.pop()[0], pos + 1
                    continue
                if closer == "}":
                    pos = _inline_key(s, pos, ln, frame)
                break
            if c == closer:
                value, pos = stack.pop()[0], pos + 1
                continue
            if _at_end(s, pos):
                raise _unclosed(s, ln, stack)
            raise _fail(ln, pos + 1, f"expected ',' or '{closer}', found {c!r}")


def _inline_key(s: str, pos: int, ln: int, frame: list[Any]) -> int:
    """Read ``key:`` of an inline dict into ``frame[2]``; returns the index after the colon."""
    if _at_end(s, pos):
        raise _unclosed(s, ln, [frame])
    c = s[pos]
    if c == '"':
        key, end = _quoted(s, pos, ln)
    else:
        m = _IDENT.match(s, pos)
        if m is None:
            raise _fail(ln, pos + 1, "expected a key (an identifier or a quoted string) in '{}'")
        key, end = m.group(), m.end()
    end = _skip_ws(s, end)
    if end >= len(s) or s[end] != ":":
        raise _fail(ln, end + 1, f"expected ':' after the key {key!r} in an inline dict")
    if key in frame[0]:
        raise _fail(ln, pos + 1, f"duplicate key {key!r}")
    frame[2] = key
    return end + 1


def _unclosed(s: str, ln: int, stack: list[list[Any]]) -> SdnError:
    frame = stack[-1]
    opener = "{" if frame[1] == "}" else "["
    return _fail(ln, len(s.rstrip(" \t")) + 1,
                 f"'{opener}' opened at column {frame[3]} is not closed on its line "
                 f"(expected '{frame[1]}')")


# --------------------------------------------------------------------------- tables

def _row(s: str, pos: int, ln: int, depth: int, width: int,
         closer: str = "") -> tuple[list[Any], int]:
    """Comma-separated cells from ``pos`` to the line's end (or ``closer``).

    Each cell is ``(value, bare_text_or_None, column)``; the bare text lets ``str`` columns keep
    ``1.50`` as written.
    """
    start = pos
    cells: list[tuple[Any, str | None, int]] = []
    while True:
        pos = _skip_ws(s, pos)
        if _at_end(s, pos) or s[pos] == "," or (closer and s[pos] == closer):
            raise _fail(ln, pos + 1, "empty cell: expected a value")
        c = s[pos]
        col = pos + 1
        if c == "{" or c == "[":
            value, pos = _inline(s, pos, ln, depth)
            cells.append((value, None, col))
        elif c == '"':
            value, pos = _quoted(s, pos, ln)
            cells.append((value, None, col))
        else:
            m = _BARE_END.search(s, pos)
            end = len(s) if m is None else m.start()
            text = s[pos:end].rstrip(" \t")
            if not text:
                raise _fail(ln, col, f"expected a value, found {s[pos]!r}")
            cells.append((_scalar(text, ln, col), text, col))
            pos = end
        pos = _skip_ws(s, pos)
        if _at_end(s, pos):
            if closer:
                raise _fail(ln, pos + 1, f"expected '{closer}' to close the row")
            break
        if s[pos] == ",":
            pos += 1
            continue
        if closer and s[pos] == closer:
            pos += 1
            break
        raise _fail(ln, pos + 1, f"expected ',' between cells, found {s[pos]!r}")
    if len(cells) != width:
        raise _fail(ln, start + 1, f"the row has {len(cells)} values, the table has {width} columns")
    return cells, pos


def _typed_cell(cell: tuple[Any, str | None, int], kind: str, ln: int) -> Any:
    """Convert one cell to its column type, or fail naming the cell."""
    value, bare, col = cell
    if value is None:
        return None
    if kind == "str":
        if bare is not None:
            return bare
        if isinstance(value, str):
            return value
    elif kind == "bool":
        if isinstance(value, bool):
            return value
    elif kind in _INT_RANGES:
        if type(value) is int:
            lo, hi = _INT_RANGES[kind]
            if lo is None or hi is None or lo <= value <= hi:
                return value
            raise _fail(ln, col, f"{value} is out of range for {kind} ({lo}..{hi})")
    elif type(value) in (int, float):  # float columns take ints too, not rounded
        try:
            number = float(value)
        except OverflowError:  # an int beyond any float
            raise _fail(ln, col, f"{bare or value} is out of range for {kind}") from None
        if kind == "f32" and abs(number) > _F32_MAX:
            raise _fail(ln, col, f"{bare or value} is out of range for f32 (|x| <= {_F32_MAX:.8g})")
        return number
    raise _fail(ln, col, f"{bare if bare is not None else value!r} is not a valid {kind}")


def _column_types(s: str, pos: int, ln: int) -> tuple[list[str], int]:
    """``table{i32, f64}`` starting at ``s[pos]``; returns the types and the index after '}'."""
    close = s.find("}", pos)
    if close < 0:
        raise _fail(ln, pos + 1, "expected '}' to close 'table{'")
    types, at = [], pos + 6
    for part in s[pos + 6:close].split(","):
        name = part.strip(" \t")
        if name not in _COLUMN_TYPES:
            raise _fail(ln, at + 1, f"unknown column type {name!r}: expected one of "
                        + " ".join(sorted(_COLUMN_TYPES)))
        types.append(name)
        at += len(part) + 1
    return types, close + 1


def _inline_typed_rows(s: str, pos: int, ln: int, depth: int, types: list[str]) -> list[Any]:
    """``[(1, 2), (3, 4)]`` at ``s[pos]`` converted to lists of typed values."""
    if pos >= len(s) or s[pos] != "[":
        raise _fail(ln, pos + 1, "expected '[' and rows like (1, 2) after 'table{...} ='")
    rows: list[list[Any]] = []
    pos = _skip_ws(s, pos + 1)
    while True:
        if pos < len(s) and s[pos] == "]":
            _expect_end(s, pos + 1, ln)
            return rows
        if pos >= len(s) or s[pos] != "(":
            if _at_end(s, pos):
                raise _fail(ln, len(s.rstrip(" \t")) + 1, "'[' is not closed on its line")
            raise _fail(ln, pos + 1, "expected '(' to start a row")
        cells, pos = _row(s, pos + 1, ln, depth + 1, len(types), ")")
        rows.append([_typed_cell(c, t, ln) for c, t in zip(cells, types, strict=True)])
        pos = _skip_ws(s, pos)
        if pos < len(s) and s[pos] == ",":
            pos = _skip_ws(s, pos + 1)
        elif not (pos < len(s) and s[pos] == "]"):
            raise _fail(ln, pos + 1, "expected ',' or ']' after a row")


def _fields(s: str, pos: int, ln: int) -> tuple[list[str], int]:
    """``|f1, f2|`` with ``s[pos]`` just after the first '|'; returns fields, index after '|'."""
    fields: list[str] = []
    while True:
        pos = _skip_ws(s, pos)
        if pos < len(s) and s[pos] == '"':
            name, pos = _quoted(s, pos, ln)
        else:
            m = _IDENT.match(s, pos)
            if m is None:
                raise _fail(ln, pos + 1, "expected a field name (identifier or quoted string)")
            name, pos = m.group(), m.end()
        if name in fields:
            raise _fail(ln, pos - len(name) + 1, f"duplicate field {name!r}")
        fields.append(name)
        pos = _skip_ws(s, pos)
        if pos < len(s) and s[pos] == "|":
            return fields, pos + 1
        if pos >= len(s) or s[pos] != ",":
            raise _fail(ln, pos + 1, "expected ',' or '|' in the table's field list")
        pos += 1


# --------------------------------------------------------------------------- block parser

class _Frame:
    """One indented block: a dict, an array, or the rows of a named or typed table."""

    __slots__ = ("columns", "container", "indent", "kind", "path")

    def __init__(self, kind: str, container: Any, indent: int, path: tuple[Any, ...],
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

    def __init__(self, record: dict[tuple[Any, ...], Any] | None = None, extra_depth: int = 0) -> None:
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

    def _line_value(self, s: str, pos: int, ln: int, depth: int) -> tuple[Any, int]:
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

    def _expect_block(self, kind: str, container: Any, top: _Frame, key: str,
                      columns: list[str] | None) -> Any:
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


def load(source: str | os.PathLike[str] | IO[Any]) -> dict[str, Any]:
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


def parse_value(text: str) -> Any:
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


# --------------------------------------------------------------------------- writing

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


def _key_text(key: Any) -> str:
    if not isinstance(key, str):
        raise SdnError(f"cannot write a {type(key).__name__} key ({key!r}): keys must be strings")
    return key if _IDENT_FULL.match(key) else _quote(key)


def _scalar_text(v: Any) -> str:
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


def value_text(value: Any, depth: int = 0) -> str:
    """One value written inline (``[1, {a: x}]``, ``"quoted"``, ``3.5``); no recursion."""
    out: list[str] = []
    stack: list[list[Any]] = []  # [iterator, is_dict, first]
    cur = value
    while True:
        if isinstance(cur, dict) and cur:
            if depth + len(stack) >= MAX_DEPTH:
                raise SdnError(f"cannot write nesting deeper than {MAX_DEPTH} levels")
            out.append("{")
            stack.append([iter(cur.items()), True, True])
        elif isinstance(cur, list | tuple) and cur:
            if depth + len(stack) >= MAX_DEPTH:
                raise SdnError(f"cannot write nesting deeper than {MAX_DEPTH} levels")
            out.append("[")
            stack.append([iter(cur), False, True])
        elif isinstance(cur, dict):
            out.append("{}")
        elif isinstance(cur, list | tuple):
            out.append("[]")
        else:
            out.append(_scalar_text(cur))
        while stack:
            frame = stack[-1]
            nxt: Any = next(frame[0], _END)
            if nxt is _END:
                out.append("}" if frame[1] else "]")
                stack.pop()
                continue
            if not frame[2]:
                out.append(", ")
            frame[2] = False
            if frame[1]:
                out.append(_key_text(nxt[0]) + ": ")
                cur = nxt[1]
            else:
                cur = nxt
            break
        else:
            return "".join(out)


def _table_fields(items: list[Any] | tuple[Any, ...]) -> list[str] | None:
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


def _entry_lines(mapping: dict[str, Any], indent: int, out: list[str], depth: int = 0) -> None:
    """Append the block lines of ``mapping``'s entries at ``indent`` spaces; no recursion."""
    stack: list[tuple[Iterator[Any], str]] = [(iter(mapping.items()), " " * indent)]
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


def dumps(obj: dict[str, Any], *, extra_depth: int = 0) -> str:
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


def dump(obj: dict[str, Any], target: str | os.PathLike[str] | IO[Any]) -> None:
    """Write ``obj`` as SDN to an open text file, or atomically to a path."""
    text = dumps(obj)
    if isinstance(target, str | os.PathLike):
        write_atomic(target, text)
    else:
        target.write(text)


# --------------------------------------------------------------------------- documents

class SdnDocument:
    """An SDN text that can change one value and keep everything else as it was written.

    ``doc = SdnDocument(text)``; ``doc.data`` is the parsed value; ``doc.set("a.b", 5)``
    rewrites only the text of that value (a scalar or inline value in place, keeping the
    comment after it; a block entry is rewritten as a whole); ``str(doc)`` is the new text.
    Setting a path that does not exist adds it at the end of its parent block.
    """

    def __init__(self, text: str | bytes) -> None:
        self.lines = _split_lines(text)
        self._crlf = "\r\n" in text if isinstance(text, str) else b"\r\n" in text
        self._parse()

    def _parse(self) -> None:
        self.entries: dict[tuple[Any, ...], tuple[int, int, tuple[int, int] | None]] = {}
        self.data = _Parser(self.entries).parse(self.lines)

    def __str__(self) -> str:
        text = "\n".join(self.lines)
        return text.replace("\n", "\r\n") if self._crlf else text

    def set(self, path: str | list[Any] | tuple[Any, ...], value: Any) -> None:
        """Set the value at ``path`` (dotted string or key list; list items by index)."""
        keys = split_path(path)
        if not keys:
            raise SdnError("an empty path names the whole document: give a key")
        known = len(keys)
        while known and tuple(keys[:known]) not in self.entries:
            known -= 1
        if known == 0:  # a new top-level key, or a change inside one that is not recorded
            self._insert_or_replace(keys, value)
            return
        prefix = tuple(keys[:known])
        entry_value = _with_value(_lookup(self.data, prefix), keys[known:], value)
        self._replace_entry(prefix, entry_value)
        self._parse()

    def _insert_or_replace(self, keys: list[Any], value: Any) -> None:
        if not isinstance(keys[0], str):
            raise SdnError(f"the document's top level is a dict: {keys[0]!r} is not a key")
        new = _with_value(self.data.get(keys[0], _MISSING_VALUE), keys[1:], value)
        lines: list[str] = []
        _entry_lines({keys[0]: new}, 0, lines)
        end = len(self.lines)
        while end and not self.lines[end - 1].strip(" \t"):
            end -= 1
        self.lines[end:end] = lines
        self._parse()

    def _replace_entry(self, prefix: tuple[Any, ...], value: Any) -> None:
        idx, ind, span = self.entries[prefix]
        s = self.lines[idx]
        block_value = isinstance(value, dict) and value or (
            isinstance(value, list | tuple) and _table_fields(value) is not None)
        if span is not None and not block_value:
            start, end = span  # inline values may follow `key:` as well as `key =`
            self.lines[idx] = s[:start] + value_text(value, len(prefix)) + s[end:]
            return
        lines: list[str] = []
        _entry_lines({prefix[-1]: value}, ind, lines, len(prefix) - 1)
        self.lines[idx:self._block_end(idx, ind)] = lines

    def _block_end(self, idx: int, ind: int) -> int:
        """Index after the last line that belongs to the entry on line ``idx``."""
        end = idx + 1
        last = idx + 1
        while end < len(self.lines):
            s = self.lines[end]
            body = s.lstrip(" \t")
            if body and body[0] != "#":
                if len(s) - len(s.lstrip(" ")) <= ind:
                    break
                last = end + 1
            end += 1
        return last


_MISSING_VALUE = object()


def split_path(path: str | list[Any] | tuple[Any, ...]) -> list[Any]:
    """A dotted path as keys: ``"a.b.0"`` -> ``["a", "b", 0]`` (digits index lists).

    ``a[0]`` is read as ``a.0``; lists and tuples of keys pass through.
    """
    if isinstance(path, list | tuple):
        return list(path)
    if not path:
        return []
    parts = path.replace("[", ".").replace("]", "").split(".")
    if any(p == "" for p in parts):
        raise SdnError(f"bad path {path!r}: empty key")
    return [int(p) if p.isdigit() else p for p in parts]


def _lookup(data: Any, keys: tuple[Any, ...] | list[Any]) -> Any:
    for k in keys:
        data = data[k]
    return data


def _with_value(current: Any, keys: list[Any], value: Any) -> Any:
    """A copy of ``current`` with ``value`` at ``keys`` (intermediate dicts made as needed)."""
    if not keys:
        return value
    k = keys[0]
    if isinstance(current, list) and isinstance(k, int):
        if not -len(current) <= k < len(current):
            raise SdnError(f"index {k} is out of range for a list of {len(current)}")
        out = list(current)
        out[k] = _with_value(out[k], keys[1:], value)
        return out
    node: dict[str, Any] = dict(current) if isinstance(current, dict) else {}
    node[str(k)] = _with_value(node.get(str(k), _MISSING_VALUE), keys[1:], value)
    return node
