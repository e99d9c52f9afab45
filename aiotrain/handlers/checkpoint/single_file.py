"""One checkpoint as one ``.pt`` file, written by rank 0: atomic writes and verified reads.

The file holds ``{key: state_dict}`` (a bare state_dict when ``to_save`` has one entry), as Ignite
writes, so Ignite's and our ``load_objects`` read each other's files. It is written to a temp file
in the same folder (``.NAME.pt.<random>.tmp``, never ending in ``.pt``; see aiotrain.files),
flushed, fsynced and renamed over the target. Integrity: torch's reader does not check the CRCs
its zip writer stores, so reading verifies them first; a flipped byte in tensor data is then an
error naming the file, not silent garbage.
"""

from __future__ import annotations

import re
import zipfile
from pathlib import Path
from typing import Any

import torch

from ...files import atomic_path
from .errors import CheckpointError

__all__ = ["atomic_save", "read", "verify"]

# torch's weights_only refusal, the global the pickle wanted (a well-formed pickle asking for more
# than data: unsafe), or the reason it could not even be parsed (garbage: corrupt)
_REFUSED = "Weights only load failed"
_GLOBAL = re.compile(r"GLOBAL (?P<name>[^\s]+)")
_WHY = re.compile(r"WeightsUnpickler error:\s*(?P<why>[^\n]+)")


def atomic_save(obj: Any, path: Path) -> None:
    """torch.save to a temp file in the same folder, fsync, rename over ``path``, fsync the folder."""
    with atomic_path(path) as tmp:
        torch.save(obj, str(tmp))  # the path form writes through C++, faster than a file object


def read(path: Path) -> Any:
    """The checkpoint's content (``weights_only=True``), after checking every record's CRC."""
    _check_crc(path)
    return _torch_load(path)


def verify(path: Path) -> None:
    """Loads cleanly: CRCs of every record, then the unpickling (tensor data mapped, not read)."""
    _check_crc(path)
    _torch_load(path, mmap=zipfile.is_zipfile(path))


def _check_crc(path: Path) -> None:
    """torch's zip writer stores CRC32s that its reader never checks: check them here."""
    if not zipfile.is_zipfile(path):
        return  # truncated (no central directory) or the legacy format: torch.load decides
    try:
        with zipfile.ZipFile(path) as zf:
            bad = zf.testzip()
    except (zipfile.BadZipFile, EOFError, ValueError) as exc:
        raise CheckpointError(f"{path}: truncated or corrupt checkpoint ({exc})") from exc
    if bad is not None:
        raise CheckpointError(f"{path}: corrupt checkpoint (CRC mismatch in {bad})")


def _torch_load(path: Path, mmap: bool = False) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except FileNotFoundError:
        raise
    except Exception as exc:  # garbage makes the unpickler raise anything (IndexError, TypeError, ...)
        text = str(exc)
        named = _GLOBAL.search(text) if _REFUSED in text else None
        if named:  # a well-formed pickle that asks for a callable: unsafe
            raise CheckpointError(f"{path}: unsafe content, not loaded: it references {named['name']}, "
                                  "which is neither a tensor nor a plain container (only state_dicts "
                                  "load)") from exc
        why = _WHY.search(text) if _REFUSED in text else None
        first = why["why"].strip() if why else (text.strip().splitlines() or [type(exc).__name__])[0]
        raise CheckpointError(f"{path}: truncated or corrupt checkpoint ({first})") from exc
