"""The one module that owns threads: the event-loop runner, the compute worker and the I/O executor.

Everything else in aiotrain asks this module for a thread; nobody else creates one. That keeps
the rules checkable: a ComputeWorker lives for one ``Engine.run`` (started when it begins,
joined when it ends), the I/O executor is a small shared pool for disk work, and the only
threads that may outlive their caller are the ones ``spawn_daemon`` hands out for work that is
deliberately abandoned (a validation check that hangs).
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import contextlib
import itertools
import os
import queue
import threading
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

__all__ = [
    "ComputeWorker",
    "await_future",
    "io_executor",
    "run",
    "shutdown_io",
    "spawn_daemon",
    "submit_io",
    "to_compute",
    "to_io",
]

_ids = itertools.count(1)


def run(main: Coroutine[Any, Any, T] | Callable[[], Awaitable[T]], *, debug: bool = False) -> T:
    """Run ``main`` to completion on a fresh event loop (uvloop when installed) and return its result.

    The I/O executor is drained before returning so that every write it was given is on disk.
    """
    coro = main() if callable(main) else main
    factory = None
    try:
        import uvloop

        factory = uvloop.new_event_loop
    except ImportError:  # uvloop is an optional extra
        pass
    try:
        with asyncio.Runner(debug=debug, loop_factory=factory) as runner:
            return runner.run(coro)  # type: ignore[arg-type]
    finally:
        shutdown_io(wait=True)


async def await_future(fut: cf.Future[T], on_cancel: Callable[[], None] | None = None) -> T:
    """Await a thread's future; if the awaiting task is cancelled, wait for the work to end, then re-raise.

    Work already running on a thread cannot be interrupted, so cancelling the caller must not
    return before that work stops touching shared state (the model, a file being written).
    ``on_cancel`` is called first, to ask long-running work to stop early.
    """
    afut = asyncio.wrap_future(fut)
    try:
        return await asyncio.shield(afut)
    except asyncio.CancelledError:
        if on_cancel is not None:
            on_cancel()
        if not fut.cancel():
            while not afut.done():
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.wait([afut])
            if not afut.cancelled():
                afut.exception()  # mark the exception retrieved; the cancellation wins
        raise


class ComputeWorker:
    """One dedicated thread that runs calls in submission order (the model's compute).

    On CUDA the worker owns a side stream: every call runs inside ``torch.cuda.stream(stream)``.
    Use it as ``with`` / ``async with`` or call ``start()`` / ``stop()``; ``stop`` joins the thread.
    """

    def __init__(self, name: str | None = None, device: Any = None) -> None:
        self.name = name or f"aiotrain-compute-{next(_ids)}"
        self.device = device
        self.stream: Any = None
        self._queue: queue.SimpleQueue[tuple[cf.Future[Any], Callable[..., Any], tuple[Any, ...], dict[str, Any]] | None]
        self._queue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    # lifecycle -----------------------------------------------------------------------------
    def start(self) -> ComputeWorker:
        """Start the thread (idempotent)."""
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self.stream = _cuda_stream(self.device)
                self._thread = threading.Thread(target=self._main, name=self.name, daemon=True)
                self._thread.start()
        return self

    def stop(self, wait: bool = True) -> None:
        """Ask the thread to finish the queued calls and exit; join it when ``wait``."""
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is None:
            return
        self._queue.put(None)
        if wait and thread is not threading.current_thread():
            thread.join()

    async def astop(self) -> None:
        """Stop and join without blocking the event loop."""
        thread = self._thread
        self.stop(wait=False)
        if thread is not None and thread is not threading.current_thread():
            await _join_async(thread)

    @property
    def is_alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def in_worker(self) -> bool:
        """True when called from this worker's own thread."""
        return self._thread is not None and threading.current_thread() is self._thread

    def __enter__(self) -> ComputeWorker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def __aenter__(self) -> ComputeWorker:
        return self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.astop()

    # work ----------------------------------------------------------------------------------
    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> cf.Future[T]:
        """Queue ``fn(*args, **kwargs)`` on the worker; returns a concurrent future."""
        if self._thread is None:
            raise RuntimeError(f"ComputeWorker {self.name!r} is not running; call start() first")
        fut: cf.Future[T] = cf.Future()
        self._queue.put((fut, fn, args, kwargs))
        return fut

    async def call(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """Run ``fn`` on the worker and await its result (see ``await_future`` for cancellation)."""
        return await await_future(self.submit(fn, *args, **kwargs))

    def _main(self) -> None:
        ctx = _stream_context(self.stream)
        while True:
            item = self._queue.get()
            if item is None:
                return
            fut, fn, args, kwargs = item
            if not fut.set_running_or_notify_cancel():
                continue
            try:
                with ctx():
                    result = fn(*args, **kwargs)
            except BaseException as exc:  # handed to the awaiting side, never swallowed
                fut.set_exception(exc)
            else:
                fut.set_result(result)
            del item, fut, fn, args, kwargs


async def to_compute(fn: Callable[..., T], /, *args: Any, worker: ComputeWorker | None = None,
                     **kwargs: Any) -> T:
    """Run ``fn`` on ``worker``, or on a worker started for this one call and joined after."""
    if worker is not None:
        return await worker.call(fn, *args, **kwargs)
    async with ComputeWorker() as own:
        return await own.call(fn, *args, **kwargs)


def _cuda_stream(device: Any) -> Any:
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a hard dependency
        return None
    dev = torch.device(device) if device is not None else None
    if dev is None or dev.type != "cuda" or not torch.cuda.is_available():
        return None
    return torch.cuda.Stream(device=dev)


def _stream_context(stream: Any) -> Callable[[], contextlib.AbstractContextManager[Any]]:
    if stream is None:
        return contextlib.nullcontext
    import torch

    return lambda: torch.cuda.stream(stream)


async def _join_async(thread: threading.Thread) -> None:
    """Join ``thread`` without blocking the loop: poll briefly, it is about to exit."""
    delay = 0.0005
    while thread.is_alive():
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.02)


# I/O executor ------------------------------------------------------------------------------
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


def submit_io(fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> cf.Future[T]:
    """Queue ``fn`` on the I/O executor from any thread; returns a concurrent future."""
    return io_executor().submit(fn, *args, **kwargs)


async def to_io(fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    """Run blocking ``fn`` on the I/O executor and await it (cancellation waits for the call)."""
    return await await_future(submit_io(fn, *args, **kwargs))


def shutdown_io(wait: bool = True) -> None:
    """Finish queued I/O and stop the executor's threads; the next use starts a new pool."""
    global _io
    with _io_lock:
        pool, _io = _io, None
    if pool is not None:
        pool.shutdown(wait=wait)


def spawn_daemon(fn: Callable[..., T], /, *args: Any, name: str = "aiotrain-daemon",
                 **kwargs: Any) -> cf.Future[T]:
    """Run ``fn`` on a daemon thread nobody joins; for work that may hang and be abandoned.

    The validator uses it to bound a check by a timeout: if the check never returns, its thread
    is left behind (daemon, so interpreter exit does not wait for it) and the caller moves on.
    """
    fut: cf.Future[T] = cf.Future()

    def main() -> None:
        if not fut.set_running_or_notify_cancel():
            return
        try:
            fut.set_result(fn(*args, **kwargs))
        except BaseException as exc:
            fut.set_exception(exc)

    threading.Thread(target=main, name=f"{name}-{next(_ids)}", daemon=True).start()
    return fut
