"""The memory-aware file cache: small, important files are memory-mapped, the rest read normally.

``CacheManager.scan_files`` plans which files to map: by priority (high first), then by size
(small first), a file that fits in what is left of ``memory_limit`` is ``CacheMode.MMAP`` and one
that does not is ``CacheMode.NORMAL`` (the scan goes on, so a later, smaller file can still fit).
``get(path)`` then hands out a ``CachedData``: a zero-copy view of a shared mapping for MMAP
files, a fresh buffer for the others.

Change detection compares ``(st_dev, st_ino, size, mtime_ns, ctime_ns)`` of the path with what
was mapped, so an in-place rewrite and an atomic replace that keeps size and mtime are both seen;
a changed file is re-mapped before any view of it is handed out.

Truncation and SIGBUS: touching a page of a file mapping that lies past the end of a file that
was truncated after it was mapped kills the process with SIGBUS, and Python cannot catch that.
So the cache never maps the data file itself: a MMAP file is copied once, by the kernel, into an
anonymous memory file (memfd, named after the path) and that copy is mapped. Every view handed
out is zero-copy over the snapshot, which nothing outside this process can shrink: a file
truncated or rewritten in place while views of it are alive can no longer fault. The copy is
checked against the file's signature before and after it is taken and retaken if the file moved
underneath. The price is the copy at first use (a memcpy-speed read) and memory that is resident
rather than page cache, which the memory limit already budgets for. Change detection then decides
what a reader sees: ``get`` re-snapshots a changed file, and MmapDataset refuses a file that was
truncated or rewritten in place under it (``DatasetError`` naming the file).

Mappings are private (``MAP_PRIVATE``, copy-on-write): a tensor over a mapping is writable, and
writes go to private pages of this process, never to the file.
"""

from __future__ import annotations

import dataclasses
import enum
import errno
import logging
import mmap
import os
import stat as stat_mod
import threading
import time
import weakref
from collections.abc import Iterable, Mapping
from typing import TypedDict

import psutil
import torch

from ..runtime import to_io
from ..values import check_int

__all__ = ["CacheManager", "CacheMode", "CacheValidator", "CachedData", "FileCacheEntry",
           "file_signature"]

log = logging.getLogger(__name__)

PathLike = str | os.PathLike[str]
Signature = tuple[int, int, int, int, int]

DEFAULT_PRIORITY = 1  # "normal": 0 = low, 1 = normal, 2 = high
DEFAULT_MEMORY_FRACTION = 0.8


class CacheMode(enum.Enum):
    """How ``CacheManager.get`` serves one file."""

    MMAP = "mmap"          # one in-memory snapshot per file, zero-copy views
    NORMAL = "normal"      # read into a fresh buffer on every get (buffered I/O)
    NONE = "none"          # read on every get, then drop the file from the OS page cache
    DISABLED = "disabled"  # like NONE, and kept so when the file is scanned again


@dataclasses.dataclass
class FileCacheEntry:
    """What the cache knows about one scanned file (``signature`` is the stat it last served)."""

    path: str
    size: int
    priority: int
    mode: CacheMode
    signature: Signature | None
    last_accessed: float


class CachedData:
    """The bytes of one file: ``data`` (read-only memoryview), ``cached``, ``mode`` and ``path``.

    For MMAP files ``data`` is a zero-copy view of the shared mapping; ``cached`` says whether the
    bytes came from the cache (a mapping) rather than a fresh read.
    """

    __slots__ = ("_buffer", "cached", "data", "mode", "path", "signature")

    def __init__(self, buffer: memoryview | bytearray, *, cached: bool, mode: CacheMode,
                 path: str, signature: Signature | None = None) -> None:
        self._buffer = memoryview(buffer)
        self.data = self._buffer.toreadonly()
        self.cached = cached
        self.mode = mode
        self.path = path
        self.signature = signature  # file_signature() of the file these bytes came from

    def __len__(self) -> int:
        return self._buffer.nbytes

    def __repr__(self) -> str:
        return f"CachedData({self.path!r}, {len(self)} bytes, mode={self.mode.name}, cached={self.cached})"

    def as_tensor(self, dtype: torch.dtype = torch.uint8,
                  shape: tuple[int, ...] | int | None = None) -> torch.Tensor:
        """A tensor over the bytes without copying them (1-D, or viewed as ``shape``).

        The tensor keeps the mapping alive: it is unmapped when the last view is gone, even after
        ``cleanup()``.
        """
        itemsize = dtype.itemsize
        if len(self) % itemsize:
            raise ValueError(f"{self.path}: {len(self)} bytes is not a whole number of {dtype} "
                             f"elements ({itemsize} bytes each)")
        if len(self) == 0:  # torch.frombuffer refuses empty buffers
            flat = torch.empty(0, dtype=dtype)
        else:
            flat = torch.frombuffer(self._buffer, dtype=dtype)
        return flat if shape is None else flat.view(shape)


class _Region:
    """One live mapping of a file, and the stat of the file it maps."""

    __slots__ = ("mm", "signature")

    def __init__(self, mm: mmap.mmap, signature: Signature) -> None:
        self.mm = mm
        self.signature = signature


class CacheManager:
    """Memory-aware cache of data files: maps what fits under ``memory_limit``, reads the rest.

    ``memory_limit`` is in bytes; the default is 80% of the memory psutil reports available when
    the manager is created. Thread-safe: ``get`` may run on many I/O threads at once. Use it as a
    context manager, or call ``cleanup()``, to release the mappings.

    Decisions: an explicit ``set_cache_mode`` overrides the budget; a
    file scanned again is re-planned (except a DISABLED one, which stays disabled); ``cleanup``
    keeps the scanned entries, so a later ``get`` maps the file again.
    """

    def __init__(self, memory_limit: int | None = None) -> None:
        if memory_limit is None:
            memory_limit = int(psutil.virtual_memory().available * DEFAULT_MEMORY_FRACTION)
        self.memory_limit: int = check_int("memory_limit (bytes)", memory_limit, minimum=0)
        self._entries: dict[str, FileCacheEntry] = {}
        self._regions: dict[str, _Region] = {}
        self._retired: weakref.WeakSet[mmap.mmap] = weakref.WeakSet()
        self._missing: list[str] = []
        self._lock = threading.RLock()

    # planning -----------------------------------------------------------------------------
    def scan_files(self, paths: Iterable[PathLike] | PathLike,
                   priorities: Mapping[PathLike, int] | None = None) -> ScanResult:
        """Stat ``paths`` and decide each file's mode under what is left of the memory limit.

        Missing paths are skipped and listed in the result and in ``stats()["missing"]``; a
        directory is an error. Returns ``total_files, total_size, cached_size, cached_files,
        memory_limit`` for the files of this scan, plus ``missing`` and ``remaining`` (bytes of
        the limit still unplanned).
        """
        if isinstance(paths, str | os.PathLike):
            paths = [paths]
        prio = {_key(p): int(v) for p, v in (priorities or {}).items()}
        found, missing = _stat_all(paths)
        files = sorted(((_key(p), st) for p, st in found.items()),
                       key=lambda f: (-prio.get(f[0], DEFAULT_PRIORITY), f[1].st_size))
        with self._lock:
            disabled = {key for key, _ in files
                        if self.mode_of(key) is CacheMode.DISABLED}
            for key, _ in files:
                self._entries.pop(key, None)
                self._release(key)
            left = self.memory_limit - self._planned_bytes()
            cached_size = cached_files = 0
            for key, st in files:
                mode = CacheMode.NORMAL if st.st_size > left else CacheMode.MMAP
                if key in disabled:
                    mode = CacheMode.DISABLED
                elif mode is CacheMode.MMAP:
                    left -= st.st_size
                    cached_size += st.st_size
                    cached_files += 1
                self._entries[key] = FileCacheEntry(key, st.st_size, prio.get(key, DEFAULT_PRIORITY),
                                                    mode, file_signature(st), time.time())
            self._missing = sorted(set(self._missing) | set(missing))
        return {
            "total_files": len(files),
            "total_size": sum(st.st_size for _, st in files),
            "cached_size": cached_size,
            "cached_files": cached_files,
            "memory_limit": self.memory_limit,
            "missing": missing,
            "remaining": max(left, 0),
        }

    @property
    def entries(self) -> list[FileCacheEntry]:
        """The scanned files, in no particular order (for ``CacheValidator``)."""
        with self._lock:
            return list(self._entries.values())

    def mode_of(self, path: PathLike) -> CacheMode | None:
        """The mode planned for ``path``, or None when it was never scanned."""
        entry = self._entries.get(path) if isinstance(path, str) else None  # fast path: a key
        if entry is None:
            entry = self._entries.get(_key(path))
        return None if entry is None else entry.mode

    def set_cache_mode(self, path: PathLike, mode: CacheMode) -> None:
        """Serve ``path`` with ``mode`` from now on; an untracked file is scanned first.

        Leaving MMAP releases the file's mapping. An explicit MMAP is honoured even past the
        memory limit (the caller decided).
        """
        mode = CacheMode(mode)
        key = _key(path)
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                st = _stat_file(key)
                entry = FileCacheEntry(key, st.st_size, DEFAULT_PRIORITY, mode, file_signature(st),
                                       time.time())
                self._entries[key] = entry
            if mode is not CacheMode.MMAP:
                self._release(key)
            entry.mode = mode

    # serving ------------------------------------------------------------------------------
    def get(self, path: PathLike) -> CachedData:
        """The bytes of ``path``: a zero-copy view for MMAP files, a fresh read otherwise.

        The path is stat'ed first; a changed file is re-mapped (or re-read). A path met here for
        the first time (never scanned) is admitted as a scan of that one file would: mapped when
        it fits in what is left of the memory limit, read normally when it does not. A missing
        path or a directory raises ``FileNotFoundError`` / ``IsADirectoryError``.
        """
        key = _key(path)
        entry = self._entries.get(key)
        st = _stat_file(key)
        if entry is None:
            entry = self._admit(key, st)
        entry.last_accessed = time.time()
        if entry.mode is CacheMode.MMAP:
            return self._get_mapped(entry, st)
        buf, sig = _read_file(key, drop_from_page_cache=entry.mode is not CacheMode.NORMAL)
        entry.signature, entry.size = sig, sig[2]
        return CachedData(buf, cached=False, mode=entry.mode, path=key, signature=sig)

    def _admit(self, key: str, st: os.stat_result) -> FileCacheEntry:
        """First use of an unscanned file: plan it with the default priority under the budget
        left (files already planned keep their place: first use never evicts)."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                fits = st.st_size <= self.memory_limit - self._planned_bytes()
                entry = FileCacheEntry(key, st.st_size, DEFAULT_PRIORITY,
                                       CacheMode.MMAP if fits else CacheMode.NORMAL,
                                       file_signature(st), time.time())
                self._entries[key] = entry
            return entry

    async def aget(self, path: PathLike) -> CachedData:
        """``get`` with the stat, the mapping and any read done in the I/O executor."""
        return await to_io(self.get, path)

    def _get_mapped(self, entry: FileCacheEntry, st: os.stat_result) -> CachedData:
        sig = file_signature(st)
        with self._lock:
            region = self._regions.get(entry.path)
            if region is None or region.signature != sig:
                if region is not None:
                    log.debug("cache: %s changed on disk, re-mapping", entry.path)
                self._release(entry.path)
                region = _map_file(entry.path)
                if region is None:  # empty file: nothing to map
                    entry.signature, entry.size = sig, 0
                    return CachedData(bytearray(), cached=True, mode=CacheMode.MMAP,
                                      path=entry.path, signature=sig)
                self._regions[entry.path] = region
            entry.signature, entry.size = region.signature, region.signature[2]
            view = memoryview(region.mm)
        return CachedData(view, cached=True, mode=CacheMode.MMAP, path=entry.path,
                          signature=region.signature)

    # releasing ----------------------------------------------------------------------------
    def invalidate(self, path: PathLike) -> None:
        """Forget the cached state of ``path``: release its mapping and re-stat it."""
        key = _key(path)
        with self._lock:
            self._release(key)
            entry = self._entries.get(key)
            if entry is not None:
                try:
                    st = os.stat(key)
                except OSError:
                    return  # gone: check_source_changes keeps reporting it
                entry.signature, entry.size = file_signature(st), st.st_size

    def cleanup(self) -> None:
        """Release every mapping. Never raises because of live views: a mapping still exported
        to a memoryview or tensor is unmapped when its last view goes."""
        with self._lock:
            for key in list(self._regions):
                self._release(key)

    def close(self) -> None:
        """Same as ``cleanup()``."""
        self.cleanup()

    def __enter__(self) -> CacheManager:
        return self

    def __exit__(self, *exc: object) -> None:
        self.cleanup()

    def _release(self, key: str) -> None:
        region = self._regions.pop(key, None)
        if region is None:
            return
        try:
            region.mm.close()
        except BufferError:  # views alive: the mmap object unmaps itself when they are gone
            self._retired.add(region.mm)

    def _planned_bytes(self) -> int:
        return sum(e.size for e in self._entries.values() if e.mode is CacheMode.MMAP)

    # reporting ----------------------------------------------------------------------------
    def stats(self) -> CacheStats:
        """The cache's statistics: ``total_size`` is the bytes planned for MMAP.

        Extras: ``normal_count``, ``missing`` (paths scans skipped), ``mapped_bytes`` (bytes of the
        live mappings) and ``retired_mmaps`` (mappings released but still held by live views).
        """
        with self._lock:
            planned = self._planned_bytes()
            return {
                "total_entries": len(self._entries),
                "mmap_count": sum(e.mode is CacheMode.MMAP for e in self._entries.values()),
                "total_size": planned,
                "memory_limit": self.memory_limit,
                "memory_usage_pct": int(planned * 100 / self.memory_limit) if self.memory_limit else 0,
                "active_mmaps": len(self._regions),
                "normal_count": sum(e.mode is CacheMode.NORMAL for e in self._entries.values()),
                "missing": list(self._missing),
                "mapped_bytes": sum(len(r.mm) for r in self._regions.values()),
                "retired_mmaps": len(self._retired),
            }


class ScanResult(TypedDict):
    """What ``CacheManager.scan_files`` planned for the files of one scan."""

    total_files: int
    total_size: int
    cached_size: int
    cached_files: int
    memory_limit: int
    missing: list[str]
    remaining: int


class CacheStats(TypedDict):
    """``CacheManager.stats()``."""

    total_entries: int
    mmap_count: int
    total_size: int
    memory_limit: int
    memory_usage_pct: int
    active_mmaps: int
    normal_count: int
    missing: list[str]
    mapped_bytes: int
    retired_mmaps: int


class CacheValidator:
    """Finds scanned files that changed on disk and invalidates them (CacheManager's change check, run on demand)."""

    def check_source_changes(self, entries: Iterable[FileCacheEntry]) -> list[str]:
        """Paths of ``entries`` that are gone or whose stat signature differs from the cached one."""
        changed = []
        for entry in entries:
            try:
                sig = file_signature(os.stat(entry.path))
            except OSError:
                changed.append(entry.path)
                continue
            if sig != entry.signature:
                changed.append(entry.path)
        return changed

    def auto_invalidate(self, cache: CacheManager) -> int:
        """Invalidate every changed file of ``cache``; returns how many there were."""
        changed = self.check_source_changes(cache.entries)
        for path in changed:
            cache.invalidate(path)
            log.info("cache invalidated: %s", path)
        return len(changed)


# file helpers ---------------------------------------------------------------------------------
def _key(path: PathLike) -> str:
    return os.path.abspath(os.fspath(path))


def file_signature(st: os.stat_result) -> Signature:
    """What change detection compares: (st_dev, st_ino, size, mtime_ns, ctime_ns)."""
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _stat_file(path: str) -> os.stat_result:
    """``os.stat`` that says clearly why a path is not a readable data file."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise FileNotFoundError(errno.ENOENT, "no such data file", path) from None
    _check_regular(path, st)
    return st


def _check_regular(path: str, st: os.stat_result) -> None:
    if stat_mod.S_ISDIR(st.st_mode):
        raise IsADirectoryError(errno.EISDIR, "is a directory, not a data file", path)
    if not stat_mod.S_ISREG(st.st_mode):
        raise ValueError(f"{path}: not a regular file")


def _stat_all(paths: Iterable[PathLike]) -> tuple[dict[str, os.stat_result], list[str]]:
    found: dict[str, os.stat_result] = {}
    missing: list[str] = []
    for p in paths:
        key = _key(p)
        try:
            found[key] = _stat_file(key)
        except FileNotFoundError:
            missing.append(key)
    return found, missing


SNAPSHOT_ATTEMPTS = 5  # a file that keeps changing while it is copied is an error after this


def _map_file(path: str) -> _Region | None:
    """Snapshot ``path`` into an anonymous memory file and map that privately (see the module
    docstring: a truncation of the data file can then never fault a view)."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    try:
        st = os.fstat(fd)
        _check_regular(path, st)
        for _ in range(SNAPSHOT_ATTEMPTS):
            if st.st_size == 0:
                return None
            mm = _snapshot(fd, path, st.st_size)
            after = os.fstat(fd)
            if mm is not None and file_signature(after) == file_signature(st):
                return _Region(mm, file_signature(st))
            if mm is not None:
                mm.close()
            st = after
        raise OSError(errno.EAGAIN, f"kept changing while it was read ({SNAPSHOT_ATTEMPTS} tries); "
                      "replace data files atomically (write a new file, os.replace)", path)
    finally:
        os.close(fd)


def _snapshot(fd: int, path: str, size: int) -> mmap.mmap | None:
    """``size`` bytes of ``fd`` in private anonymous memory; None when the file got shorter."""
    if hasattr(os, "memfd_create"):  # named, so /proc/<pid>/maps says which file it holds
        mfd = os.memfd_create(path[-200:], os.MFD_CLOEXEC)
        try:
            os.ftruncate(mfd, size)
            done = 0
            while done < size:
                n = os.sendfile(mfd, fd, done, size - done)
                if n == 0:
                    return None
                done += n
            return mmap.mmap(mfd, size, access=mmap.ACCESS_COPY)
        finally:
            os.close(mfd)
    mm = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE)
    view, done = memoryview(mm), 0
    try:
        while done < size:
            n = os.preadv(fd, [view[done:]], done)
            if n == 0:
                view.release()
                mm.close()
                return None
            done += n
    finally:
        view.release()
    return mm


def _read_file(path: str, *, drop_from_page_cache: bool) -> tuple[bytearray, Signature]:
    """Read the whole file into a fresh buffer; optionally tell the OS not to keep it cached."""
    try:
        f = open(path, "rb", buffering=0)  # noqa: SIM115 - closed below
    except FileNotFoundError:
        raise FileNotFoundError(errno.ENOENT, "no such data file", path) from None
    except IsADirectoryError:
        raise IsADirectoryError(errno.EISDIR, "is a directory, not a data file", path) from None
    with f:
        st = os.fstat(f.fileno())
        _check_regular(path, st)
        buf = bytearray(st.st_size)
        view, got = memoryview(buf), 0
        while got < len(buf):
            n = f.readinto(view[got:])
            if not n:  # shrank while reading: keep what is there
                break
            got += n
        view.release()
        del buf[got:]
        if drop_from_page_cache and hasattr(os, "posix_fadvise"):
            os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
    return buf, file_signature(st)
