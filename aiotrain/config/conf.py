"""Conf and Config: OmegaConf-shaped configs built on SDN.

A :class:`Config` is a view on plain nested dicts and lists: ``cfg.train.lr`` and
``cfg["train"]["lr"]`` read through it, ``${a.b}`` interpolations are resolved when read (as
OmegaConf does) and ``???`` marks a mandatory value. :class:`Conf` holds the operations as
static methods, so that config keys never collide with method names: loading (SDN, YAML,
dicts, dotlists), ``merge``, ``resolve``, path access, freezing, ``validate``, ``to_dict``,
``to_sdn`` and ``save``.

Decisions (OmegaConf's behaviour unless noted; see docs/architecture.md):

- Reading a key that is not there raises :class:`MissingValueError` (also a KeyError and an
  AttributeError); ``Conf.set_throw_on_missing(cfg, False)`` makes absent keys and ``???``
  values read as None instead.
- Interpolations: ``${a.b}`` (absolute), ``${.b}`` / ``${..b}`` (relative to the node holding
  the value), ``${name:arg1,arg2}`` resolvers (arguments are strings after their own
  interpolation; quote with ``'...'`` or ``"..."`` to keep commas), ``\\${`` for a literal
  ``${``. A string that is exactly one interpolation takes the referenced value's type; inside
  a longer string values are inserted with ``str()``. Within one ``resolve`` a resolver called
  twice with the same arguments returns the first result (``${time.now:}`` agrees everywhere).
- ``merge``: a ``???`` in a later config does not replace an existing value.
- Dotlist ``key=`` (nothing after ``=``) sets None, as OmegaConf's ``from_dotlist`` does.
- ``freeze`` applies to the whole tree the Config belongs to (views share one root).
- ``to_dict(cfg, resolve=False)`` copies as written; pass ``resolve=True`` for final values.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import re
import socket
import sys
import time
import types
import typing
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import msgspec

from . import sdn
from .errors import (
    ConfigError,
    FrozenConfigError,
    InterpolationError,
    MissingValueError,
    SchemaError,
    SdnError,
)

__all__ = ["MAX_RESOLVED_SIZE", "MISSING", "Conf", "Config"]

MISSING = "???"
"""The mandatory-value marker: a key whose value must be given before it is read."""

_ABSENT = object()
_NOTHING = object()
_MAX_INTERPOLATION_DEPTH = 64
MAX_RESOLVED_SIZE = 1 << 24
"""Most that interpolation may produce in one resolve (or one read): characters of the strings
it builds plus 64 per value it copies (about their memory in bytes). Past it, an
InterpolationError names the key."""
_MAX_YAML_VALUES = 1 << 20  # a YAML file's aliases may not expand it past this many values


def _dotted(key: Iterable[Any]) -> str:
    return ".".join(str(k) for k in key)


# --------------------------------------------------------------------------- plain trees

_SCALARS = frozenset((str, int, float, bool, type(None)))


def _rebuild(data: Any, leaf: Callable[[tuple[Any, ...], Any], Any] | None = None,
             key: tuple[Any, ...] = (), max_values: int | None = None) -> Any:
    """A deep copy of ``data`` (dicts and lists; tuples become lists; Configs are unwrapped),
    with ``leaf(key, value)`` applied to every other value. Iterative, so no depth can recurse;
    a tree nested deeper than ``sdn.MAX_DEPTH`` below the root (``key`` counts: it is where
    ``data`` sits) is a ConfigError, as is one of more than ``max_values`` values (a YAML alias
    bomb, a self-containing list)."""
    data = data._data if isinstance(data, Config) else data
    if not isinstance(data, Mapping | list | tuple):
        return leaf(key, data) if leaf else data
    root: Any = {} if isinstance(data, Mapping) else []
    stack = [(data, root, key)]
    count = 0
    while stack:
        src, dst, at = stack.pop()
        if len(at) >= sdn.MAX_DEPTH:
            raise ConfigError(f"{_dotted(at[:8])}...: nested deeper than {sdn.MAX_DEPTH} levels",
                              full_key=_dotted(at))
        pairs = src.items() if isinstance(src, Mapping) else enumerate(src)
        for k, v in pairs:
            if isinstance(dst, dict) and not isinstance(k, str):
                raise ConfigError(f"config keys must be strings: {_dotted((*at, k))} is a "
                                  f"{type(k).__name__}", full_key=_dotted((*at, k)))
            cls = v.__class__
            if cls is Config:
                v = v._data
                cls = v.__class__
            if cls is dict or cls is list or (cls not in _SCALARS and isinstance(v, Mapping | tuple)):
                child: Any = {} if isinstance(v, Mapping) else []
                stack.append((v, child, (*at, k)))
            else:
                child = leaf((*at, k), v) if leaf else v
            if isinstance(dst, dict):
                dst[k] = child
            else:
                dst.append(child)
        if max_values is not None:
            count += len(src)
            if count > max_values:
                raise ConfigError(f"{_dotted(at) or 'the config'}: more than {max_values} values "
                                  "(aliases that repeat each other?)", full_key=_dotted(at))
    return root


_VALUE_SIZE = 64  # what a copied value weighs against the budget, in characters (its memory)


def _size(value: Any) -> int:
    """How much a resolved value weighs: characters of its strings plus 64 per value."""
    if isinstance(value, str):
        return len(value)
    if not isinstance(value, dict | list):
        return _VALUE_SIZE
    total, stack = 0, [value]
    while stack:
        node = stack.pop()
        items = node.values() if isinstance(node, dict) else node
        total += (len(node) + 1) * _VALUE_SIZE
        for v in items:
            if isinstance(v, str):
                total += len(v)
            elif isinstance(v, dict | list):
                stack.append(v)
    return total


def _merge_into(dst: dict[str, Any], src: dict[str, Any], append_arrays: bool,
                at: tuple[Any, ...] = ()) -> None:
    """Deep-merge ``src`` into ``dst`` (found at key ``at``) in place: dicts merge, lists are
    replaced or appended."""
    stack = [(dst, src, at)]
    while stack:
        d, s, at = stack.pop()
        for k, v in s.items():
            cur = d.get(k, _ABSENT)
            if v == MISSING and isinstance(v, str) and cur is not _ABSENT:
                continue
            if isinstance(v, dict) and isinstance(cur, dict):
                stack.append((cur, v, (*at, k)))
            elif append_arrays and isinstance(v, list) and isinstance(cur, list):
                cur.extend(_rebuild(v, key=(*at, k)))
            else:
                d[k] = _rebuild(v, key=(*at, k))


def _child(node: Any, k: Any) -> Any:
    """``node[k]`` for a dict (``k`` as a string) or a list (``k`` as an index), or _ABSENT."""
    if isinstance(node, dict):
        return node.get(k if isinstance(k, str) else str(k), _ABSENT)
    if isinstance(node, list):
        try:
            return node[int(k)]
        except (ValueError, IndexError):
            return _ABSENT
    return _ABSENT


def _keys(path: str | Iterable[Any]) -> list[Any]:
    try:
        return sdn.split_path(path if isinstance(path, str) else list(path))
    except SdnError as exc:
        raise ConfigError(exc.msg, full_key=str(path)) from None


# --------------------------------------------------------------------------- interpolation

_RESOLVERS: dict[str, Callable[..., Any]] = {}
_RESOLVER_NAME = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_.]*)\s*:")


def _env(name: str, default: Any = _NOTHING) -> Any:
    value = os.environ.get(name)
    if value is None:
        if default is _NOTHING:
            raise KeyError(f"environment variable {name} is not set and no default was given")
        return default
    return value


_RESOLVERS.update({
    "env": _env,
    "path.join": lambda *parts: os.path.join(*parts),
    "path.abspath": lambda p: os.path.abspath(p),
    "path.dirname": lambda p: os.path.dirname(p),
    "path.basename": lambda p: os.path.basename(p),
    "path.exists": lambda p: os.path.exists(p),
    "time.now": lambda fmt="%Y-%m-%d_%H-%M-%S": datetime.datetime.now().strftime(fmt),
    "time.unix": lambda: int(time.time()),
    "sys.cpu_count": lambda: os.cpu_count() or 1,
    "sys.hostname": lambda: socket.gethostname(),
    "sys.platform": lambda: sys.platform,
    "sys.cwd": lambda: os.getcwd(),
})
_RESOLVERS["oc.env"] = _env  # OmegaConf's spelling, for configs moved over from it


def _segments(s: str, where: str) -> list[tuple[bool, str]]:
    """Split ``s`` into literal text ``(False, text)`` and ``(True, inner)`` interpolations."""
    out: list[tuple[bool, str]] = []
    buf: list[str] = []
    i, n = 0, len(s)
    while i < n:
        if s.startswith("\\${", i):
            buf.append("${")
            i += 3
        elif s.startswith("${", i):
            end = _closing_brace(s, i + 2, where)
            if buf:
                out.append((False, "".join(buf)))
                buf = []
            out.append((True, s[i + 2:end]))
            i = end + 1
        else:
            j = s.find("$", i + 1)
            j = n if j < 0 else j
            k = s.find("\\", i + 1, j)  # stop before an escape, so it is seen
            j = j if k < 0 else k
            buf.append(s[i:j])
            i = j
    if buf:
        out.append((False, "".join(buf)))
    return out


def _closing_brace(s: str, i: int, where: str) -> int:
    depth, quote = 1, ""
    while i < len(s):
        c = s[i]
        if quote:
            quote = "" if c == quote else quote
        elif c in "'\"":
            quote = c
        elif s.startswith("${", i):
            depth += 1
            if depth > _MAX_INTERPOLATION_DEPTH:
                raise InterpolationError(f"{where}: interpolations nested too deeply", full_key=where)
            i += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    raise InterpolationError(f"{where}: unclosed '${{' in {s!r}", full_key=where)


def _split_args(text: str) -> list[str]:
    """Resolver arguments: split at commas outside quotes and nested ``${...}``."""
    args: list[str] = []
    buf: list[str] = []
    depth, quote = 0, ""
    i = 0
    while i < len(text):
        c = text[i]
        if quote:
            quote = "" if c == quote else quote
        elif c in "'\"":
            quote = c
        elif text.startswith("${", i):
            depth += 1
        elif c == "}" and depth:
            depth -= 1
        elif c == "," and not depth:
            args.append("".join(buf))
            buf = []
            i += 1
            continue
        buf.append(c)
        i += 1
    args.append("".join(buf))
    return [a.strip() for a in args] if text.strip() else []


class _Resolver:
    """Resolves interpolations against one root, detecting cycles and caching resolver calls.

    Each key is resolved once per resolver (``done``), so values that repeat each other
    (``l2: ${l1}${l1}``) cost time linear in what they produce, not exponential; what
    interpolation produces is charged against :data:`MAX_RESOLVED_SIZE` before it is built.
    """

    def __init__(self, root: Any) -> None:
        self.root = root
        self.active: list[str] = []
        self.cache: dict[tuple[Any, ...], Any] = {}
        self.done: dict[tuple[Any, ...], Any] = {}
        self.budget = MAX_RESOLVED_SIZE

    def charge(self, size: int, where: str) -> None:
        """Count ``size`` against the budget; an InterpolationError naming ``where`` past it."""
        self.budget -= size
        if self.budget < 0:
            raise InterpolationError(
                f"{where}: interpolation produces more than {MAX_RESOLVED_SIZE} characters "
                "(values that repeat each other grow exponentially)", full_key=where)

    def value(self, key: tuple[Any, ...], raw: Any) -> Any:
        """The final value of ``raw`` found at ``key``: strings interpolated, nodes resolved."""
        if isinstance(raw, dict | list):
            done = self.done.get(key, _ABSENT)
            if done is _ABSENT:
                done = self.done[key] = _rebuild(raw, self.value, key)
                return done
            return _rebuild(done)  # a second use gets its own copy
        if type(raw) is not str or "$" not in raw:
            return raw
        done = self.done.get(key, _ABSENT)
        if done is not _ABSENT:
            return done if not isinstance(done, dict | list) else _rebuild(done)
        where = _dotted(key)
        if where in self.active:
            cycle = [*self.active[self.active.index(where):], where]
            raise InterpolationError(f"interpolation cycle: {' -> '.join(cycle)}", full_key=where)
        if len(self.active) >= _MAX_INTERPOLATION_DEPTH:
            raise InterpolationError(f"{where}: interpolation chain longer than "
                                     f"{_MAX_INTERPOLATION_DEPTH}", full_key=where)
        self.active.append(where)
        try:
            done = self.done[key] = self.text(raw, key, where)
        finally:
            self.active.pop()
        return done if not isinstance(done, dict | list) else _rebuild(done)

    def text(self, s: str, key: tuple[Any, ...], where: str) -> Any:
        parts = _segments(s, where)
        if len(parts) == 1 and parts[0][0]:
            return self.inner(parts[0][1], key, where)
        if not any(is_interp for is_interp, _ in parts):
            return "".join(text for _, text in parts)
        pieces = [str(self.inner(text, key, where)) if is_interp else text
                  for is_interp, text in parts]
        self.charge(sum(map(len, pieces)), where)  # before the join allocates it
        return "".join(pieces)

    def inner(self, body: str, key: tuple[Any, ...], where: str) -> Any:
        m = _RESOLVER_NAME.match(body)
        if m is not None:
            return self.call(m.group(1), body[m.end():], key, where)
        path = self.text(body.strip(), key, where) if "${" in body else body.strip()
        return self.lookup(str(path), key, where)

    def call(self, name: str, arg_text: str, key: tuple[Any, ...], where: str) -> Any:
        fn = _RESOLVERS.get(name)
        if fn is None:
            raise InterpolationError(f"{where}: unknown resolver {name!r} (known: "
                                     f"{', '.join(sorted(_RESOLVERS))})", full_key=where)
        args = tuple(self.arg(a, key, where) for a in _split_args(arg_text))
        try:
            cache_key = (name, args)
            hash(cache_key)
        except TypeError:
            cache_key = None
        if cache_key is not None and cache_key in self.cache:
            return self.cache[cache_key]
        try:
            result = fn(*args)
        except Exception as exc:
            raise InterpolationError(f"{where}: resolver {name!r} failed: {exc}",
                                     full_key=where) from exc
        if cache_key is not None:
            self.cache[cache_key] = result
        return result

    def arg(self, text: str, key: tuple[Any, ...], where: str) -> Any:
        if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
            return text[1:-1]
        return self.text(text, key, where) if "${" in text else text

    def lookup(self, path: str, key: tuple[Any, ...], where: str) -> Any:
        if path.startswith("."):
            up = len(path) - len(path.lstrip("."))
            base = key[:max(len(key) - up, 0)]
            rest = path[up:]
        else:
            base, rest = (), path
        try:
            target = (*base, *(_keys(rest) if rest else []))
        except ConfigError:
            raise InterpolationError(f"{where}: bad interpolation key {path!r}", full_key=where) from None
        node = self.root
        for k in target:
            node = _child(node, k)
            if node is _ABSENT:
                raise InterpolationError(f"{where}: interpolation key {_dotted(target)!r} not found",
                                         full_key=where)
        if node == MISSING and isinstance(node, str):
            raise MissingValueError(f"{where}: interpolates {_dotted(target)!r}, which is "
                                    "missing (???)", full_key=where)
        result = self.value(tuple(target), node)
        self.charge(_size(result), where)  # each use of a value is a copy in the output
        return result


# --------------------------------------------------------------------------- Config

class _State:
    """What all views of one config share."""

    __slots__ = ("frozen", "root", "throw_on_missing")

    def __init__(self, root: Any) -> None:
        self.root, self.frozen, self.throw_on_missing = root, False, True


class Config:
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

@dataclasses.dataclass(frozen=True)
class _Field:
    name: str      # the constructor argument
    data_key: str  # the key in the config
    type: Any
    required: bool


def _schema_fields(schema: type) -> list[_Field]:
    if isinstance(schema, type) and issubclass(schema, msgspec.Struct):
        return [_Field(f.name, f.encode_name, f.type, f.required)
                for f in msgspec.structs.fields(schema)]
    if dataclasses.is_dataclass(schema) and isinstance(schema, type):
        hints = typing.get_type_hints(schema)
        return [_Field(f.name, f.name, hints.get(f.name, Any),
                       f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING)
                for f in dataclasses.fields(schema) if f.init]
    raise SchemaError(f"a schema must be a msgspec Struct or a dataclass, not {schema!r}")


def _is_schema(tp: Any) -> bool:
    return isinstance(tp, type) and (issubclass(tp, msgspec.Struct) or dataclasses.is_dataclass(tp))


def _schema_in(tp: Any) -> type | None:
    """The Struct / dataclass that a field of type ``tp`` holds (``X`` or ``X | None``)."""
    if _is_schema(tp):
        return typing.cast(type, tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(inner) == 1 and _is_schema(inner[0]):
            return typing.cast(type, inner[0])
    return None


_MSGSPEC_AT = re.compile(r" - at `\$(.*)`$")


class _Validator:
    """Builds a schema instance from plain data, naming the full dotted path of any problem."""

    def __init__(self, convert: bool, strict: bool, allow_missing: bool) -> None:
        self.convert, self.strict, self.allow_missing = convert, strict, allow_missing

    def build(self, schema: type, data: Any, key: tuple[Any, ...]) -> Any:
        where = _dotted(key) or "the config"
        if not isinstance(data, dict):
            raise SchemaError(f"{where}: expected a dict for {schema.__name__}, got "
                              f"{type(data).__name__}", full_key=_dotted(key))
        fields = _schema_fields(schema)
        if self.strict:
            known = {f.data_key for f in fields}
            for k in data:
                if k not in known:
                    full = _dotted((*key, k))
                    raise SchemaError(f"{full}: unknown key (not a field of {schema.__name__})",
                                      full_key=full)
        kwargs: dict[str, Any] = {}
        for f in fields:
            value = data.get(f.data_key, _ABSENT)
            if value is _ABSENT or (type(value) is str and value == MISSING):
                if f.required and not self.allow_missing:
                    full = _dotted((*key, f.data_key))
                    raise SchemaError(f"{full}: missing required value ({schema.__name__}."
                                      f"{f.name})", full_key=full)
                if f.required:
                    kwargs[f.name] = MISSING
                continue
            kwargs[f.name] = self.value(f.type, value, (*key, f.data_key))
        try:
            return schema(**kwargs)
        except (TypeError, ValueError) as exc:
            raise SchemaError(f"{where}: {schema.__name__}: {exc}", full_key=_dotted(key)) from exc

    def value(self, tp: Any, value: Any, key: tuple[Any, ...]) -> Any:
        nested = _schema_in(tp)
        if nested is not None and isinstance(value, dict):
            return self.build(nested, value, key)
        if self.convert and tp is str and type(value) in (int, float):
            return str(value)
        try:
            return msgspec.convert(value, type=tp, strict=not self.convert)
        except msgspec.ValidationError as exc:
            msg = str(exc)
            m = _MSGSPEC_AT.search(msg)
            full = _dotted(key)
            if m is not None:
                msg = msg[:m.start()]
                full += re.sub(r"\[(\d+)\]", r".\1", m.group(1))
            raise SchemaError(f"{full}: {msg}", full_key=full) from None


# --------------------------------------------------------------------------- Conf

def _plain(cfg: Any) -> Any:
    return cfg._data if isinstance(cfg, Config) else cfg


class Conf:
    """The config operations (static methods, OmegaConf style): ``Conf.load_sdn(path)``,
    ``Conf.merge(a, b)``, ``Conf.resolve(cfg)``, ``Conf.validate(Schema, cfg)``, ..."""

    MISSING = MISSING

    # loading
    @staticmethod
    def from_dict(data: Mapping[str, Any]) -> Config:
        """A Config holding a deep copy of ``data`` (keys must be strings)."""
        if not isinstance(data, Mapping | Config):
            raise ConfigError(f"a config must be a dict, not {type(data).__name__}")
        return Config(data)

    @staticmethod
    def load_sdn(path: str | os.PathLike[str]) -> Config:
        """Read an SDN file; syntax errors are SdnErrors with the file, line and column."""
        return Config(sdn.load(path))

    @staticmethod
    def load_yaml(path: str | os.PathLike[str]) -> Config:
        """Read a YAML file with PyYAML's safe loader (its C version when available).

        The limits of SDN apply: ``sdn.MAX_FILE_BYTES``, ``sdn.MAX_DEPTH``, and aliases may
        not expand the file past a few million values."""
        import yaml

        loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
        with open(path, "rb") as f:
            text = f.read(sdn.MAX_FILE_BYTES + 1)
        if len(text) > sdn.MAX_FILE_BYTES:
            raise ConfigError(f"{path}: larger than {sdn.MAX_FILE_BYTES} bytes, the limit for a "
                              "config", path=os.fspath(path))
        try:
            data = yaml.load(text, Loader=loader)
        except RecursionError:
            raise ConfigError(f"{path}: nested deeper than {sdn.MAX_DEPTH} levels",
                              path=os.fspath(path)) from None
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            raise ConfigError(f"{exc.problem or exc.context}", path=os.fspath(path),
                              line=mark.line + 1 if mark else None,
                              col=mark.column + 1 if mark else None) from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: {exc}", path=os.fspath(path)) from None
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: the top level must be a mapping, not "
                              f"{type(data).__name__}", path=os.fspath(path))
        try:
            return Config(_rebuild(data, max_values=_MAX_YAML_VALUES))
        except ConfigError as exc:
            exc.path = os.fspath(path)
            raise

    @staticmethod
    def parse_dotlist(items: Iterable[str]) -> dict[str, Any]:
        """``["a.b=1", "c=[1, 2]"]`` -> ``{"a": {"b": 1}, "c": [1, 2]}`` (values are SDN)."""
        out: dict[str, Any] = {}
        for item in items:
            if not isinstance(item, str) or "=" not in item:
                raise ConfigError(f"override {item!r} is not key=value")
            key, _, text = item.partition("=")
            parts = key.strip().split(".")
            if not key.strip() or any(not p.strip() for p in parts):
                raise ConfigError(f"override {item!r} has an empty key", full_key=key)
            try:
                value = sdn.parse_value(text) if text.strip(" \t") else None
            except SdnError as exc:
                raise ConfigError(f"override {item!r}: bad value: {exc.msg}",
                                  full_key=key.strip()) from None
            node = out
            for p in parts[:-1]:
                p = p.strip()
                if not isinstance(node.get(p), dict):
                    node[p] = {}
                node = node[p]
            node[parts[-1].strip()] = value
        return out

    @staticmethod
    def from_cli_dotlist(items: Iterable[str]) -> Config:
        """A Config from ``key.path=value`` command-line overrides."""
        return Config(Conf.parse_dotlist(items))

    # combining and resolving
    @staticmethod
    def merge(*cfgs: Config | Mapping[str, Any], append_arrays: bool = False) -> Config:
        """A new Config: later configs override earlier ones key by key (deeply). Lists are
        replaced, or extended with ``append_arrays=True``."""
        out: dict[str, Any] = {}
        for cfg in cfgs:
            data = _plain(cfg)
            if not isinstance(data, Mapping):
                raise ConfigError(f"can only merge dict configs, not {type(data).__name__}")
            _merge_into(out, data if isinstance(data, dict) else dict(data), append_arrays)
        return Config(out)

    @staticmethod
    def resolve(cfg: Config) -> Config:
        """A new Config with every interpolation replaced by its value (``???`` stays)."""
        data = _plain(cfg)
        root = cfg._state.root if isinstance(cfg, Config) else data
        key = cfg._key if isinstance(cfg, Config) else ()
        resolved = _Resolver(root).value(key, data)
        return Config(resolved)

    @staticmethod
    def register_resolver(name: str, fn: Callable[..., Any], *, replace: bool = False) -> None:
        """Make ``${name:args}`` call ``fn(*args)`` (arguments are strings)."""
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.]*", name or ""):
            raise ConfigError(f"bad resolver name {name!r}")
        if name in _RESOLVERS and not replace:
            raise ConfigError(f"resolver {name!r} is already registered (pass replace=True)")
        _RESOLVERS[name] = fn

    @staticmethod
    def has_resolver(name: str) -> bool:
        return name in _RESOLVERS

    # paths
    @staticmethod
    def get(cfg: Config, path: str, default: Any = _NOTHING) -> Any:
        """The value at a dotted path (``"train.lr"``, ``"layers.0"``), resolved; ``default``
        (None if not given) when absent; a ``???`` raises unless a default is given."""
        node: Any = cfg if isinstance(cfg, Config) else Config(cfg)
        keys = _keys(path)
        for i, k in enumerate(keys):
            if not isinstance(node, Config) or _child(node._data, k) is _ABSENT:
                return None if default is _NOTHING else default
            if i == len(keys) - 1:
                return node._read(k, default)
            node = node._read(k)
        return node

    @staticmethod
    def has_path(cfg: Config, path: str) -> bool:
        """Whether ``path`` exists (a ``???`` value exists)."""
        node = _plain(cfg)
        for k in _keys(path):
            node = _child(node, k)
            if node is _ABSENT:
                return False
        return True

    @staticmethod
    def set(cfg: Config, path: str, value: Any) -> None:
        """Set the value at ``path``, creating intermediate dicts."""
        keys = _keys(path)
        if not keys:
            raise ConfigError("an empty path: give a key")
        node = cfg
        for k in keys[:-1]:
            if _child(node._data, k) is _ABSENT or not isinstance(_child(node._data, k), dict | list):
                node._write(k, {})
            node = node._read(k)
        node._write(keys[-1], value)

    @staticmethod
    def update(cfg: Config, path: str, value: Any, *, merge: bool = True) -> None:
        """Set ``path``; with ``merge`` a dict value is merged into an existing dict there."""
        current: Any = _plain(cfg)
        for k in _keys(path):
            current = _child(current, k)
        value = _plain(value)
        if merge and isinstance(current, dict) and isinstance(value, Mapping):
            if cfg._state.frozen:
                raise FrozenConfigError(f"{path}: the config is frozen", full_key=path)
            _merge_into(current, dict(value), False, tuple(_keys(path)))
        else:
            Conf.set(cfg, path, value)

    @staticmethod
    def delete(cfg: Config, path: str) -> None:
        """Remove the key at ``path``; MissingValueError when it is not there."""
        keys = _keys(path)
        node = cfg
        for k in keys[:-1]:
            child = _child(node._data, k)
            if not isinstance(child, dict | list):
                raise MissingValueError(f"{path}: not found", full_key=path)
            node = Config(child, _state=cfg._state, _key=(*node._key, k))
        node._remove(keys[-1])

    # flags
    @staticmethod
    def freeze(cfg: Config) -> Config:
        """Make the config read-only (the whole tree it belongs to) and return it."""
        cfg._state.frozen = True
        return cfg

    @staticmethod
    def unfreeze(cfg: Config) -> Config:
        """A mutable deep copy."""
        out = Config(cfg._data)
        out._state.throw_on_missing = cfg._state.throw_on_missing
        return out

    @staticmethod
    def is_frozen(cfg: Config) -> bool:
        return bool(cfg._state.frozen)

    @staticmethod
    def set_throw_on_missing(cfg: Config, flag: bool = True) -> Config:
        """Whether absent keys and ``???`` values raise MissingValueError (default) or read
        as None."""
        cfg._state.throw_on_missing = bool(flag)
        return cfg

    # checking and exporting
    @staticmethod
    def validate(schema: type, cfg: Config | Mapping[str, Any], convert: bool = True, strict: bool = False,
                 allow_missing: bool = False) -> Any:
        """Check ``cfg`` (resolved first) against a msgspec Struct or dataclass and return the
        instance with defaults filled in. ``convert`` accepts "100" for 100; ``strict``
        rejects keys the schema does not declare; ``allow_missing`` leaves absent required
        fields as ``"???"``. Errors are SchemaErrors naming the full dotted path."""
        data = Conf.to_dict(cfg, resolve=True)
        return _Validator(convert, strict, allow_missing).build(schema, data, ())

    @staticmethod
    def to_dict(cfg: Config | Mapping[str, Any], resolve: bool = False) -> dict[str, Any]:
        """Plain nested dicts and lists (a deep copy); ``resolve=True`` interpolates first."""
        if resolve:
            return typing.cast(dict[str, Any],
                               Conf.resolve(cfg if isinstance(cfg, Config) else Config(cfg))._data)
        return typing.cast(dict[str, Any], _rebuild(_plain(cfg)))

    @staticmethod
    def to_sdn(cfg: Config | Mapping[str, Any], resolve: bool = False) -> str:
        """The config as SDN text."""
        return sdn.dumps(Conf.to_dict(cfg, resolve=resolve))

    @staticmethod
    def save(cfg: Config | Mapping[str, Any], path: str | os.PathLike[str], resolve: bool = False) -> None:
        """Write the config to ``path`` atomically: SDN, or YAML for ``.yaml`` / ``.yml``."""
        data = Conf.to_dict(cfg, resolve=resolve)
        if Path(path).suffix in (".yaml", ".yml"):
            import yaml

            text = yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
        else:
            text = sdn.dumps(data)
        sdn.write_atomic(path, text)
