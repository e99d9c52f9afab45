"""The plain trees under every Config: nested dicts and lists of scalars, copied, merged and
walked without recursion, so no depth a parser accepts can overflow the stack."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from . import sdn
from .errors import ConfigError, SdnError
from .sdn import Key, KeyPath, PathSpec

MISSING = "???"
"""The mandatory-value marker: a key whose value must be given before it is read."""

_ABSENT = object()
_NOTHING = object()


class View:
    """Base of the views over a plain tree (:class:`aiotrain.config.Config`): ``_data`` is the
    tree node it shows, unwrapped wherever a tree is copied."""

    __slots__ = ()
    _data: Any


def _dotted(key: Iterable[object]) -> str:
    return ".".join(str(k) for k in key)


_SCALARS = frozenset((str, int, float, bool, type(None)))


def _rebuild(data: object, leaf: Callable[[KeyPath, Any], object] | None = None,
             key: KeyPath = (), max_values: int | None = None) -> Any:
    """A deep copy of ``data`` (dicts and lists; tuples become lists; Configs are unwrapped),
    with ``leaf(key, value)`` applied to every other value. Iterative, so no depth can recurse;
    a tree nested deeper than ``sdn.MAX_DEPTH`` below the root (``key`` counts: it is where
    ``data`` sits) is a ConfigError, as is one of more than ``max_values`` values (a YAML alias
    bomb, a self-containing list)."""
    data = data._data if isinstance(data, View) else data
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
            if cls not in _SCALARS and cls is not dict and cls is not list and isinstance(v, View):
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


def _merge_into(dst: dict[str, Any], src: Mapping[str, object], append_arrays: bool,
                at: KeyPath = ()) -> None:
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


def _child(node: object, k: Key) -> Any:
    """``node[k]`` for a dict (``k`` as a string) or a list (``k`` as an index), or _ABSENT."""
    if isinstance(node, dict):
        return node.get(k if isinstance(k, str) else str(k), _ABSENT)
    if isinstance(node, list):
        try:
            return node[int(k)]
        except (ValueError, IndexError):
            return _ABSENT
    return _ABSENT


def _keys(path: PathSpec) -> list[Key]:
    try:
        return sdn.split_path(path if isinstance(path, str) else list(path))
    except SdnError as exc:
        raise ConfigError(exc.msg, full_key=str(path)) from None


# --------------------------------------------------------------------------- interpolation
