"""The compute thread's road to the loop, and how handlers are dispatched across it.

Sync code runs on the compute thread, async code on the loop: a sync handler is called inline,
in priority order; a run of consecutive ``async def`` handlers is awaited on the loop in one
crossing while the compute thread waits. A sync handler that returns an awaitable has it awaited
on the loop before the next handler. ``engine.run(...)`` in a sync handler on the compute thread
runs to completion (Ignite's nested run); one that creates a coroutine on the loop's thread
(a sync handler fired there) and drops it is an error, never a silent no-op.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import inspect
import threading
from collections.abc import Awaitable, Coroutine, Sequence
from typing import TypeVar

from ..events import HandlerEntry
from ..runtime.portal import LoopPortal
from .modes import TorchModes

__all__ = ["Cancelled", "LoopBridge", "call_handlers", "current_bridge", "note_run_created"]

T = TypeVar("T")


class Cancelled(BaseException):
    """The task awaiting ``run`` was cancelled: stop without firing anything more.
    ``remaining`` holds the handlers of the interrupted event that did not complete."""

    def __init__(self, remaining: Sequence[HandlerEntry] = ()) -> None:
        super().__init__()
        self.remaining = list(remaining)


_local = threading.local()


def current_bridge() -> LoopBridge | None:
    """The bridge of the engine whose driver runs on this thread, if any."""
    return getattr(_local, "bridge", None)


def note_run_created(coro: Coroutine[object, object, object]) -> None:
    """``Engine.run`` reports its coroutine here: if a sync handler dispatched on this thread
    neither returns nor awaits it, the dispatcher names the handler."""
    created = getattr(_local, "created", None)
    if created is not None:
        created.append(coro)


class LoopBridge(LoopPortal):
    """The engine's portal to its loop (``runtime.LoopPortal``): a crossing from the compute
    thread carries the run's torch modes, and a cancelled run is ``Cancelled`` there."""

    def __init__(self, loop: asyncio.AbstractEventLoop, modes: TorchModes) -> None:
        super().__init__(loop)
        self.modes = modes

    def enter(self) -> None:
        """Mark the calling (compute) thread as this bridge's driver thread."""
        _local.bridge = self

    def leave(self) -> None:
        _local.bridge = None

    def cross(self, awaitable: Awaitable[T]) -> T:
        """Await ``awaitable`` on the loop and block this thread for its result."""
        try:
            return self.block_on(self.modes.wrap(awaitable))
        except cf.CancelledError:
            raise Cancelled from None


def call_handlers(due: Sequence[HandlerEntry], engine: object, args: tuple[object, ...],
                  bridge: LoopBridge | None) -> None:
    """Run ``due`` in order on this thread; async ones go to the loop through ``bridge``.

    Without a bridge (the loop's own thread, outside a run) async handlers cannot be awaited:
    that is an error telling the caller to use ``afire_event``."""
    prev = getattr(_local, "created", None)
    created: list[Coroutine[object, object, object]] = []
    _local.created = created
    try:
        i, n = 0, len(due)
        while i < n:
            entry = due[i]
            if entry.is_async:
                j = i + 1
                while j < n and due[j].is_async:
                    j += 1
                if bridge is None:
                    raise RuntimeError(f"{entry!r} is async: fire the event with "
                                       "'await engine.afire_event(...)' from a coroutine")
                done = [0]
                try:
                    bridge.cross(_call_async(due[i:j], engine, args, done))
                except Cancelled:
                    raise Cancelled(due[i + done[0]:]) from None
                i = j
                continue
            result = entry.invoke(engine, args)
            if created:
                _check_dropped(entry, created, result)
            if result is not None and inspect.isawaitable(result):
                if bridge is None:
                    _close(result)
                    raise RuntimeError(f"{entry!r} returned an awaitable: fire the event with "
                                       "'await engine.afire_event(...)' from a coroutine")
                try:
                    bridge.cross(result)
                except Cancelled:
                    raise Cancelled(due[i + 1:]) from None
            i += 1
    finally:
        _local.created = prev


async def _call_async(entries: Sequence[HandlerEntry], engine: object, args: tuple[object, ...],
                      done: list[int]) -> None:
    for entry in entries:
        result = entry.invoke(engine, args)
        if inspect.isawaitable(result):
            await result
        done[0] += 1


async def acall_handlers(due: Sequence[HandlerEntry], engine: object, args: tuple[object, ...]) -> None:
    """Run ``due`` on the loop (``afire_event``): sync handlers called, async ones awaited."""
    for entry in due:
        result = entry.invoke(engine, args)
        if inspect.isawaitable(result):
            await result


def _check_dropped(entry: HandlerEntry, created: list[Coroutine[object, object, object]],
                   result: object) -> None:
    dropped = [c for c in created if c is not result
               and inspect.getcoroutinestate(c) == inspect.CORO_CREATED]
    created.clear()
    for coro in dropped:
        _close(coro)
    if dropped:
        raise RuntimeError(
            f"{entry!r} called engine.run(...) on the event loop's thread and dropped the "
            "coroutine, so that run never happens: make the handler 'async def' and await it")


def _close(awaitable: object) -> None:
    close = getattr(awaitable, "close", None)
    if callable(close):
        close()
