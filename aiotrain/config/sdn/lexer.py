"""SDN's values as written on one line: scalars, quoted strings, inline ``{}`` / ``[]`` values,
table rows and typed cells (the lexical layer under :mod:`.parser`).

Every function takes the line text, a position and the 1-based line number, and returns the value
and the position after it; every error is an :class:`SdnError` at its line and column. Inline
values are parsed with an explicit stack, so no input can recurse.
"""

from __future__ import annotations

import json.decoder
import math
import re
from typing import TypeAlias

from ..errors import SdnError

Scalar: TypeAlias = "str | int | float | bool | None"
"""What one bare or quoted SDN value is."""
Value: TypeAlias = "Scalar | list[Value] | dict[str, Value]"
"""What an SDN value is: a scalar, or lists and dicts of values."""
Cell: TypeAlias = "tuple[Value, str | None, int]"
"""A table cell: its value, its text when written bare (``str`` columns keep ``1.50``), its column."""

MAX_DEPTH = 100
"""Deepest nesting (blocks and inline values together) that reading and writing accept.

Every later stage (Config, ``Conf.resolve``, ``Conf.validate`` through msgspec, pickling a
Config into a job process, tracking's metadata) must handle what the parser accepts; some of
them recurse in C under Python's recursion limit, so the limit sits far below it. Real configs
nest fewer than ten levels.
"""

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_IDENT_FULL = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_INT = re.compile(r"-?[0-9]+(?:_[0-9]+)*\Z")
_FLOAT = re.compile(r"-?[0-9]+(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?\Z")
_BARE_END = re.compile(r"[,\]})]|[ \t]#")  # where a bare value ends inside {} [] () and rows
_COMMENT = re.compile(r"[ \t]#")
_KEYWORDS: dict[str, bool | None] = {"true": True, "false": False, "null": None, "nil": None}
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

def _scalar(text: str, ln: int, col: int) -> Scalar:
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

class _Open:
    """An inline ``{`` or ``[`` not closed yet: what it holds so far, the key a dict's next value
    goes under, and its column (for the error when it is never closed)."""

    __slots__ = ("closer", "column", "container", "key")

    def __init__(self, container: dict[str, Value] | list[Value], closer: str, column: int) -> None:
        self.container, self.closer, self.column = container, closer, column
        self.key = ""


def _inline(s: str, pos: int, ln: int, depth: int) -> tuple[Value, int]:
    """Parse one inline value at ``s[pos]`` (``{}``, ``[]``, quoted or bare); no recursion."""
    stack: list[_Open] = []
    value: Value
    while True:
        pos = _skip_ws(s, pos)
        if _at_end(s, pos):
            raise _unclosed(s, ln, stack) if stack else _fail(ln, pos + 1, "expected a value")
        c = s[pos]
        if c == "{" or c == "[":
            if depth + len(stack) >= MAX_DEPTH:
                raise _fail(ln, pos + 1, f"nesting deeper than {MAX_DEPTH} levels")
            closer = "}" if c == "{" else "]"
            frame = _Open({} if c == "{" else [], closer, pos + 1)
            stack.append(frame)
            pos = _skip_ws(s, pos + 1)
            if pos < len(s) and s[pos] == closer:
                value, pos = stack.pop().container, pos + 1
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
            container, closer = frame.container, frame.closer
            if isinstance(container, dict):
                container[frame.key] = value
            else:
                container.append(value)
            pos = _skip_ws(s, pos)
            c = s[pos] if pos < len(s) else ""
            if c == ",":
                pos = _skip_ws(s, pos + 1)
                if pos < len(s) and s[pos] == closer:  # trailing comma
                    value, pos = stack.pop().container, pos + 1
                    continue
                if closer == "}":
                    pos = _inline_key(s, pos, ln, frame)
                break
            if c == closer:
                value, pos = stack.pop().container, pos + 1
                continue
            if _at_end(s, pos):
                raise _unclosed(s, ln, stack)
            raise _fail(ln, pos + 1, f"expected ',' or '{closer}', found {c!r}")


def _inline_key(s: str, pos: int, ln: int, frame: _Open) -> int:
    """Read ``key:`` of an inline dict into ``frame.key``; returns the index after the colon."""
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
    if key in frame.container:
        raise _fail(ln, pos + 1, f"duplicate key {key!r}")
    frame.key = key
    return end + 1


def _unclosed(s: str, ln: int, stack: list[_Open]) -> SdnError:
    frame = stack[-1]
    opener = "{" if frame.closer == "}" else "["
    return _fail(ln, len(s.rstrip(" \t")) + 1,
                 f"'{opener}' opened at column {frame.column} is not closed on its line "
                 f"(expected '{frame.closer}')")


# --------------------------------------------------------------------------- tables

def _row(s: str, pos: int, ln: int, depth: int, width: int,
         closer: str = "") -> tuple[list[Cell], int]:
    """Comma-separated cells from ``pos`` to the line's end (or ``closer``).

    Each cell is ``(value, bare_text_or_None, column)``; the bare text lets ``str`` columns keep
    ``1.50`` as written.
    """
    start = pos
    cells: list[Cell] = []
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


def _typed_cell(cell: Cell, kind: str, ln: int) -> Scalar:
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
    elif type(value) is int or type(value) is float:  # float columns take ints too, not rounded
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


def _inline_typed_rows(s: str, pos: int, ln: int, depth: int, types: list[str]) -> list[Value]:
    """``[(1, 2), (3, 4)]`` at ``s[pos]`` converted to lists of typed values."""
    if pos >= len(s) or s[pos] != "[":
        raise _fail(ln, pos + 1, "expected '[' and rows like (1, 2) after 'table{...} ='")
    rows: list[Value] = []
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
