"""Interpolation: ``${a.b}``, ``${.sibling}``, ``${resolver:args}`` and the built-in resolvers.

:class:`_Resolver` resolves against one root, detects cycles, resolves each key once (values that
repeat each other cost time linear in what they produce) and charges what it builds against
:data:`MAX_RESOLVED_SIZE`.
"""

from __future__ import annotations

import datetime
import os
import re
import socket
import sys
import time
from collections.abc import Callable
from typing import Any

from .errors import ConfigError, InterpolationError, MissingValueError
from .sdn import KeyPath
from .tree import _ABSENT, _NOTHING, MISSING, _child, _dotted, _keys, _rebuild

_MAX_INTERPOLATION_DEPTH = 64
MAX_RESOLVED_SIZE = 1 << 24
"""Most that interpolation may produce in one resolve (or one read): characters of the strings
it builds plus 64 per value it copies (about their memory in bytes). Past it, an
InterpolationError names the key."""


_RESOLVERS: dict[str, Callable[..., object]] = {}
_RESOLVER_NAME = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_.]*)\s*:")


def _env(name: str, default: object = _NOTHING) -> object:
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


_VALUE_SIZE = 64  # what a copied value weighs against the budget, in characters (its memory)


def _size(value: object) -> int:
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

    def __init__(self, root: object) -> None:
        self.root = root
        self.active: list[str] = []
        self.cache: dict[tuple[str, tuple[object, ...]], object] = {}  # (resolver, args): result
        self.done: dict[KeyPath, Any] = {}  # the final value at a key
        self.budget = MAX_RESOLVED_SIZE

    def charge(self, size: int, where: str) -> None:
        """Count ``size`` against the budget; an InterpolationError naming ``where`` past it."""
        self.budget -= size
        if self.budget < 0:
            raise InterpolationError(
                f"{where}: interpolation produces more than {MAX_RESOLVED_SIZE} characters "
                "(values that repeat each other grow exponentially)", full_key=where)

    def value(self, key: KeyPath, raw: object) -> Any:
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

    def text(self, s: str, key: KeyPath, where: str) -> object:
        parts = _segments(s, where)
        if len(parts) == 1 and parts[0][0]:
            return self.inner(parts[0][1], key, where)
        if not any(is_interp for is_interp, _ in parts):
            return "".join(text for _, text in parts)
        pieces = [str(self.inner(text, key, where)) if is_interp else text
                  for is_interp, text in parts]
        self.charge(sum(map(len, pieces)), where)  # before the join allocates it
        return "".join(pieces)

    def inner(self, body: str, key: KeyPath, where: str) -> object:
        m = _RESOLVER_NAME.match(body)
        if m is not None:
            return self.call(m.group(1), body[m.end():], key, where)
        path = self.text(body.strip(), key, where) if "${" in body else body.strip()
        return self.lookup(str(path), key, where)

    def call(self, name: str, arg_text: str, key: KeyPath, where: str) -> object:
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

    def arg(self, text: str, key: KeyPath, where: str) -> object:
        if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
            return text[1:-1]
        return self.text(text, key, where) if "${" in text else text

    def lookup(self, path: str, key: KeyPath, where: str) -> Any:
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
