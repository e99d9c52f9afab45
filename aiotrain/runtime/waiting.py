"""How the loop waits for work that runs elsewhere without blocking, and without letting a
cancellation return before that work has stopped touching shared state."""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import contextlib
import threading
from collections.abc import Callable
from typing import TypeVar

__all__ = ["await_future", "join_thread", "settle", "wait_readable"]

T = TypeVar("T")


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


def settle(fut: cf.Future[T], call: Callable[[], T]) -> None:
    """Run ``call`` for ``fut`` on the thread it was handed to, unless ``fut`` was cancelled
    first: its result or its error (never swallowed) is what the waiter gets."""
    if not fut.set_running_or_notify_cancel():
        return
    try:
        fut.set_result(call())
    except BaseException as exc:  # handed to the waiting side
        fut.set_exception(exc)


async def join_thread(thread: threading.Thread) -> None:
    """Join ``thread`` without blocking the loop: poll briefly, it is about to exit."""
    delay = 0.0005
    while thread.is_alive():
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.02)


async def wait_readable(fd: int) -> None:
    """Wait on the running loop until ``fd`` is readable (a pidfd: its process has ended)."""
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[None] = loop.create_future()

    def readable() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_reader(fd, readable)
    try:
        await ready
    finally:
        loop.remove_reader(fd)
