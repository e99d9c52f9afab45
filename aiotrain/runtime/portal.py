"""From a thread back to the loop: ``LoopPortal``, the one road from a worker thread (the compute
thread, an I/O thread) to the event loop that owns the run.

``notify(fn, *args)`` hands a callback to the loop and returns at once (a snapshot for an
observer, "a batch was consumed"); ``block_on(awaitable)`` awaits a coroutine on the loop and blocks
the calling thread for its result (an ``async def`` handler between two steps). ``cancel()``,
on the loop, refuses further crossings and interrupts the one in flight, whose thread then sees
``concurrent.futures.CancelledError``: that is how a cancelled run reaches its compute thread.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import threading
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

__all__ = ["LoopPortal"]

T = TypeVar("T")


async def _await(portal: LoopPortal, awaitable: Awaitable[T]) -> T:
    """On the loop: ``awaitable``'s result, unless the portal was cancelled first. Checked here,
    on the loop that ``cancel()`` runs on, so a crossing that starts after a cancel is refused
    however quickly its awaitable would have finished."""
    if portal.cancelled:
        if asyncio.iscoroutine(awaitable):
            awaitable.close()
        raise asyncio.CancelledError
    return await awaitable


class LoopPortal:
    """A portal to ``loop``; create it on the loop's own thread (it remembers which one)."""

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.loop = loop if loop is not None else asyncio.get_running_loop()
        self.loop_thread = threading.get_ident()
        self.cancelled = False
        self._crossing: cf.Future[Any] | None = None

    def on_loop(self) -> bool:
        """True on the loop's own thread, where no crossing is needed (or possible)."""
        return threading.get_ident() == self.loop_thread

    def notify(self, fn: Callable[..., object], /, *args: Any) -> None:
        """Call ``fn(*args)`` on the loop: now when already there, else as soon as the loop gets
        to it (from any thread; does not wait)."""
        if self.on_loop():
            fn(*args)
        else:
            self.loop.call_soon_threadsafe(fn, *args)

    def block_on(self, awaitable: Awaitable[T]) -> T:
        """Await ``awaitable`` on the loop and block this (non-loop) thread for its result;
        ``concurrent.futures.CancelledError`` if the portal is or gets cancelled meanwhile."""
        fut = asyncio.run_coroutine_threadsafe(_await(self, awaitable), self.loop)
        self._crossing = fut
        if self.cancelled:  # cancelled on the loop after _await began, before _crossing was set
            fut.cancel()
        try:
            return fut.result()
        finally:
            self._crossing = None

    def cancel(self) -> None:
        """On the loop: refuse further crossings and interrupt the one in flight."""
        self.cancelled = True
        crossing = self._crossing
        if crossing is not None:
            crossing.cancel()
