"""Running a call that may hang: on an abandoned daemon thread, awaited for at most a time budget."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import TypeVar, TypeVarTuple, Unpack

from ..runtime import spawn_daemon

__all__ = ["CheckTimeout", "run_bounded"]

T = TypeVar("T")
Args = TypeVarTuple("Args")


class CheckTimeout(TimeoutError):
    """A call did not finish within its budget; its thread was left running, unjoined."""


async def run_bounded(fn: Callable[[Unpack[Args]], T], /, *args: *Args, seconds: float) -> T:
    """Run ``fn(*args)`` on a daemon thread (runtime.spawn_daemon) and await it up to ``seconds``.

    On timeout the thread is abandoned (nobody joins a daemon, so neither the caller nor
    ``asyncio.run`` waits for it) and CheckTimeout is raised. If the awaiting task is cancelled,
    it first waits (up to ``seconds``) for the call to end, so a check cannot keep using the model
    after the caller has moved on, then re-raises.
    """
    fut = spawn_daemon(fn, *args, name="aiotrain-validate")
    try:
        return await asyncio.wait_for(asyncio.wrap_future(fut), seconds)
    except TimeoutError:
        raise CheckTimeout(f"did not finish within {seconds:g} s") from None
    except asyncio.CancelledError:
        if not fut.done():
            waiter = asyncio.wrap_future(fut)
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait([waiter], timeout=seconds)
            waiter.cancel()  # a later result must not be delivered to a loop that may be closed
        raise
