"""runtime.portal: a thread's road back to the loop (notify, run, cancel)."""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import threading

from aiotrain.runtime import LoopPortal, to_io


async def test_notify_runs_on_the_loop_now_when_there_and_soon_from_a_thread():
    portal = LoopPortal()
    seen: list[tuple[str, int]] = []

    def record(tag: str) -> None:
        seen.append((tag, threading.get_ident()))

    portal.notify(record, "inline")
    assert seen == [("inline", threading.get_ident())]  # already on the loop: called at once
    await to_io(portal.notify, record, "from a thread")
    await asyncio.sleep(0)
    assert seen[1] == ("from a thread", threading.get_ident())  # ran on the loop's thread
    assert portal.on_loop() and not await to_io(portal.on_loop)


async def test_block_on_blocks_the_thread_for_a_coroutine_on_the_loop():
    portal = LoopPortal()

    async def on_loop(x: int) -> tuple[int, int]:
        await asyncio.sleep(0.01)
        return x * 2, threading.get_ident()

    value, ident = await to_io(portal.block_on, on_loop(21))
    assert value == 42 and ident == threading.get_ident()


def _crossing(portal: LoopPortal, awaitable) -> str:
    """On a thread: what the portal's ``block_on`` did with ``awaitable``."""
    try:
        return f"returned {portal.block_on(awaitable)}"
    except cf.CancelledError:
        return "cancelled"


async def test_cancel_interrupts_a_crossing_in_flight_and_refuses_later_ones():
    portal = LoopPortal()
    entered = asyncio.Event()

    async def forever() -> None:
        entered.set()
        await asyncio.sleep(3600)

    async def quick() -> int:
        return 1

    assert await to_io(_crossing, portal, quick()) == "returned 1"
    crossing = asyncio.ensure_future(to_io(_crossing, portal, forever()))
    await entered.wait()
    portal.cancel()
    assert await crossing == "cancelled"
    assert await to_io(_crossing, portal, quick()) == "cancelled"
