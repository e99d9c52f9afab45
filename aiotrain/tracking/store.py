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
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import msgspec

from ..files import atomic_file, atomic_write

__all__ = [
    "atomic_file",
    "atomic_write",
    "check_name",
    "decode_nonfinite",
    "encode_nonfinite",
    "flatten",
    "get_dir",
    "get_mode",
    "jsonable",
    "read_json",
    "read_sdn",
    "set_dir",
    "set_mode",
    "write_json",
    "write_sdn",
]

MODES = ("offline", "disabled")
_settings: dict[str, Any] = {"dir": None, "mode": "offline"}
_NONFINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}
_BAD_NAME = re.compile(r"[/\\\x00]")


def set_dir(path: str | os.PathLike[str] | None) -> None:
    """Use ``path`` as the tracking root (None: back to ``AIOTRAIN_DIR`` or ``./.aiotrain``)."""
    _settings["dir"] = None if path is None else Path(path)


def get_dir() -> Path:
    """The tracking root: ``set_dir``'s value, else ``$AIOTRAIN_DIR``, else ``./.aiotrain``."""
    if _settings["dir"] is not None:
        return _settings["dir"]
    return Path(os.environ.get("AIOTRAIN_DIR") or ".aiotrain")


def set_mode(mode: str) -> None:
    """``"offline"`` (write locally, the default) or ``"disabled"`` (write no files at all)."""
    if mode not in MODES:
        raise ValueError(f"tracking mode must be one of {MODES}, got {mode!r}")
    _settings["mode"] = mode


def get_mode() -> str:
    """The current tracking mode."""
    return _settings["mode"]


def check_name(kind: str, name: str) -> str:
    """Reject names that would escape their folder: empty, path separators, ``.`` or ``..``."""
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"{kind} name must be a non-empty string, got {name!r}")
    if _BAD_NAME.search(name) or ".." in name or name.strip() == ".":
        raise ValueError(f"{kind} name {name!r} must not contain path separators or '..'")
    return name


def encode_nonfinite(value: Any) -> Any:
    """A copy of ``value`` with nan / inf / -inf floats as the strings ``"nan"``, ``"inf"``, ``"-inf"``."""
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        return "nan" if value != value else ("inf" if value > 0 else "-inf")
    if isinstance(value, Mapping):
        return {k: encode_nonfinite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [encode_nonfinite(v) for v in value]
    return value


def decode_nonfinite(value: Any) -> Any:
    """The inverse of ``encode_nonfinite`` for a top-level value: ``"nan"`` reads back as nan."""
    if isinstance(value, str):
        return _NONFINITE.get(value, value)
    return value


def jsonable(value: Any) -> Any:
    """``value`` as plain JSON-like data (str keys; tuples, sets and paths converted; tensors to
    numbers or lists; anything else to its ``repr``), for config and metadata files."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [jsonable(v) for v in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if hasattr(value, "tolist"):  # tensors and numpy arrays / scalars
        return jsonable(value.tolist())
    return repr(value)


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings as one level of dotted keys: ``{"a": {"b": 1}}`` -> ``{"a.b": 1}``."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _sdn() -> Any:
    from ..config import sdn  # imported late: tracking works without the config package loaded

    return sdn


def write_sdn(path: Path, obj: Mapping[str, Any]) -> None:
    """Write ``obj`` as SDN atomically; non-finite floats become the strings SDN can hold."""
    atomic_write(path, _sdn().dumps(encode_nonfinite(jsonable(obj))).encode("utf-8"))


def read_sdn(path: Path) -> dict[str, Any]:
    """Read an SDN file written by ``write_sdn``."""
    return _sdn().loads(path.read_text(encoding="utf-8"))


_encoder = msgspec.json.Encoder()


def write_json(path: Path, obj: Any) -> None:
    """Write ``obj`` as JSON atomically (the artifact store's internal index files)."""
    atomic_write(path, _encoder.encode(obj))


def read_json(path: Path) -> Any:
    """Read a JSON file written by ``write_json``."""
    return msgspec.json.decode(path.read_bytes())
