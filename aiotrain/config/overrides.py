"""Command-line overrides (``key.path=value``) merged into a config file, each held to what it
replaces.

An override changes a value the file sets: its key must be in the file (a typo such as
``model.dropuot=0.2`` would otherwise add a key nobody reads, and the run would train with the
old value), and its value must be of the kind the file's value is (``optim.lr=fast`` where the
file says ``lr = 3e-3``: a string where a number was). Keys under ``free`` top-level keys (the
runtime's own sections, which a schema checks) may also be added. Every error names the
override; :func:`override_of` tells which override set a key, so that errors found later (a
schema, an interpolation, the task) can name it too.
"""

from __future__ import annotations

import difflib
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

from .conf import Conf
from .errors import ConfigError
from .node import Config
from .sdn import KeyPath, SdnDocument, SdnError, value_text
from .tree import _ABSENT, _child, _dotted

__all__ = ["OverrideError", "apply_overrides", "override_of"]


class OverrideError(ConfigError):
    """An override that cannot be applied; ``override`` is the ``key=value`` text as given."""

    def __init__(self, override: str, msg: str, *, full_key: str | None = None) -> None:
        named = msg.startswith(f"override {override!r}")  # the dotlist parser names it already
        super().__init__(msg if named else f"override {override!r}: {msg}", full_key=full_key)
        self.override = override


def apply_overrides(cfg: Config, items: Sequence[str], *, source: str,
                    free: Collection[str] = ()) -> Config:
    """``cfg`` (read from the file ``source``) with the dotlist ``items`` merged in, in order;
    an OverrideError for an override that is malformed, adds a key the file does not have (outside
    the ``free`` top-level keys) or replaces a value with one of another kind."""
    out = cfg
    for item in items:
        try:
            value = Conf.parse_dotlist([item])
        except ConfigError as exc:
            raise OverrideError(item, exc.msg, full_key=exc.full_key) from None
        out = Conf.merge(out, value)
        _check(cfg, out, value, item, source, free)
    return out


def override_of(key: str | None, items: Sequence[str]) -> str | None:
    """The last override in ``items`` that set ``key`` (or a section holding it, or a key inside
    it), or None when the value at ``key`` comes from the file."""
    if not key:
        return None
    for item in reversed(items):
        name = item.partition("=")[0].strip()
        if key == name or key.startswith(name + "."):
            try:
                if Conf.has_path(Config(Conf.parse_dotlist([item])), key):
                    return item
            except ConfigError:
                return item
        elif name.startswith(key + "."):
            return item
    return None


def _check(cfg: Config, merged: Config, value: dict[str, Any], item: str, source: str,
           free: Collection[str]) -> None:
    """Each value that ``value`` sets (as it reads in ``merged``, the file with the overrides so
    far) must replace one of its kind in ``cfg`` (the file)."""
    stack: list[KeyPath] = [(k,) for k in value]
    while stack:
        key = stack.pop()
        if key[0] in free:
            continue
        old, new = _at(cfg, key), _at(merged, key, unresolved=_UNRESOLVED)
        if new is _UNRESOLVED:
            continue  # its interpolation fails: resolving the config reports it
        if old is _ABSENT:
            raise OverrideError(item, f"{_dotted(key)} is not in {source}{_hint(cfg, key)} (an "
                                "override changes a value the file sets; add new keys to the "
                                "file)", full_key=_dotted(key))
        if isinstance(new, dict) and isinstance(old, dict):
            stack.extend((*key, k) for k in _at_raw(value, key))
        elif not _fits(old, new):
            where = _position(source, key)
            raise OverrideError(item, f"{_show(new)} is {_kind(new)}, but {where} sets "
                                f"{_dotted(key)} to {_kind(old)} ({_show(old)})",
                                full_key=_dotted(key))


_UNRESOLVED = object()


def _at(cfg: Config, key: KeyPath, unresolved: object = None) -> Any:
    """The value at ``key``, resolved when it can be (else ``unresolved``, or as written when
    that is None), or _ABSENT."""
    node: Any = cfg._data
    for k in key:
        node = _child(node, k)
        if node is _ABSENT:
            return _ABSENT
    try:
        value = Conf.get(cfg, _dotted(key))
    except ConfigError:  # in the file: an interpolation that needs the overrides
        return node if unresolved is None else unresolved
    return value._data if isinstance(value, Config) else value


def _at_raw(value: dict[str, Any], key: KeyPath) -> dict[str, Any]:
    """The section at ``key`` of an override's parsed value."""
    node: Any = value
    for k in key:
        node = node[k]
    return dict(node)


def _fits(old: object, new: object) -> bool:
    """Whether ``new`` may replace ``old``: the same kind, null either way, an int for a float."""
    if old is None or new is None:
        return True
    if isinstance(old, bool) or isinstance(new, bool):
        return isinstance(old, bool) and isinstance(new, bool)
    if isinstance(old, float) and isinstance(new, int):
        return True
    return type(old) is type(new) or (isinstance(old, str) and isinstance(new, str))


def _kind(value: object) -> str:
    if isinstance(value, bool):
        return "true or false"
    kinds = {int: "an integer", float: "a number", str: "a string", list: "a list",
             dict: "a section"}
    return next((v for t, v in kinds.items() if isinstance(value, t)), type(value).__name__)


def _show(value: object) -> str:
    if isinstance(value, str):
        return repr(value) if len(value) <= 40 else repr(value[:37]) + "..."
    try:
        text = value_text(value)
    except SdnError:
        text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _hint(cfg: Config, key: KeyPath) -> str:
    parent: Any = cfg._data
    for k in key[:-1]:
        parent = _child(parent, k)
    if not isinstance(parent, dict):
        return ""
    close = difflib.get_close_matches(str(key[-1]), [str(k) for k in parent], n=1, cutoff=0.6)
    return f"; did you mean {_dotted((*key[:-1], close[0]))}?" if close else ""


def _position(source: str, key: KeyPath) -> str:
    """``FILE:LINE:COL`` of ``key`` in the file, or the file's name when it cannot be placed."""
    try:
        at = SdnDocument(Path(source).read_bytes()).position(list(key))
    except (OSError, ConfigError):
        at = None
    return f"{source}:{at[0]}:{at[1]}" if at else source
