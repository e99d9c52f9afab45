"""SdnDocument: an SDN text that changes one value and keeps every comment and all other
formatting as written (what ``aiotrain sdn set`` edits), and the dotted paths that name values."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..errors import SdnError
from .parser import Entry, Key, KeyPath, _Parser, _split_lines
from .writer import _entry_lines, _table_fields, value_text

PathSpec = str | Sequence[Key]
"""A path as a user writes it: dotted (``"model.layers.0"``, ``"model.layers[0]"``) or its keys."""


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
        self.entries: dict[KeyPath, Entry] = {}
        self.data = _Parser(self.entries).parse(self.lines)

    def position(self, path: PathSpec) -> tuple[int, int] | None:
        """Line and column (1-based) of the key of the entry at ``path``, when the text has one."""
        entry = self.entries.get(tuple(split_path(path)))
        return None if entry is None else (entry[0] + 1, entry[1] + 1)

    def __str__(self) -> str:
        text = "\n".join(self.lines)
        return text.replace("\n", "\r\n") if self._crlf else text

    def set(self, path: PathSpec, value: object) -> None:
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

    def _insert_or_replace(self, keys: list[Key], value: object) -> None:
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

    def _replace_entry(self, prefix: KeyPath, value: object) -> None:
        idx, ind, span = self.entries[prefix]
        s = self.lines[idx]
        block_value = isinstance(value, dict) and value or (
            isinstance(value, list | tuple) and _table_fields(value) is not None)
        if span is not None and not block_value:
            start, end = span  # inline values may follow `key:` as well as `key =`
            self.lines[idx] = s[:start] + value_text(value, len(prefix)) + s[end:]
            return
        lines: list[str] = []
        _entry_lines({str(prefix[-1]): value}, ind, lines, len(prefix) - 1)  # a dict entry's key
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


def split_path(path: PathSpec) -> list[Key]:
    """A dotted path as keys: ``"a.b.0"`` -> ``["a", "b", 0]`` (digits index lists).

    ``a[0]`` is read as ``a.0``; lists and tuples of keys pass through.
    """
    if not isinstance(path, str):
        return list(path) if path else []
    if not path:
        return []
    parts = path.replace("[", ".").replace("]", "").split(".")
    if any(p == "" for p in parts):
        raise SdnError(f"bad path {path!r}: empty key")
    return [int(p) if p.isdigit() else p for p in parts]


def _lookup(data: Any, keys: Sequence[Key]) -> Any:
    for k in keys:
        data = data[k]
    return data


def _with_value(current: object, keys: Sequence[Key], value: object) -> object:
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
