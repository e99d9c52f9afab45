"""The event loop: ``run(main)`` runs a coroutine on a fresh loop (uvloop when installed) and
leaves nothing of the runtime's behind when it returns."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

from .io_threads import shutdown_io

__all__ = ["run"]

T = TypeVar("T")


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
