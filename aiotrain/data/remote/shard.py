"""One shard's bytes where the items are read from: in shared memory while it arrives, or in a
cache file too big for the memory budget.

- ``ShardBuffer``: the shard in a memfd (shared memory with no name: nothing in /dev/shm, gone with
  its last user), filled by the cache's range downloads as their bytes arrive. A reader waits for
  the bytes it needs, not for the whole shard: ``await wait(start, end)`` returns once
  ``[start, end)`` may be used, which is once those bytes are here when every item carries its
  own checksum (``per_item``, packed version 2: the reader checks the item), and once the whole
  shard is here and checked against the index otherwise (tar shards, packed version 1).
- ``ShardFile``: a cache file that is read one item at a time (``pread`` on an I/O thread).

Both have a ``fileno()``: a data worker process is sent that descriptor with the items' byte
ranges and reads the items itself (``refs.ItemRef``), so items do not travel pickled from the
event loop. The descriptor stays open while the object lives (an evicted shard lives on while
references to it are in flight).
"""

from __future__ import annotations

import asyncio
import mmap
import os
import weakref
from pathlib import Path

from ...runtime import to_io

__all__ = ["Shard", "ShardBuffer", "ShardFile"]


class ShardBuffer:
    """A shard of ``size`` bytes in a memfd mapping, filled by ranges of ``chunk`` bytes (see the
    module docstring)."""

    def __init__(self, size: int, chunk: int, per_item: bool) -> None:
        self.size, self.chunk, self.per_item = size, max(int(chunk), 1), per_item
        self._fd = os.memfd_create("aiotrain-shard", os.MFD_CLOEXEC)
        try:
            os.ftruncate(self._fd, size)
            self._map = mmap.mmap(self._fd, size) if size else None
        except BaseException:
            os.close(self._fd)
            raise
        weakref.finalize(self, os.close, self._fd)
        self.view = memoryview(self._map) if self._map is not None else memoryview(b"")
        # per range: where its bytes are filled up to (absolute offset)
        self._filled = list(range(0, size, self.chunk))
        self.checked = False  # the whole shard is here and matched the index
        self.error: BaseException | None = None
        self._waiters: list[tuple[int, int, asyncio.Future[None]]] = []

    def fileno(self) -> int:
        """The memfd (borrowed: open while this object lives)."""
        return self._fd

    def ranges(self) -> list[tuple[int, int]]:
        """The ``(start, end)`` of each range to download."""
        return [(lo, min(lo + self.chunk, self.size)) for lo in range(0, self.size, self.chunk)]

    @property
    def complete(self) -> bool:
        """Every byte is here (checked or not)."""
        return self.checked or all(f >= hi for f, (_, hi) in zip(self._filled, self.ranges(), strict=True))

    def ready(self, start: int, end: int) -> bool:
        """True when ``[start, end)`` may be read now (see the module docstring)."""
        if self.checked:
            return True
        if not self.per_item or self.error is not None:
            return False
        for k in range(start // self.chunk, (max(end, start + 1) - 1) // self.chunk + 1):
            if self._filled[k] < min(end, (k + 1) * self.chunk, self.size):
                return False
        return True

    def filled(self, start: int, count: int) -> None:
        """The range starting at ``start`` now has its first ``count`` bytes in place."""
        self._filled[start // self.chunk] = start + count
        if self.per_item:
            self._wake()

    def finish(self) -> None:
        """The whole shard is here and checked."""
        self.checked = True
        self._wake()

    def fail(self, exc: BaseException) -> None:
        """The shard cannot be completed: readers still waiting get ``exc``."""
        self.error = exc
        waiters, self._waiters = self._waiters, []
        for _, _, fut in waiters:
            if not fut.done():
                fut.set_exception(exc)

    def _wake(self) -> None:
        keep = []
        for start, end, fut in self._waiters:
            if fut.done():
                continue
            if self.ready(start, end):
                fut.set_result(None)
            else:
                keep.append((start, end, fut))
        self._waiters = keep

    async def wait(self, start: int, end: int) -> None:
        """Return once ``[start, end)`` may be read; the download's error if it failed."""
        if self.ready(start, end):
            return
        if self.error is not None:
            raise self.error
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((start, end, fut))
        await fut

    async def aread(self, start: int, end: int) -> memoryview:
        """Bytes ``[start, end)``, once they may be read (no copy)."""
        await self.wait(start, end)
        return self.view[start:end]


class ShardFile:
    """A cached shard read from its file, one item at a time (a shard over the memory budget).
    The file was checked whole when it was opened; it is never modified in place (the cache only
    replaces or unlinks files), so the open descriptor keeps reading what was checked."""

    per_item = False
    checked = complete = True
    error: BaseException | None = None

    def __init__(self, path: Path, size: int) -> None:
        self.path, self.size = path, size
        self._fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        weakref.finalize(self, os.close, self._fd)

    def fileno(self) -> int:
        """The open file (borrowed: open while this object lives)."""
        return self._fd

    def ready(self, start: int, end: int) -> bool:
        return True

    async def wait(self, start: int, end: int) -> None:
        return None

    async def aread(self, start: int, end: int) -> bytes:
        """Bytes ``[start, end)``, read on an I/O thread."""
        return await to_io(os.pread, self._fd, end - start, start)


Shard = ShardBuffer | ShardFile
