"""Config: the attribute and item view over a config's plain tree, resolving as it reads; and
:class:`ReadLog`, what was read through it while a task factory built from it."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from types import CodeType
from typing import Any, NamedTuple

from .errors import FrozenConfigError, MissingValueError
from .interpolation import _Resolver
from .sdn import Key, KeyPath
from .tree import _ABSENT, _NOTHING, MISSING, View, _child, _dotted, _rebuild

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep  # aiotrain/config/


class ValueRead(NamedTuple):
    """One value read through a Config, and where: the reading code and its instruction."""

    key: str        # the dotted key
    value: object
    code: CodeType  # the code object that read it (the caller of the Config, not Config itself)
    lasti: int      # the instruction of that code that read it (``frame.f_lasti``)


class ReadLog:
    """What was read through the views of one config while it recorded (:func:`recording_reads`):
    the top-level keys read (so that a key nobody reads is an error, not silently ignored), and
    each value with the instruction that read it (so that a factory failing on a value can be
    told which key it came from). Using the whole top level at once (iterating it, ``to_dict``,
    ``merge``, pickling) counts every top-level key as read."""

    MAX_VALUES = 10_000  # values kept; a factory that reads more is not traced past them

    def __init__(self) -> None:
        self.top: set[str] = set()
        self.values: list[ValueRead] = []

    def note(self, at: KeyPath, key: Key, value: object) -> None:
        """``at + (key,)`` was read and gave ``value``."""
        if not at:
            self.top.add(str(key))
        if isinstance(value, Config) or len(self.values) >= self.MAX_VALUES:
            return
        frame = sys._getframe(2)
        while frame is not None and frame.f_code.co_filename.startswith(_PACKAGE_DIR):
            frame = frame.f_back  # type: ignore[assignment]  # None ends the loop
        if frame is not None:
            self.values.append(ValueRead(_dotted((*at, key)), value, frame.f_code, frame.f_lasti))

    def read_within(self, code: CodeType, lasti: int) -> list[ValueRead]:
        """The values that ``code`` read inside the expression of its instruction ``lasti`` (the
        call a traceback points at: its arguments' reads), first read first, each key once."""
        span = _position(code, lasti)
        if span is None:
            return []
        found: dict[str, ValueRead] = {}
        for read in self.values:
            if read.code is code and read.key not in found:
                at = _position(code, read.lasti)
                if at is not None and span[:2] <= at[:2] and at[2:] <= span[2:]:
                    found[read.key] = read
        return list(found.values())


def _position(code: CodeType, lasti: int) -> tuple[int, int, int, int] | None:
    """``(line, col, end_line, end_col)`` of instruction ``lasti`` of ``code``, when known."""
    for i, (line, end_line, col, end_col) in enumerate(code.co_positions()):
        if i == lasti // 2:
            if None in (line, end_line, col, end_col):
                return None
            return line, col, end_line, end_col  # type: ignore[return-value]  # checked above
    return None


@contextmanager
def recording_reads(cfg: Config) -> Iterator[ReadLog]:
    """Record what is read through ``cfg`` (and every view of its tree) inside the block."""
    log = cfg._state.log = ReadLog()
    try:
        yield log
    finally:
        cfg._state.log = None


class _State:
    """What all views of one config share."""

    __slots__ = ("frozen", "log", "root", "throw_on_missing")

    def __init__(self, root: object) -> None:
        self.root, self.frozen, self.throw_on_missing = root, False, True
        self.log: ReadLog | None = None


class Config(View):
    """A config node (a dict, or a list inside one) with attribute and item access.

    ``cfg.a.b``, ``cfg["a"]["b"]``, ``cfg.layers[0]``; assignment and ``del`` unless frozen.
    Nested dicts and lists read back as Config views on the same data; interpolations are
    resolved as they are read. Build one with ``Conf.from_dict`` or ``Config(mapping)``.
    """

    __slots__ = ("_data", "_key", "_state")

    def __init__(self, data: Mapping[str, object] | list[Any] | None = None, *,
                 _state: _State | None = None, _key: KeyPath = ()) -> None:
        if _state is None:
            data = _rebuild({} if data is None else data)
            _state = _State(data)
        object.__setattr__(self, "_data", data)
        object.__setattr__(self, "_state", _state)
        object.__setattr__(self, "_key", _key)

    # reading
    def _read(self, key: Key, default: object = _NOTHING) -> Any:
        value = self._value(key, default)
        if self._state.log is not None:
            self._state.log.note(self._key, key, value)
        return value

    def _used_whole(self) -> None:
        """The whole node is used at once: at the top level, every key counts as read."""
        if self._state.log is not None and not self._key and isinstance(self._data, dict):
            self._state.log.top.update(self._data)

    def _value(self, key: Key, default: object) -> Any:
        raw = _child(self._data, key)
        if raw is _ABSENT or (type(raw) is str and raw == MISSING):
            if default is not _NOTHING:
                return default
            if not self._state.throw_on_missing:
                return None
            full = _dotted((*self._key, key))
            what = "is missing (???)" if raw is not _ABSENT else "not found"
            raise MissingValueError(f"{full}: {what}", full_key=full)
        if type(raw) is str:
            if "$" not in raw:
                return raw
            raw = _Resolver(self._state.root).value((*self._key, key), raw)
        if isinstance(raw, dict | list):
            k = key if isinstance(self._data, dict) else int(key)
            return Config(raw, _state=self._state, _key=(*self._key, k))
        return raw

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or not isinstance(self._data, dict):
            raise AttributeError(name)
        return self._read(name)

    def __getitem__(self, key: Key | slice) -> Any:
        if isinstance(key, slice) and isinstance(self._data, list):
            return [self._read(i) for i in range(len(self._data))[key]]
        return self._read(str(key) if isinstance(key, slice) else key)  # a dict has no slices

    def get(self, key: str, default: object = None) -> Any:
        """``cfg.get("x", default)``: the value, or ``default`` when absent or ``???``."""
        return self._read(key, default)

    # writing
    def _write(self, key: Key, value: object) -> None:
        if self._state.frozen:
            raise FrozenConfigError(f"{_dotted((*self._key, key))}: the config is frozen",
                                    full_key=_dotted((*self._key, key)))
        if isinstance(self._data, list):
            self._data[int(key)] = _rebuild(value, key=(*self._key, key))
        else:
            self._data[str(key)] = _rebuild(value, key=(*self._key, key))

    def _remove(self, key: Key) -> None:
        full = _dotted((*self._key, key))
        if self._state.frozen:
            raise FrozenConfigError(f"{full}: the config is frozen", full_key=full)
        if _child(self._data, key) is _ABSENT:
            raise MissingValueError(f"{full}: not found", full_key=full)
        del self._data[key if isinstance(self._data, dict) else int(key)]

    def __setattr__(self, name: str, value: object) -> None:
        self._write(name, value)

    def __setitem__(self, key: Key, value: object) -> None:
        self._write(key, value)

    def __delattr__(self, name: str) -> None:
        self._remove(name)

    def __delitem__(self, key: Key) -> None:
        self._remove(key)

    # the container protocols
    def __contains__(self, key: object) -> bool:
        if isinstance(self._data, dict):
            if self._state.log is not None and not self._key:
                self._state.log.top.add(str(key))
            return key in self._data
        return any(v == key for v in self)

    def __iter__(self) -> Iterator[Any]:
        self._used_whole()
        if isinstance(self._data, dict):
            return iter(list(self._data))
        return (self._read(i) for i in range(len(self._data)))

    def __len__(self) -> int:
        return len(self._data)

    def keys(self) -> list[str | int]:
        self._used_whole()
        return list(self._data) if isinstance(self._data, dict) else list(range(len(self._data)))

    def values(self) -> list[Any]:
        return [self._read(k) for k in self.keys()]

    def items(self) -> list[tuple[Key, Any]]:
        return [(k, self._read(k)) for k in self.keys()]

    def __eq__(self, other: object) -> bool:
        self._used_whole()
        if isinstance(other, Config):
            other = other._data
        return isinstance(other, dict | list) and self._data == other

    __hash__ = None  # type: ignore[assignment]  # mutable, so unhashable (as dict)

    def __dir__(self) -> list[str]:
        names = [k for k in self._data if isinstance(k, str) and k.isidentifier()] \
            if isinstance(self._data, dict) else []
        return sorted(set(names) | set(super().__dir__()))

    def __repr__(self) -> str:
        return f"Config({self._data!r})"

    def __copy__(self) -> Config:
        self._used_whole()
        return Config(self._data)

    def __deepcopy__(self, memo: dict[int, object]) -> Config:
        self._used_whole()
        return Config(self._data)

    def __reduce__(self) -> tuple[type[Config], tuple[object]]:
        self._used_whole()
        return (Config, (_rebuild(self._data),))
