"""Where tracking data lives and how it is written: the root folder, the mode, atomic files.

The root is ``./.aiotrain`` unless ``AIOTRAIN_DIR`` or ``Track.set_dir`` says otherwise; runs
live under ``{root}/runs/{project}/{run_id}``, artifacts under ``{root}/artifacts``. Every file
that is rewritten (metadata.sdn, summary.sdn, artifact indexes) goes through ``atomic_write``:
a temp file in the same folder, flush + fsync, ``os.replace``, so a crash leaves either the old
or the new file, never half of one. Append-only logs (metrics.jsonl) are the exception: a crash
may tear their last line, and every reader skips it.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

from ..config import sdn
from ..config.sdn import MAX_DEPTH
from ..files import atomic_file, atomic_write

__all__ = [
    "atomic_file",
    "atomic_write",
    "MAX_NAME_BYTES",
    "check_name",
    "check_text",
    "decode_nonfinite",
    "encode_nonfinite",
    "flatten",
    "get_dir",
    "check_interval",
    "get_flush_interval",
    "get_mode",
    "jsonable",
    "read_json",
    "read_sdn",
    "set_dir",
    "set_flush_interval",
    "set_mode",
    "write_json",
    "write_sdn",
]

MODES = ("offline", "disabled")


@dataclass
class _Settings:
    """The process-wide tracking settings (``set_dir``, ``set_mode``, ``set_flush_interval``)."""

    dir: Path | None = None
    mode: str = "offline"
    flush_interval: float | None = None


_settings = _Settings()
_NONFINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}
_BAD_NAME = re.compile(r"[/\\\x00]")


def set_dir(path: str | os.PathLike[str] | None) -> None:
    """Use ``path`` as the tracking root (None: back to ``AIOTRAIN_DIR`` or ``./.aiotrain``)."""
    _settings.dir = None if path is None else Path(path)


def get_dir() -> Path:
    """The tracking root: ``set_dir``'s value, else ``$AIOTRAIN_DIR``, else ``./.aiotrain``."""
    if _settings.dir is not None:
        return _settings.dir
    return Path(os.environ.get("AIOTRAIN_DIR") or ".aiotrain")


def set_mode(mode: str) -> None:
    """``"offline"`` (write locally, the default) or ``"disabled"`` (write no files at all)."""
    if mode not in MODES:
        raise ValueError(f"tracking mode must be one of {MODES}, got {mode!r}")
    _settings.mode = mode


def get_mode() -> str:
    """The current tracking mode."""
    return _settings.mode


def check_interval(seconds: float | str) -> float:
    """A flush interval: a finite number of seconds >= 0 (0 writes every record at once)."""
    try:
        value = float(seconds)
    except (TypeError, ValueError):
        value = math.nan
    if isinstance(seconds, bool) or not math.isfinite(value) or value < 0:
        raise ValueError(f"flush_interval must be a number of seconds >= 0, got {seconds!r}")
    return value


def set_flush_interval(seconds: float | None) -> None:
    """The loss window of new runs: a logged record is written within ``seconds`` (0: before
    ``log`` returns). None: back to ``$AIOTRAIN_FLUSH_INTERVAL`` or the writer's default (1 s)."""
    _settings.flush_interval = None if seconds is None else check_interval(seconds)


def get_flush_interval() -> float | None:
    """``set_flush_interval``'s value, else ``$AIOTRAIN_FLUSH_INTERVAL``, else None (the default)."""
    if _settings.flush_interval is not None:
        return _settings.flush_interval
    env = os.environ.get("AIOTRAIN_FLUSH_INTERVAL")
    if env:
        try:
            return check_interval(env)
        except ValueError:
            raise ValueError(f"AIOTRAIN_FLUSH_INTERVAL={env!r}: expected a number of seconds "
                             ">= 0") from None
    return None


MAX_NAME_BYTES = 255
"""Longest project or artifact name, in UTF-8 bytes: each is a folder name on disk."""


def check_name(kind: str, name: str) -> str:
    """Reject names that cannot be one folder: empty, path separators, ``.`` or ``..``, lone
    surrogates (no file system stores them), more than :data:`MAX_NAME_BYTES` bytes."""
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"{kind} name must be a non-empty string, got {name!r}")
    if _BAD_NAME.search(name) or ".." in name or name.strip() == ".":
        raise ValueError(f"{kind} name {name!r} must not contain path separators or '..'")
    check_text(f"{kind} name", name)
    size = len(name.encode("utf-8"))
    if size > MAX_NAME_BYTES:
        raise ValueError(f"{kind} name {name[:40]!r}... is {size} bytes in UTF-8; a name is a "
                         f"folder and may have at most {MAX_NAME_BYTES}: use a shorter one")
    return name


def check_text(what: str, text: str) -> str:
    """Reject a string that cannot be written as UTF-8 (it holds a lone surrogate)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"{what} {text[:40]!r} holds a lone surrogate at index {exc.start}, "
                         "which cannot be written as UTF-8: decode it properly first") from None
    return text


def _walk(value: object, leaf: Callable[[Any], object], sequence: tuple[type, ...]) -> Any:
    """A copy of ``value`` with mappings as dicts, ``sequence`` instances as lists and
    ``leaf`` applied to everything else. Iterative; deeper than ``MAX_DEPTH`` + 1 (metadata
    holds a config one level down) or self-containing is a ValueError (nothing deeper can be
    written as SDN)."""
    kinds = (Mapping, *sequence)
    if not isinstance(value, kinds):
        return leaf(value)
    root: Any = {} if isinstance(value, Mapping) else []
    stack: list[tuple[Any, Any, int]] = [(value, root, 0)]
    while stack:
        src, dst, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise ValueError(f"a value nested deeper than {MAX_DEPTH} levels cannot be stored")
        for k, v in (src.items() if isinstance(src, Mapping) else enumerate(src)):
            if isinstance(v, kinds):
                child: Any = {} if isinstance(v, Mapping) else []
                stack.append((v, child, depth + 1))
            else:
                child = leaf(v)
            if isinstance(dst, dict):
                dst[leaf(k) if isinstance(k, str) else str(k)] = child
            else:
                dst.append(child)
    return root


def _finite(value: object) -> object:
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if value != value else ("inf" if value > 0 else "-inf")
    return value


def encode_nonfinite(value: object) -> Any:
    """A copy of ``value`` with nan / inf / -inf floats as the strings ``"nan"``, ``"inf"``, ``"-inf"``."""
    return _walk(value, _finite, (list, tuple))


def decode_nonfinite(value: object) -> Any:
    """The inverse of ``encode_nonfinite`` for a top-level value: ``"nan"`` reads back as nan."""
    if isinstance(value, str):
        return _NONFINITE.get(value, value)
    return value


def _plain(value: object) -> object:
    if isinstance(value, str):
        return value if value.isascii() else check_text("the string", value)
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if hasattr(value, "tolist"):  # tensors and numpy arrays / scalars
        return jsonable(value.tolist())
    return repr(value)


def flatten(tree: Mapping[str, object], prefix: str = "") -> dict[str, Any]:
    """Nested mappings as one level of dotted keys: ``{"a": {"b": 1}}`` -> ``{"a.b": 1}``."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def jsonable(value: object) -> Any:
    """``value`` as plain JSON-like data (str keys; tuples, sets and paths converted; tensors to
    numbers or lists; anything else to its ``repr``), for config and metadata files. A string
    that cannot be written as UTF-8 is a ValueError, raised now rather than by the writer."""
    return _walk(value, _plain, (list, tuple, set, frozenset))


def write_sdn(path: Path, obj: Mapping[str, object]) -> None:
    """Write ``obj`` as SDN atomically; non-finite floats become the strings SDN can hold.

    One level more than ``sdn.MAX_DEPTH`` is allowed: metadata.sdn holds a config (which may
    nest as deep as SDN allows) under its ``config`` key."""
    atomic_write(path, sdn.dumps(encode_nonfinite(jsonable(obj)), extra_depth=1).encode("utf-8"))


def read_sdn(path: Path) -> dict[str, Any]:
    """Read an SDN file written by ``write_sdn`` (an error names the file, line and column)."""
    try:
        return sdn.loads(path.read_text(encoding="utf-8"), extra_depth=1)
    except sdn.SdnError as exc:  # file:line:col first, as every config error
        where = f"{os.fspath(path)}:{exc.line}:{exc.col}" if exc.line is not None else os.fspath(path)
        raise sdn.SdnError(f"{where}: {exc.msg}", path=os.fspath(path)) from None


_encoder = msgspec.json.Encoder()


def write_json(path: Path, obj: object) -> None:
    """Write ``obj`` as JSON atomically (the artifact store's internal index files)."""
    atomic_write(path, _encoder.encode(obj))


def read_json(path: Path) -> Any:
    """Read a JSON file written by ``write_json``."""
    return msgspec.json.decode(path.read_bytes())
