"""The ordered batch stream: batches put in any order come out in order, on the loop or on
another thread; a producer's error comes after the batches before it; the budget bounds what is
started and not consumed; AsyncLoader.wrap serves any iterable through it."""

from __future__ import annotations

import asyncio

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from aiotrain import AsyncLoader, Engine
from aiotrain.data.stream import Budget, Stream, StreamClosed
from aiotrain.runtime import LoopPortal, to_io


def _stream(budget: Budget | None = None) -> tuple[Stream, list[int]]:
    consumed: list[int] = []
    stream = Stream(LoopPortal(), budget or Budget(64), lambda: consumed.append(1), lambda b: b)
    return stream, consumed


@settings(max_examples=30, deadline=None)
@given(st.permutations(range(12)), st.booleans())
def test_batches_put_in_any_order_come_out_in_order(order, on_a_thread):
    async def main():
        stream, consumed = _stream()
        for seq in order:
            stream.put(seq, True, seq)
        stream.finish(len(order))
        if on_a_thread:
            def drain():
                out = []
                with pytest.raises(StopIteration):
                    while True:
                        out.append(stream.next_blocking())
                return out
            got = await to_io(drain)
        else:
            got = [b async for b in _aiter(stream)]
        for _ in range(500):  # the thread's consumption notes reach the loop through the portal
            if len(consumed) == len(order):
                break
            await asyncio.sleep(0.002)
        return got, len(consumed)

    got, consumed = asyncio.run(main())
    assert got == sorted(order) and consumed == len(order)


async def _aiter(stream: Stream):
    while True:
        try:
            yield await stream.anext()
        except StopAsyncIteration:
            return


def test_an_error_comes_after_the_batches_before_it_and_closing_wakes_a_waiter():
    async def main():
        stream, _ = _stream()
        stream.put(1, False, ValueError("batch 1"))
        stream.put(0, True, "zero")
        assert await stream.anext() == "zero"
        with pytest.raises(ValueError, match="batch 1"):
            await stream.anext()
        idle, _ = _stream()
        waiter = asyncio.create_task(idle.anext())
        await asyncio.sleep(0)
        await idle.aclose()
        with pytest.raises(StreamClosed):
            await waiter

    asyncio.run(main())


def test_the_budget_bounds_batches_started_and_not_consumed():
    async def main():
        budget = Budget(2)
        stream, _ = _stream(budget)
        await stream.wait_room()
        await stream.wait_room()
        third = asyncio.create_task(stream.wait_room())
        await asyncio.sleep(0.01)
        blocked = not third.done()
        stream.put(0, True, 0)
        await stream.anext()  # consuming one gives its slot back
        await asyncio.wait_for(third, 1.0)
        return blocked, budget.used

    assert asyncio.run(main()) == (True, 2)


def test_wrap_iterables_async_iterables_and_dataloader():
    async def agen():
        for i in range(5):
            await asyncio.sleep(0)
            yield i

    from torch.utils.data import DataLoader, TensorDataset

    dl = DataLoader(TensorDataset(torch.arange(6)), batch_size=2)

    async def main():
        a = [x async for x in AsyncLoader.wrap(range(4))]
        b = [x async for x in AsyncLoader.wrap(agen())]
        c = [x[0].tolist() async for x in AsyncLoader.wrap(dl, prefetch=2)]
        return a, b, c

    assert asyncio.run(main()) == ([0, 1, 2, 3], [0, 1, 2, 3, 4], [[0, 1], [2, 3], [4, 5]])
    seen = []
    Engine(lambda e, b: seen.append(b)).run_sync(agen(), max_epochs=1)
    assert seen == [0, 1, 2, 3, 4]
