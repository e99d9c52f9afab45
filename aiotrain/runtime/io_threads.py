"""To I/O threads: the shared pool for blocking disk work (writes, mmap opens, sync reads).

The pool starts on first use and is drained by ``shutdown_io`` (``run`` does it on the way out,
so every write it was given is on disk); the next use starts a new one. ``AIOTRAIN_IO_THREADS``
sets its size (default: cores + 4, at most 32).
"""

from __future__ import annotations

import concurrent.futures as cf
import os
import threading
from collections.abc import Callable
from typing import ParamSpec, TypeVar

from .waiting import await_future

__all__ = ["io_executor", "shutdown_io", "submit_io", "to_io"]

T = TypeVar("T")
P = ParamSpec("P")

_io_lock = threading.Lock()
_io: cf.ThreadPoolExecutor | None = None


def io_executor() -> cf.ThreadPoolExecutor:
    """The shared pool for blocking I/O (disk writes, mmap opens, sync dataset reads)."""
    global _io
    with _io_lock:
        if _io is None:
            workers = int(os.environ.get("AIOTRAIN_IO_THREADS", "0")) or min(32, (os.cpu_count() or 1) + 4)
            _io = cf.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="aiotrain-io")
        return _io


def submit_io(fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> cf.Future[T]:
    """Queue ``fn`` on the I/O executor from any thread; returns a concurrent future."""
    return io_executor().submit(fn, *args, **kwargs)


async def to_io(fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
    """Run blocking ``fn`` on the I/O executor and await it (cancellation waits for the call)."""
    return await await_future(submit_io(fn, *args, **kwargs))


def shutdown_io(wait: bool = True) -> None:
    """Finish queued I/O and stop the executor's threads; the next use starts a new pool."""
    global _io
    with _io_lock:
        pool, _io = _io, None
    if pool is not None:
        pool.shutdown(wait=wait)
