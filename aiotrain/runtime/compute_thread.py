"""To the compute thread: ``ComputeWorker``, one dedicated thread that runs calls in order.

A ComputeWorker lives for one ``Engine.run``: started when it begins, joined when it ends, so
no compute thread outlives its run. On CUDA it owns a side stream and runs every call inside it.
Its start and stop tell ``heap`` that a run began or ended (the heap is frozen while runs go).
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import functools
import itertools
import queue
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, ParamSpec, TypeVar

from . import heap
from .waiting import await_future, join_thread, settle

if TYPE_CHECKING:
    import torch

__all__ = ["ComputeWorker", "to_compute"]

T = TypeVar("T")
P = ParamSpec("P")

_ids = itertools.count(1)
_Call = Callable[[], None]  # a call and the future it settles, bound together


class ComputeWorker:
    """One dedicated thread that runs calls in submission order (the model's compute).

    On CUDA the worker owns a side stream: every call runs inside ``torch.cuda.stream(stream)``.
    Use it as ``with`` / ``async with`` or call ``start()`` / ``stop()``; ``stop`` joins the thread.
    """

    def __init__(self, name: str | None = None, device: torch.device | str | int | None = None) -> None:
        self.name = name or f"aiotrain-compute-{next(_ids)}"
        self.device = device
        self.stream: torch.cuda.Stream | None = None
        self._queue: queue.SimpleQueue[_Call | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    # lifecycle -----------------------------------------------------------------------------
    def start(self) -> ComputeWorker:
        """Start the thread (idempotent)."""
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                if self._thread is None:  # not a restart of a thread that died: a new run
                    heap.run_started()
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
        heap.run_ended()
        self._queue.put(None)
        if wait and thread is not threading.current_thread():
            thread.join()

    async def astop(self) -> None:
        """Stop and join without blocking the event loop."""
        thread = self._thread
        self.stop(wait=False)
        if thread is not None and thread is not threading.current_thread():
            await join_thread(thread)

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
    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> cf.Future[T]:
        """Queue ``fn(*args, **kwargs)`` on the worker; returns a concurrent future."""
        if self._thread is None:
            raise RuntimeError(f"ComputeWorker {self.name!r} is not running; call start() first")
        fut: cf.Future[T] = cf.Future()
        self._queue.put(functools.partial(settle, fut, functools.partial(fn, *args, **kwargs)))
        return fut

    async def call(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Run ``fn`` on the worker and await its result (see ``await_future`` for cancellation)."""
        return await await_future(self.submit(fn, *args, **kwargs))

    def _main(self) -> None:
        ctx = _stream_context(self.stream)
        while True:
            item = self._queue.get()
            if item is None:
                return
            with ctx():
                item()  # settles its future: the result, or the error, never swallowed
            del item


async def to_compute(fn: Callable[..., T], /, *args: object, worker: ComputeWorker | None = None,
                     **kwargs: object) -> T:
    """Run ``fn`` on ``worker``, or on a worker started for this one call and joined after."""
    if worker is not None:
        return await worker.call(fn, *args, **kwargs)
    async with ComputeWorker() as own:
        return await own.call(fn, *args, **kwargs)


def _cuda_stream(device: torch.device | str | int | None) -> torch.cuda.Stream | None:
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a hard dependency
        return None
    dev = torch.device(device) if device is not None else None
    if dev is None or dev.type != "cuda" or not torch.cuda.is_available():
        return None
    return torch.cuda.Stream(device=dev)


def _stream_context(stream: torch.cuda.Stream | None) -> Callable[[], contextlib.AbstractContextManager[object]]:
    if stream is None:
        return contextlib.nullcontext
    import torch

    return lambda: torch.cuda.stream(stream)
