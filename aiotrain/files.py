"""Atomic, durable file replacement: the one way aiotrain rewrites a file that must survive a crash.

Write to a temp file in the same folder, flush + fsync it, ``os.replace`` it over the target,
fsync the folder. A crash at any moment leaves the old file or the new one, never a torn one.
Temp files are named ``.{name}.{random}.tmp``: hidden, and never ending in the target's suffix.
New files honour the umask like any file a user writes (0644 under umask 022): the temp file is
created with mode 0666 and the kernel applies the umask (``tempfile.mkstemp`` would make it
0600 whatever the umask). A file that already exists keeps its permissions.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

__all__ = ["atomic_file", "atomic_path", "atomic_write", "fsync_dir", "is_temp_name", "make_temp_dir"]

TEMP_SUFFIX = ".tmp"


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temp path beside ``path``; when the block ends cleanly, make it durable and move it
    over ``path`` (keeping an existing file's permissions). On error the temp file is removed
    and ``path`` is untouched."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = _create_temp(target.parent, f".{target.name}.", TEMP_SUFFIX)
    try:
        yield tmp
        _fsync_file(tmp)
        with contextlib.suppress(FileNotFoundError):
            os.chmod(tmp, target.stat().st_mode & 0o7777)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(target.parent)


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike[str]) -> Iterator[BinaryIO]:
    """A binary file object that atomically replaces ``path`` when the block ends cleanly."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        yield f


def atomic_write(path: str | os.PathLike[str], data: bytes | str) -> None:
    """Replace ``path`` with ``data`` (str is written as UTF-8) atomically and durably."""
    with atomic_file(path) as f:
        f.write(data.encode("utf-8") if isinstance(data, str) else data)


def make_temp_dir(parent: str | os.PathLike[str], prefix: str) -> Path:
    """A new, uniquely named folder in ``parent`` (mode 0777 less the umask, unlike
    ``tempfile.mkdtemp``'s 0700), for building a tree that is then renamed into place."""
    for _ in range(100):
        path = Path(parent) / f"{prefix}{secrets.token_hex(6)}"
        try:
            os.mkdir(path, 0o777)
        except FileExistsError:
            continue
        return path
    raise FileExistsError(f"no free temp folder name in {parent}")


def is_temp_name(name: str, target_name: str = "") -> bool:
    """True for a temp file name that ``atomic_path`` makes (for ``target_name`` when given)."""
    return name.startswith(f".{target_name}") and name.endswith(TEMP_SUFFIX)


def fsync_dir(folder: str | os.PathLike[str]) -> None:
    """Make a rename in ``folder`` durable (a no-op where folders cannot be opened or synced)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _create_temp(folder: Path, prefix: str, suffix: str) -> Path:
    """Create an empty, uniquely named file in ``folder`` with mode 0666 less the umask."""
    for _ in range(100):
        path = folder / f"{prefix}{secrets.token_hex(6)}{suffix}"
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
        except FileExistsError:
            continue
        os.close(fd)
        return path
    raise FileExistsError(f"no free temp file name in {folder}")


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
