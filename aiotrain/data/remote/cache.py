"""The local shard cache: shards downloaded once, kept on disk and in memory under budgets,
shared by the processes of one machine.

- **Keys.** A shard's cache name is a hash of its URL and its identity (CRC-32 from the index, or
  ETag and size), so a shard rewritten in the store is a new entry, never a stale hit.
- **Downloads.** A shard is fetched as parallel range requests of ``chunk_bytes`` (object stores
  cap each connection; many connections fill the pipe), at most ``max_requests`` in flight across
  the process, every range pinned to one version of the object (``If-Match`` its ETag). It is
  checked (size, and CRC-32 where the index has one) before any of its items is served, kept in
  memory while the memory budget allows, and written to disk in the background with
  ``files.atomic_file`` (temp file, fsync, rename: another process sees the whole file or none).
- **Several processes.** One download per shard per machine: a process takes the shard's file lock
  (``filelock``; tried without blocking, the loop is never blocked) before downloading, and a
  process that waited finds the file there. Reading needs no lock: files are only ever replaced
  whole or unlinked, and an open file survives an unlink.
- **Budgets and eviction.** ``memory_bytes`` bounds the shards held in this process and
  ``disk_bytes`` the cache folder. First use admits a shard; to make room, shards this epoch no
  longer needs (all their items of this epoch served, as the dataset's plan says) go first, then
  the least recently used. A shard over the memory budget is read from its file, one range per
  item; one that fits neither is read and dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...files import atomic_file
from ...runtime import to_io
from .packed import crc32
from .source import ObjectInfo, ObjectSource

__all__ = ["ShardCache", "ShardIntegrityError", "ShardRef", "default_cache_dir"]

SUFFIX = ".shard"
LOCK_POLL_S = 0.02


class ShardIntegrityError(OSError):
    """A downloaded or cached shard whose size or checksum is not what the index says."""


def default_cache_dir() -> Path:
    """``$AIOTRAIN_CACHE`` or ``~/.cache/aiotrain/shards``."""
    env = os.environ.get("AIOTRAIN_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "aiotrain" / "shards"


@dataclass(frozen=True)
class ShardRef:
    """What the cache needs to know about one shard: where, how big, how to check it."""

    source: ObjectSource
    name: str
    size: int | None
    crc32: int | None

    @property
    def url(self) -> str:
        return self.source.url_of(self.name)

    def key(self, etag: str | None) -> str:
        ident = f"{self.url}\0{self.crc32}\0{self.size}\0{'' if self.crc32 is not None else etag}"
        return hashlib.sha256(ident.encode()).hexdigest()[:40]


@dataclass
class _Held:
    data: memoryview
    last_use: float = field(default_factory=time.monotonic)


class ShardCache:
    """Shards on local disk and in memory (see the module docstring). One cache may serve several
    datasets; the folder may be shared by several processes."""

    def __init__(self, folder: str | os.PathLike[str] | None = None, *,
                 disk_bytes: int | None = 16 << 30, memory_bytes: int = 1 << 30,
                 chunk_bytes: int = 16 << 20, max_requests: int = 32,
                 readahead_bytes: int = 256 << 20) -> None:
        self.folder = Path(folder) if folder is not None else default_cache_dir()
        self.disk_bytes = disk_bytes  # None: no bound; 0: no disk cache at all
        self.memory_bytes = memory_bytes
        self.chunk_bytes = max(int(chunk_bytes), 64 << 10)
        self.max_requests = max(int(max_requests), 1)
        self.readahead_bytes = readahead_bytes
        self._held: dict[str, _Held] = {}
        self._tasks: dict[str, asyncio.Task[_Held | Path | memoryview]] = {}
        self._info: dict[str, ObjectInfo] = {}  # HEADs: size and ETag by URL
        self._done: set[str] = set()  # keys no plan needs now (every item of this epoch served)
        self._mine: dict[str, int] = {}  # files this process wrote (or is writing): their sizes
        self._writing: set[str] = set()
        self._writes: set[asyncio.Task[None]] = set()  # downloads being written to disk
        self._requests: asyncio.Semaphore | None = None
        self._downloading = 0  # bytes of downloads in flight (the read-ahead budget)

    # public ----------------------------------------------------------------------------------
    async def aread(self, ref: ShardRef, start: int, end: int) -> memoryview:
        """Bytes ``[start, end)`` of shard ``ref``, from memory, disk, or a download first."""
        key = await self._key(ref)
        self._done.discard(key)  # being read: needed again
        held = self._held.get(key)
        if held is not None:
            held.last_use = time.monotonic()
            return held.data[start:end]
        task = self._tasks.get(key) or self._start(key, ref)
        where = await asyncio.shield(task)
        if isinstance(where, _Held):
            where.last_use = time.monotonic()
            return where.data[start:end]
        if isinstance(where, memoryview):
            return where[start:end]
        return await to_io(_pread, where, start, end)

    def is_local(self, ref: ShardRef) -> bool:
        """True when ``ref`` is here (in memory or in the cache folder) or being loaded from
        disk: reading it now is a cache hit. False when it must be (or is being) downloaded."""
        key = self._known_key(ref)
        if key is None:
            return False
        if key in self._held:
            return True
        task = self._tasks.get(key)
        if task is not None:
            return task.get_name() == "load"
        return self.disk_bytes != 0 and _size_of(self._path(key)) == self._size(ref)

    def prefetch(self, ref: ShardRef) -> bool:
        """Start downloading ``ref`` ahead of need if the read-ahead budget has room; True when
        it is (or already was) on its way or here."""
        key = self._known_key(ref)
        if key is None:
            return False
        if key in self._held or key in self._tasks:
            return True
        if self._downloading + self._size(ref) > self.readahead_bytes:
            return False
        self._start(key, ref)
        return True

    def release(self, ref: ShardRef) -> None:
        """Every item of ``ref`` this epoch is served: first in line for eviction."""
        key = self._known_key(ref)
        if key is not None:
            self._done.add(key)

    async def asize(self, ref: ShardRef) -> int:
        """The shard's size: the index's, or the store's (one HEAD, remembered)."""
        await self._key(ref)
        return self._size(ref)

    def key_of(self, ref: ShardRef) -> str | None:
        """The cache key of ``ref`` once known (after its first use)."""
        return self._known_key(ref)

    def held_bytes(self) -> int:
        """Bytes of shards held in this process's memory."""
        return sum(len(h.data) for h in self._held.values())

    async def aclose(self) -> None:
        """Stop downloads in flight, finish the writes to disk under way, and drop what is held
        in memory (files stay)."""
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.gather(*self._writes, return_exceptions=True)
        self._tasks.clear()
        self._held.clear()

    # keys ------------------------------------------------------------------------------------------
    def _known_key(self, ref: ShardRef) -> str | None:
        if ref.crc32 is not None:
            return ref.key(None)
        info = self._info.get(ref.url)
        return None if info is None else ref.key(info.etag)

    async def _key(self, ref: ShardRef) -> str:
        known = self._known_key(ref)
        if known is not None:
            return known
        info = await ref.source.ahead(ref.name)  # shards without a CRC: keyed by ETag and size
        if ref.size is not None and info.size != ref.size:
            raise ShardIntegrityError(f"{ref.url}: the store has {info.size} bytes, the index "
                                      f"says {ref.size}")
        self._info[ref.url] = info
        return ref.key(info.etag)

    def _size(self, ref: ShardRef) -> int:
        info = self._info.get(ref.url)
        return ref.size if ref.size is not None else (info.size if info else self.chunk_bytes)

    def _path(self, key: str) -> Path:
        return self.folder / f"{key}{SUFFIX}"

    def _start(self, key: str, ref: ShardRef) -> asyncio.Task[_Held | Path | memoryview]:
        """Bring shard ``ref`` here: from the disk cache when it is there, else downloaded. The
        task is named "load" or "fetch" (a hit or a miss for the items that wait on it)."""
        on_disk = self.disk_bytes != 0 and _size_of(self._path(key)) == self._size(ref)
        coro = self._load(ref, key, self._path(key)) if on_disk else self._fetch(ref, key)
        task = asyncio.create_task(coro, name="load" if on_disk else "fetch")
        self._tasks[key] = task
        task.add_done_callback(lambda t: self._tasks.pop(key, None) if self._tasks.get(key) is t else None)
        return task

    # filling -----------------------------------------------------------------------------------
    async def _load(self, ref: ShardRef, key: str, path: Path) -> _Held | Path | memoryview:
        """A shard already on disk: into memory (checked again) if the budget allows, else read
        from the file per item."""
        if self._size(ref) > self.memory_bytes:
            return path
        try:
            data = await to_io(path.read_bytes)
        except FileNotFoundError:  # evicted by another process meanwhile
            return await self._fetch(ref, key)
        if not await to_io(_intact, data, ref):
            await to_io(_unlink, path)
            return await self._fetch(ref, key)
        return self._hold_or_pass(key, memoryview(data))

    async def _fetch(self, ref: ShardRef, key: str) -> _Held | Path | memoryview:
        """Download ``ref`` once per machine (file lock), check it, hold it; the write to disk
        goes on in the background (still under the lock), so items are served at once."""
        path, size = self._path(key), self._size(ref)
        if self.disk_bytes == 0:
            return self._hold_or_pass(key, memoryview(await self._download(ref)))
        await to_io(self.folder.mkdir, parents=True, exist_ok=True)
        lock = await _acquire(self.folder / f"{key}.lock")
        try:
            if await to_io(_size_of, path) == size:
                there = await to_io(path.read_bytes)  # another process fetched it meanwhile
                if await to_io(_intact, there, ref):
                    lock.release()
                    return self._hold_or_pass(key, memoryview(there))
            data = await self._download(ref)
        except BaseException:
            lock.release()
            raise
        writer = asyncio.create_task(self._store(key, path, data, lock))
        self._writes.add(writer)
        writer.add_done_callback(self._writes.discard)
        return self._hold_or_pass(key, memoryview(data))

    async def _store(self, key: str, path: Path, data: bytes | bytearray, lock: Any) -> None:
        """Write a downloaded shard to the cache folder (if the disk budget allows), atomically,
        then let other processes waiting for it in."""
        try:
            if await self._room_on_disk(len(data), key):
                try:
                    await to_io(_write_shard, path, data)
                except Exception:  # not written (a cancelled wait leaves the thread writing)
                    self._mine.pop(key, None)
                    raise
                finally:
                    self._writing.discard(key)
        finally:
            lock.release()

    async def _download(self, ref: ShardRef) -> bytearray:
        source = ref.source
        info = self._info.get(ref.url)
        if info is None and ref.size is not None and ref.crc32 is not None:
            info = ObjectInfo(ref.size, None)  # the CRC checks the whole: no HEAD needed
        elif info is None:
            info = await source.ahead(ref.name)
            self._info[ref.url] = info
        size, etag = info.size, info.etag
        if ref.size is not None and size != ref.size:
            raise ShardIntegrityError(f"{ref.url}: the store has {size} bytes, the index says {ref.size}")
        if self._requests is None:
            self._requests = asyncio.Semaphore(self.max_requests)
        buf = bytearray(size)
        self._downloading += size
        try:
            async def chunk(lo: int) -> None:
                hi = min(lo + self.chunk_bytes, size)
                assert self._requests is not None
                async with self._requests:
                    part = await source.aget(ref.name, lo, hi, etag=etag)
                if len(part) != hi - lo:
                    raise ShardIntegrityError(f"{ref.url}: range {lo}-{hi} came back with {len(part)} bytes")
                buf[lo:hi] = part

            await _gather_all([chunk(lo) for lo in range(0, size, self.chunk_bytes)])
        finally:
            self._downloading -= size
        data = buf  # no copy: the checksum runs on an I/O thread, the loop goes on
        if not await to_io(_intact, data, ref):
            raise ShardIntegrityError(f"{ref.url}: CRC-32 of the download is not the index's "
                                      f"{ref.crc32:#010x} (corrupt in transit or in the store)")
        return data

    # budgets -------------------------------------------------------------------------------------
    def _hold(self, key: str, data: memoryview) -> _Held:
        held = _Held(data)
        self._held[key] = held
        return held

    def _hold_or_pass(self, key: str, data: memoryview) -> _Held | Path | memoryview:
        if self._make_room(len(data)):
            return self._hold(key, data)
        path = self._path(key)
        return path if self.disk_bytes != 0 and path.exists() else data

    def _make_room(self, size: int) -> bool:
        """Evict from memory (done shards, then least recently used) until ``size`` fits."""
        if size > self.memory_bytes:
            return False
        used = self.held_bytes()
        for key in self._eviction_order(self._held):
            if used + size <= self.memory_bytes:
                break
            used -= len(self._held.pop(key).data)
        return used + size <= self.memory_bytes

    def _eviction_order(self, held: dict[str, _Held]) -> list[str]:
        return sorted(held, key=lambda k: (k not in self._done, held[k].last_use))

    async def _room_on_disk(self, size: int, keep: str) -> bool:
        """Delete cache files (done this epoch first, then the oldest) until ``size`` more fits;
        on success the room is reserved for ``keep`` (marked as being written: the caller writes
        it, then takes it out of ``_writing``). The folder is listed
        on an I/O thread; the decision is taken on the loop without a pause, so two downloads of
        this process never count the same room. Files other processes are writing now are seen
        once written: with several processes the folder may pass the budget by their shards in
        flight."""
        if self.disk_bytes is None:
            self._mine[keep] = size
            self._writing.add(keep)
            return True
        if size > self.disk_bytes:
            return False
        listed = await to_io(_list_cache, self.folder)
        others = [f for f in listed if f[0] not in self._mine]
        used = sum(f[1] for f in others) + sum(self._mine.values())
        candidates = others + [(k, n, 0.0) for k, n in self._mine.items()]
        candidates.sort(key=lambda f: (f[0] not in self._done, f[2]))
        victims = []
        for key, fsize, _ in candidates:
            if used + size <= self.disk_bytes:
                break
            if key != keep and key not in self._writing:
                victims.append(key)
                used -= fsize
        if used + size > self.disk_bytes:
            return False
        for key in victims:
            self._mine.pop(key, None)
        self._mine[keep] = size
        self._writing.add(keep)  # before any pause: no other decision may take this room back
        await to_io(_unlink_all, [self._path(k) for k in victims])
        return True


def _list_cache(folder: Path) -> list[tuple[str, int, float]]:
    """``(key, size, mtime)`` of the shards in a cache folder."""
    files = []
    for entry in os.scandir(folder):
        if entry.name.endswith(SUFFIX):
            with contextlib.suppress(FileNotFoundError):
                st = entry.stat()
                files.append((entry.name[:-len(SUFFIX)], st.st_size, st.st_mtime))
    return files


def _unlink_all(paths: list[Path]) -> None:
    for path in paths:
        path.unlink(missing_ok=True)


def _write_shard(path: Path, data: bytes | bytearray) -> None:
    with atomic_file(path) as f:
        f.write(data)


def _size_of(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return None


def _unlink(path: Path) -> None:
    path.unlink(missing_ok=True)


def _pread(path: Path, start: int, end: int) -> memoryview:
    with open(path, "rb") as f:
        return memoryview(os.pread(f.fileno(), end - start, start))


def _intact(data: bytes | bytearray, ref: ShardRef) -> bool:
    if ref.size is not None and len(data) != ref.size:
        return False
    return ref.crc32 is None or crc32(data) == ref.crc32


async def _acquire(lock_path: Path) -> Any:
    """The machine-wide lock of one shard, polled without blocking the loop."""
    from filelock import FileLock, Timeout

    lock = FileLock(str(lock_path), timeout=0)
    while True:
        try:
            lock.acquire(timeout=0)
            return lock
        except Timeout:
            await asyncio.sleep(LOCK_POLL_S)


async def _gather_all(coros: list[Any]) -> None:
    """Run ``coros`` together; on the first failure cancel the rest and raise it."""
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        await asyncio.gather(*tasks)
    except BaseException:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise

