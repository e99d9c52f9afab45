"""Config: the attribute and item view over a config's plain tree, resolving as it reads."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from .errors import FrozenConfigError, MissingValueError
from .interpolation import _Resolver
from .tree import _ABSENT, _NOTHING, MISSING, View, _child, _dotted, _rebuild


class _State:
    """What all views of one config share."""

    __slots__ = ("frozen", "root", "throw_on_missing")

    def __init__(self, root: Any) -> None:
        self.root, self.frozen, self.throw_on_missing = root, False, True


class Config(View):
    """A config node (a dict, or a list inside one) with attribute and item access.

    ``cfg.a.b``, ``cfg["a"]["b"]``, ``cfg.layers[0]``; assignment and ``del`` unless frozen.
    Nested dicts and lists read back as Config views on the same data; interpolations are
    resolved as they are read. Build one with ``Conf.from_dict`` or ``Config(mapping)``.
    """

    __slots__ = ("_data", "_key", "_state")

    def __init__(self, data: Mapping[str, Any] | list[Any] | None = None, *, _state: _State | None = None,
                 _key: tuple[Any, ...] = ()) -> None:
        if _state is None:
            data = _rebuild({} if data is None else data)
            _state = _State(data)
        object.__setattr__(self, "_data", data)
        object.__setattr__(self, "_state", _state)
        object.__setattr__(self, "_key", _key)

    # reading
    def _read(self, key: Any, default: Any = _NOTHING) -> Any:
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

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, slice) and isinstance(self._data, list):
            return [self._read(i) for i in range(len(self._data))[key]]
        return self._read(key)

    def get(self, key: str, default: Any = None) -> Any:
        """``cfg.get("x", default)``: the value, or ``default`` when absent or ``???``."""
        return self._read(key, default)

    # writing
    def _write(self, key: Any, value: Any) -> None:
        if self._state.frozen:
            raise FrozenConfigError(f"{_dotted((*self._key, key))}: the config is frozen",
                                    full_key=_dotted((*self._key, key)))
        if isinstance(self._data, list):
            self._data[int(key)] = _rebuild(value, key=(*self._key, key))
        else:
            self._data[str(key)] = _rebuild(value, key=(*self._key, key))

    def _remove(self, key: Any) -> None:
        full = _dotted((*self._key, key))
        if self._state.frozen:
            raise FrozenConfigError(f"{full}: the config is frozen", full_key=full)
        if _child(self._data, key) is _ABSENT:
            raise MissingValueError(f"{full}: not found", full_key=full)
        del self._data[key if isinstance(self._data, dict) else int(key)]

    def __setattr__(self, name: str, value: Any) -> None:
        self._write(name, value)

    def __setitem__(self, key: Any, value: Any) -> None:
        self._write(key, value)

    def __delattr__(self, name: str) -> None:
        self._remove(name)

    def __delitem__(self, key: Any) -> None:
        self._remove(key)

    # the container protocols
    def __contains__(self, key: Any) -> bool:
        if isinstance(self._data, dict):
            return key in self._data
        return any(v == key for v in self)

    def __iter__(self) -> Iterator[Any]:
        if isinstance(self._data, dict):
            return iter(list(self._data))
        return (self._read(i) for i in range(len(self._data)))

    def __len__(self) -> int:
        return len(self._data)

    def keys(self) -> list[str | int]:
        return list(self._data) if isinstance(self._data, dict) else list(range(len(self._data)))

    def values(self) -> list[Any]:
        return [self._read(k) for k in self.keys()]

    def items(self) -> list[tuple[Any, Any]]:
        return [(k, self._read(k)) for k in self.keys()]

    def __eq__(self, other: object) -> bool:
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
        return Config(self._data)

    def __deepcopy__(self, memo: dict[str, Any]) -> Config:
        return Config(self._data)

    def __reduce__(self) -> tuple[Any, ...]:
        return (Config, (_rebuild(self._data),))


# --------------------------------------------------------------------------- validation
