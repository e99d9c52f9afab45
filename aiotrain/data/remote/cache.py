"""The local shard cache: shards downloaded once, kept on disk and in memory under budgets,
shared by the processes of one machine.

- **Keys.** A shard's cache name is a hash of its URL and its identity (CRC-32 from the index, or
  ETag and size), so a shard rewritten in the store is a new entry, never a stale hit.
- **Downloads.** A shard is fetched as parallel range requests (object stores cap each
  connection; many connections fill the pipe) of ``chunk_bytes``, or twice that for a shard
  fetched ahead of need (it has time: fewer requests), at most ``max_requests`` in flight across
  the process, every range pinned to one version of the object (``If-Match`` its ETag) where the
  index has no CRC. The ranges stream into a ``shard.ShardBuffer`` (shared memory), and a reader
  waits for the bytes it needs: with per-item checksums (packed version 2) an item may be read
  as soon as its own bytes are here (the reader checks it against its CRC-32 before using it);
  otherwise once the whole shard is here and matched the index's size and CRC-32. Once complete,
  the shard is written to disk in the background with ``files.atomic_file`` (temp file, fsync,
  rename: another process sees the whole file or none); a cached file is checked whole against
  the index whenever it is loaded, and a corrupt one is deleted and fetched again.
- **Several processes.** One download per shard per machine: a process takes the shard's file lock
  (``filelock``; tried without blocking, the loop is never blocked) before downloading, and a
  process that waited finds the file there. Reading needs no lock: files are only ever replaced
  whole or unlinked, and an open file survives an unlink.
- **Budgets and eviction.** ``memory_bytes`` bounds the shards held in this process (downloads in
  flight included) and ``disk_bytes`` the cache folder. First use admits a shard; to make room,
  shards this epoch no longer needs (all their items of this epoch served, as the dataset's plan
  says) go first, then the least recently used. A shard evicted while items of it are still on
  their way to the workers lives until they are read. A cached file over the memory budget is
  checked whole once, then read from its file one item at a time (``shard.ShardFile``); a shard
  that fits neither is read and dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import time
import weakref
import zlib
from collections.abc import Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ...files import atomic_file
from ...runtime import to_io
from .packed import ShardIntegrityError, crc32
from .shard import Shard, ShardBuffer, ShardFile
from .source import ObjectInfo, ObjectSource

if TYPE_CHECKING:  # filelock is imported on first use, off the loop (_prepare)
    from filelock import BaseFileLock

__all__ = ["ShardCache", "ShardIntegrityError", "ShardRef", "default_cache_dir"]

log = logging.getLogger(__name__)

SUFFIX = ".shard"
LOCK_POLL_S = 0.02
_CHECK_PIECE = 8 << 20  # a file checked whole is read in pieces of this size


def default_cache_dir() -> Path:
    """``$AIOTRAIN_CACHE`` or ``~/.cache/aiotrain/shards``."""
    env = os.environ.get("AIOTRAIN_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "aiotrain" / "shards"


@dataclass(frozen=True)
class ShardRef:
    """What the cache needs to know about one shard: where, how big, how to check it.
    ``per_item``: every item carries its own CRC-32 (packed version 2), so an item may be read
    as soon as its bytes are here; otherwise the shard is checked whole first."""

    source: ObjectSource
    name: str
    size: int | None
    crc32: int | None
    per_item: bool = False

    @property
    def url(self) -> str:
        return self.source.url_of(self.name)

    def key(self, etag: str | None) -> str:
        ident = f"{self.url}\0{self.crc32}\0{self.size}\0{'' if self.crc32 is not None else etag}"
        return hashlib.sha256(ident.encode()).hexdigest()[:40]


@dataclass
class _Held:
    shard: ShardBuffer
    last_use: float = field(default_factory=time.monotonic)


class ShardCache:
    """Shards on local disk and in memory (see the module docstring). One cache may serve several
    datasets; the folder may be shared by several processes."""

    def __init__(self, folder: str | os.PathLike[str] | None = None, *,
                 disk_bytes: int | None = 16 << 30, memory_bytes: int = 1 << 30,
                 chunk_bytes: int = 8 << 20, max_requests: int = 32,
                 readahead_bytes: int = 256 << 20) -> None:
        self.folder = Path(folder) if folder is not None else default_cache_dir()
        self.disk_bytes = disk_bytes  # None: no bound; 0: no disk cache at all
        self.memory_bytes = memory_bytes
        self.chunk_bytes = max(int(chunk_bytes), 64 << 10)
        self.max_requests = max(int(max_requests), 1)
        self.readahead_bytes = readahead_bytes
        self._held: dict[str, _Held] = {}  # shards in memory, within the budget
        self._files: dict[str, ShardFile] = {}  # cached files over the memory budget, checked
        self._live: weakref.WeakValueDictionary[str, Shard] = weakref.WeakValueDictionary()
        self._opening: dict[str, asyncio.Task[Shard]] = {}  # being loaded, or a download starting
        self._downloads: dict[asyncio.Task[None], ShardBuffer] = {}
        self._info: dict[str, ObjectInfo] = {}  # HEADs: size and ETag by URL
        self._keys: dict[ShardRef, str] = {}
        self._done: set[str] = set()  # keys no plan needs now (every item of this epoch served)
        self._mine: dict[str, int] = {}  # files this process wrote (or is writing): their sizes
        self._writing: set[str] = set()
        self._writes: set[asyncio.Task[None]] = set()  # downloads being written to disk
        self._requests: asyncio.Semaphore | None = None
        self._downloading = 0  # bytes of downloads in flight (the read-ahead budget)

    # public ----------------------------------------------------------------------------------
    async def aopen(self, ref: ShardRef) -> Shard:
        """Shard ``ref``, from memory, from disk, or on its way here (its ``wait``/``aread``
        return once the bytes asked for may be read)."""
        key = await self._key(ref)
        self._done.discard(key)  # being read: needed again
        shard = self._here(key, touch=True)
        if shard is None:
            task = self._opening.get(key) or self._start(key, ref, waited=True)
            shard = await asyncio.shield(task)
        return shard

    async def aread(self, ref: ShardRef, start: int, end: int) -> memoryview | bytes:
        """Bytes ``[start, end)`` of shard ``ref``, once they may be read."""
        return await (await self.aopen(ref)).aread(start, end)

    def is_local(self, ref: ShardRef) -> bool:
        """True when ``ref`` is here (in memory and readable, or in the cache folder) or being
        loaded from disk: reading it now is a cache hit. False while it is downloaded."""
        key = self._known_key(ref)
        if key is None:
            return False
        shard = self._here(key)
        if shard is not None:
            return shard.ready(0, shard.size)
        task = self._opening.get(key)
        if task is not None:
            return task.get_name() == "load"
        return self.disk_bytes != 0 and _size_of(self._path(key)) == self._size(ref)

    def prefetch(self, ref: ShardRef) -> bool:
        """Start bringing ``ref`` here ahead of need if the read-ahead budget has room; True when
        it is (or already was) on its way or here."""
        key = self._known_key(ref)
        if key is None:
            return False
        if self._here(key) is not None or key in self._opening:
            return True
        if self._downloading + self._size(ref) > self.readahead_bytes:
            return False
        self._start(key, ref, waited=False)
        return True

    def release(self, ref: ShardRef) -> None:
        """Every item of ``ref`` this epoch is served: first in line for eviction."""
        key = self._known_key(ref)
        if key is not None:
            self._done.add(key)

    async def asize(self, ref: ShardRef) -> int:
        """The shard's size: the index's, or the store's (one HEAD, remembered)."""
        return (await self._object_info(ref)).size

    def key_of(self, ref: ShardRef) -> str | None:
        """The cache key of ``ref`` once known (after its first use)."""
        return self._known_key(ref)

    def held_bytes(self) -> int:
        """Bytes of shards held in this process's memory."""
        return sum(h.shard.size for h in self._held.values())

    async def aclose(self) -> None:
        """Stop downloads in flight, finish the checks and writes to disk under way, and drop
        what is held in memory (files stay)."""
        tasks = [*self._opening.values(), *(t for t, shard in self._downloads.items()
                                            if not shard.complete)]
        for task in tasks:  # a download whose bytes are all here is left to check and write them
            task.cancel()
        await asyncio.gather(*tasks, *self._downloads, return_exceptions=True)
        await asyncio.gather(*self._writes, return_exceptions=True)
        self._opening.clear()
        self._held.clear()
        self._files.clear()

    # keys ------------------------------------------------------------------------------------------
    def _known_key(self, ref: ShardRef) -> str | None:
        key = self._keys.get(ref)
        if key is None:
            if ref.crc32 is not None:
                key = ref.key(None)
            else:
                info = self._info.get(ref.url)
                if info is None:
                    return None
                key = ref.key(info.etag)
            self._keys[ref] = key
        return key

    async def _key(self, ref: ShardRef) -> str:
        known = self._known_key(ref)
        if known is not None:
            return known
        await self._object_info(ref)  # shards without a CRC: keyed by ETag and size
        key = self._known_key(ref)
        assert key is not None
        return key

    async def _object_info(self, ref: ShardRef) -> ObjectInfo:
        """Size and ETag: the index's size when a CRC checks the whole (no request), else a HEAD
        (remembered), which must agree with the index's size."""
        info = self._info.get(ref.url)
        if info is None:
            if ref.size is not None and ref.crc32 is not None:
                return ObjectInfo(ref.size, None)
            info = await ref.source.ahead(ref.name)
            if ref.size is not None and info.size != ref.size:
                raise ShardIntegrityError(f"{ref.url}: the store has {info.size} bytes, the index "
                                          f"says {ref.size}")
            self._info[ref.url] = info
        return info

    def _size(self, ref: ShardRef) -> int:
        info = self._info.get(ref.url)
        return ref.size if ref.size is not None else (info.size if info else self.chunk_bytes)

    def _path(self, key: str) -> Path:
        return self.folder / f"{key}{SUFFIX}"

    # what is here ------------------------------------------------------------------------------
    def _here(self, key: str, touch: bool = False) -> Shard | None:
        """The shard of ``key`` if this process has it (held, a checked file, or still in use)."""
        held = self._held.get(key)
        if held is not None:
            if touch:
                held.last_use = time.monotonic()
            return held.shard
        shard: Shard | None = self._files.get(key) or self._live.get(key)
        return None if shard is None or shard.error is not None else shard

    def _keep(self, key: str, shard: Shard) -> None:
        self._live[key] = shard
        if isinstance(shard, ShardFile):
            self._files[key] = shard
        elif self._make_room(shard.size):
            self._held[key] = _Held(shard)

    def _forget(self, key: str, shard: Shard) -> None:
        if self._live.get(key) is shard:
            del self._live[key]
        held = self._held.get(key)
        if held is not None and held.shard is shard:
            del self._held[key]

    # filling -----------------------------------------------------------------------------------
    def _start(self, key: str, ref: ShardRef, waited: bool) -> asyncio.Task[Shard]:
        """Bring shard ``ref`` here: from the disk cache when it is there, else downloaded (in
        ranges of ``chunk_bytes`` when a reader is ``waited`` on it, twice that ahead of need).
        The task is named "load" or "fetch" (a hit or a miss for the items that wait on it)."""
        on_disk = self.disk_bytes != 0 and _size_of(self._path(key)) == self._size(ref)
        chunk = self.chunk_bytes if waited else 2 * self.chunk_bytes
        task = asyncio.create_task(self._bring(ref, key, on_disk, chunk),
                                   name="load" if on_disk else "fetch")
        self._opening[key] = task
        task.add_done_callback(lambda t: self._opening.pop(key, None) if self._opening.get(key) is t else None)
        return task

    async def _bring(self, ref: ShardRef, key: str, on_disk: bool, chunk: int) -> Shard:
        path = self._path(key)
        if on_disk and (shard := await self._load(ref, key, path)) is not None:
            return shard
        await self._object_info(ref)
        if self.disk_bytes == 0:
            return self._begin_download(ref, key, None, chunk)
        await to_io(_prepare, self.folder)
        lock = await _acquire(self.folder / f"{key}.lock")
        try:
            if await to_io(_size_of, path) == self._size(ref) \
                    and (shard := await self._load(ref, key, path)) is not None:
                lock.release()  # another process fetched it meanwhile
                return shard
            return self._begin_download(ref, key, lock, chunk)  # it releases the lock
        except BaseException:
            lock.release()
            raise

    async def _load(self, ref: ShardRef, key: str, path: Path) -> Shard | None:
        """A shard already on disk, checked whole: into memory if the budget allows, else read
        from its file per item. None when the file is gone or corrupt (then it is deleted)."""
        size = self._size(ref)
        try:
            if size > self.memory_bytes:
                if not await to_io(_file_intact, path, ref):
                    await to_io(_unlink, path)
                    return None
                shard: Shard = await to_io(ShardFile, path, size)
            else:
                buffer = ShardBuffer(size, self.chunk_bytes, ref.per_item)
                if not (await to_io(_read_into, path, buffer.view)
                        and await to_io(_intact, buffer.view, ref)):
                    await to_io(_unlink, path)
                    return None
                buffer.finish()
                shard = buffer
        except FileNotFoundError:  # evicted by another process meanwhile
            return None
        self._keep(key, shard)
        return shard

    def _begin_download(self, ref: ShardRef, key: str, lock: BaseFileLock | None, chunk: int) -> ShardBuffer:
        """Start downloading ``ref`` into a new buffer and return it at once (its bytes are
        usable as they arrive); the download holds ``lock`` until the shard is on disk."""
        shard = ShardBuffer(self._size(ref), chunk, ref.per_item)
        self._keep(key, shard)
        task = asyncio.create_task(self._fill(ref, key, shard, lock))
        self._downloads[task] = shard
        task.add_done_callback(lambda t: self._downloads.pop(t, None))
        return shard

    async def _fill(self, ref: ShardRef, key: str, shard: ShardBuffer,
                    lock: BaseFileLock | None) -> None:
        """Download into ``shard``; then write it to disk in the background (still under the
        lock). A failure goes to the shard's readers (none may be waiting: read-ahead)."""
        try:
            await self._download(ref, shard)
        except BaseException as exc:
            shard.fail(exc if isinstance(exc, Exception)
                       else RuntimeError(f"{ref.url}: the download was stopped (the cache closed)"))
            self._forget(key, shard)
            if lock is not None:
                lock.release()
            if not isinstance(exc, Exception):
                raise
            return
        if lock is None:
            return
        writer = asyncio.create_task(self._store(ref, key, shard.view, lock))
        self._writes.add(writer)
        writer.add_done_callback(self._writes.discard)

    async def _store(self, ref: ShardRef, key: str, data: memoryview, lock: BaseFileLock) -> None:
        """Write a downloaded shard to the cache folder (if the disk budget allows), atomically,
        then let other processes waiting for it in. A shard whose items were checked one by one
        is checked whole first: a copy that does not match the index is not kept."""
        try:
            if ref.per_item and not await to_io(_intact, data, ref):
                log.warning("%s: the download does not match the index's CRC-32; not cached "
                            "(its items are checked one by one as they are read)", ref.url)
                return
            if await self._room_on_disk(len(data), key):
                try:
                    await to_io(_write_shard, self._path(key), data)
                except Exception:  # not written (a cancelled wait leaves the thread writing)
                    self._mine.pop(key, None)
                    raise
                finally:
                    self._writing.discard(key)
        finally:
            lock.release()

    async def _download(self, ref: ShardRef, shard: ShardBuffer) -> None:
        """Fill ``shard`` with ``ref``'s bytes, range by range, streamed, and check the whole
        against the index (an error when it does not match), unless its items are checked one
        by one: then every use checks its item, and the whole is checked before it is written to
        disk (``_store``) and whenever a cached file is loaded."""
        info = await self._object_info(ref)
        if self._requests is None:
            self._requests = asyncio.Semaphore(self.max_requests)
        requests = self._requests
        self._downloading += shard.size

        async def fill(lo: int, hi: int) -> None:
            async with requests:
                await ref.source.aget_into(ref.name, shard.view[lo:hi], lo,
                                           lambda n: shard.filled(lo, n), etag=info.etag)

        try:
            await _gather_all([fill(lo, hi) for lo, hi in shard.ranges()])
        finally:
            self._downloading -= shard.size
        if not ref.per_item and not await to_io(_intact, shard.view, ref):  # off the loop
            raise ShardIntegrityError(f"{ref.url}: CRC-32 of the download is not the index's "
                                      f"{ref.crc32:#010x} (corrupt in transit or in the store)")
        shard.finish()

    # budgets -------------------------------------------------------------------------------------
    def _make_room(self, size: int) -> bool:
        """Evict from memory (done shards, then least recently used) until ``size`` fits."""
        if size > self.memory_bytes:
            return False
        used = self.held_bytes()
        for key in self._eviction_order(self._held):
            if used + size <= self.memory_bytes:
                break
            used -= self._held.pop(key).shard.size
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


def _prepare(folder: Path) -> None:
    """Make the cache folder, and import the file lock (off the loop, before it is needed)."""
    import filelock  # noqa: F401

    folder.mkdir(parents=True, exist_ok=True)


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


def _write_shard(path: Path, data: bytes | bytearray | memoryview) -> None:
    with atomic_file(path) as f:
        f.write(data)


def _size_of(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return None


def _unlink(path: Path) -> None:
    path.unlink(missing_ok=True)


def _read_into(path: Path, into: memoryview) -> bool:
    """Fill ``into`` from the file; False if the file is shorter or longer."""
    with open(path, "rb", buffering=0) as f:
        done = 0
        while done < len(into):
            n = f.readinto(into[done:])
            if not n:
                return False
            done += n
        return not f.read(1)


def _intact(data: bytes | bytearray | memoryview, ref: ShardRef) -> bool:
    if ref.size is not None and len(data) != ref.size:
        return False
    return ref.crc32 is None or crc32(data) == ref.crc32


def _file_intact(path: Path, ref: ShardRef) -> bool:
    """``_intact`` for a file, read a piece at a time (a shard over the memory budget)."""
    size, crc = 0, 0
    with open(path, "rb") as f:
        while piece := f.read(_CHECK_PIECE):
            size += len(piece)
            crc = zlib.crc32(piece, crc)
    if ref.size is not None and size != ref.size:
        return False
    return ref.crc32 is None or crc & 0xFFFFFFFF == ref.crc32


async def _acquire(lock_path: Path) -> BaseFileLock:
    """The machine-wide lock of one shard, polled without blocking the loop."""
    from filelock import FileLock, Timeout

    lock = FileLock(str(lock_path), timeout=0)
    while True:
        try:
            lock.acquire(timeout=0)
            return lock
        except Timeout:
            await asyncio.sleep(LOCK_POLL_S)


async def _gather_all(coros: list[Coroutine[object, object, None]]) -> None:
    """Run ``coros`` together; on the first failure cancel the rest and raise it."""
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        await asyncio.gather(*tasks)
    except BaseException:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise

