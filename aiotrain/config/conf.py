"""Conf and Config: OmegaConf-shaped configs built on SDN.

A :class:`Config` is a view on plain nested dicts and lists: ``cfg.train.lr`` and
``cfg["train"]["lr"]`` read through it, ``${a.b}`` interpolations are resolved when read (as
OmegaConf does) and ``???`` marks a mandatory value. :class:`Conf` holds the operations as
static methods, so that config keys never collide with method names: loading (SDN, YAML,
dicts, dotlists), ``merge``, ``resolve``, path access, freezing, ``validate``, ``to_dict``,
``to_sdn`` and ``save``.

Where each part lives: :mod:`.tree` (the plain trees: copy, merge, walk), :mod:`.node` (the
:class:`Config` view), :mod:`.interpolation` (``${...}`` and the resolvers), :mod:`.validate`
(``Conf.validate``); this module holds ``Conf`` and the loaders (YAML, dotlists).

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

import os
import re
import typing
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from . import sdn
from .errors import ConfigError, FrozenConfigError, MissingValueError, SdnError
from .interpolation import _RESOLVERS, MAX_RESOLVED_SIZE, _Resolver
from .node import Config
from .tree import _ABSENT, _NOTHING, MISSING, _child, _keys, _merge_into, _rebuild
from .validate import _Validator

__all__ = ["MAX_RESOLVED_SIZE", "MISSING", "Conf", "Config"]

T = TypeVar("T")

_MAX_YAML_VALUES = 1 << 20  # a YAML file's aliases may not expand it past this many values


def _plain(cfg: object) -> Any:
    if isinstance(cfg, Config):
        cfg._used_whole()
        return cfg._data
    return cfg


class Conf:
    """The config operations (static methods, OmegaConf style): ``Conf.load_sdn(path)``,
    ``Conf.merge(a, b)``, ``Conf.resolve(cfg)``, ``Conf.validate(Schema, cfg)``, ..."""

    MISSING = MISSING

    # loading
    @staticmethod
    def from_dict(data: Mapping[str, object]) -> Config:
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
    def merge(*cfgs: Config | Mapping[str, object], append_arrays: bool = False) -> Config:
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
    def register_resolver(name: str, fn: Callable[..., object], *, replace: bool = False) -> None:
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
    def get(cfg: Config, path: str, default: object = _NOTHING) -> Any:
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
    def set(cfg: Config, path: str, value: object) -> None:
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
    def update(cfg: Config, path: str, value: object, *, merge: bool = True) -> None:
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
    def validate(schema: type[T], cfg: Config | Mapping[str, object], convert: bool = True,
                 strict: bool = False, allow_missing: bool = False) -> T:
        """Check ``cfg`` (resolved first) against a msgspec Struct or dataclass and return the
        instance with defaults filled in. ``convert`` accepts "100" for 100; ``strict``
        rejects keys the schema does not declare; ``allow_missing`` leaves absent required
        fields as ``"???"``. Errors are SchemaErrors naming the full dotted path."""
        data = Conf.to_dict(cfg, resolve=True)
        return _Validator(convert, strict, allow_missing).build(schema, data, ())

    @staticmethod
    def to_dict(cfg: Config | Mapping[str, object], resolve: bool = False) -> dict[str, Any]:
        """Plain nested dicts and lists (a deep copy); ``resolve=True`` interpolates first."""
        if resolve:
            return typing.cast(dict[str, Any],
                               Conf.resolve(cfg if isinstance(cfg, Config) else Config(cfg))._data)
        return typing.cast(dict[str, Any], _rebuild(_plain(cfg)))

    @staticmethod
    def to_sdn(cfg: Config | Mapping[str, object], resolve: bool = False) -> str:
        """The config as SDN text."""
        return sdn.dumps(Conf.to_dict(cfg, resolve=resolve))

    @staticmethod
    def save(cfg: Config | Mapping[str, object], path: str | os.PathLike[str], resolve: bool = False) -> None:
        """Write the config to ``path`` atomically: SDN, or YAML for ``.yaml`` / ``.yml``."""
        data = Conf.to_dict(cfg, resolve=resolve)
        if Path(path).suffix in (".yaml", ".yml"):
            import yaml

            text = yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
        else:
            text = sdn.dumps(data)
        sdn.write_atomic(path, text)
