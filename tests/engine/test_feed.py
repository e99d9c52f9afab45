"""The engine's data feed: no prefetch of the loader outlives the run that started it."""

from __future__ import annotations

import asyncio

import pytest

from aiotrain import Engine, Events
from aiotrain.data.loader import AsyncLoader


class Items:
    def __len__(self) -> int:
        return 20

    async def aget(self, i: int) -> int:
        await asyncio.sleep(0.001)
        return i


def _other_tasks() -> list[asyncio.Task]:
    return [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]


async def test_a_completed_run_leaves_no_early_started_epoch_behind():
    loader = AsyncLoader(Items(), batch_size=4)
    engine = Engine(lambda e, b: None)
    await engine.run(loader, max_epochs=2)
    # the last epoch started the next one early (no gap at epoch boundaries); the run's end drops it
    assert _other_tasks() == []
    await engine.run(loader, max_epochs=3)  # a continued run starts that epoch afresh
    assert engine.state.epoch == 3 and engine.state.iteration == 15
    assert _other_tasks() == []


@pytest.mark.parametrize("at_epoch_end", [False, True])
async def test_a_cancelled_run_leaves_no_producer_task(at_epoch_end):
    loader = AsyncLoader(Items(), batch_size=4)
    engine = Engine(lambda e, b: None)
    reached = asyncio.Event()
    if at_epoch_end:  # cancelled while the next epoch is prefetched and not yet opened
        async def wait_at_epoch_end(e):
            reached.set()
            await asyncio.sleep(10)

        engine.add_event_handler(Events.EPOCH_COMPLETED, wait_at_epoch_end)
    else:
        engine.add_event_handler(Events.ITERATION_COMPLETED, lambda e: reached.set())
    task = asyncio.create_task(engine.run(loader, max_epochs=5))
    await reached.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert _other_tasks() == []


def _double(item, gen):
    return item * 2


async def test_workers_outlive_a_completed_run_for_the_next_one():
    """Dropping the early start at a run's end is not a cancellation: the workers are kept."""
    loader = AsyncLoader(Items(), batch_size=4, transform=_double, workers=2)
    async with loader:
        engine = Engine(lambda e, b: None)
        await engine.run(loader, max_epochs=1)
        pids = loader.worker_pids
        assert len(pids) == 2
        await Engine(lambda e, b: None).run(loader, max_epochs=1)
        assert loader.worker_pids == pids
    assert loader.worker_pids == []
