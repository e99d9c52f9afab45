"""The CPU stage of AsyncLoader: transforms in worker processes, per-item generators, skipping
bad items, worker death, cancellation clean-up, the next epoch's early start."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
import time

import pytest
import torch

from aiotrain import AsyncLoader, Engine
from aiotrain.data import DatasetError
from aiotrain.data.stage import item_generator
from tests.data.leftovers import no_children_left, shm_names


class SyncItems:
    """Sync items; ``bad`` indices raise, ``die`` kills the process reading it (a worker)."""

    def __init__(self, n=48, bad=(), die=None):
        self.n, self.bad, self.die = n, set(bad), die

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        if i in self.bad:
            raise ValueError(f"bad record {i}")
        if i == self.die:
            os.kill(os.getpid(), signal.SIGKILL)
        return torch.full((4,), float(i))


class AsyncItems(SyncItems):
    def __init__(self, n=48, log=None, **kw):
        super().__init__(n, **kw)
        self.log = log if log is not None else []

    async def aget(self, i):
        self.log.append(i)
        await asyncio.sleep(0.0005)
        return self[i]


def augment(x, gen):
    """A random augmentation that draws only from the item's generator."""
    return {"x": x * torch.rand(4, generator=gen), "flip": bool(torch.rand((), generator=gen) < 0.5)}


async def _epochs(loader, n=2):
    out = []
    async with loader:
        for _ in range(n):
            out.append([b async for b in loader])
    return out


def _flat(epochs):
    return torch.cat([torch.cat([b["x"] for b in e]) for e in epochs])


@pytest.mark.parametrize("cls", [SyncItems, AsyncItems])
def test_augmentation_is_bit_identical_whatever_the_worker_count(cls):
    results = {w: asyncio.run(_epochs(AsyncLoader(cls(), 8, shuffle=True, seed=5,
                                                  transform=augment, workers=w)))
               for w in (0, 1, 3)}
    ref = _flat(results[0])
    for w in (1, 3):
        assert torch.equal(_flat(results[w]), ref), f"workers={w} differs from workers=0"
        assert all(torch.equal(a["flip"], b["flip"]) for ea, eb in zip(results[w], results[0], strict=True)
                   for a, b in zip(ea, eb, strict=True))
    # each item drew from its own (seed, epoch, index) generator, and the two epochs differ
    first = results[0][0][0]
    order0 = AsyncLoader(SyncItems(), 8, shuffle=True, seed=5).order(0)
    expect = torch.full((4,), float(order0[0])) * torch.rand(4, generator=item_generator(5, 0, order0[0]))
    assert torch.equal(first["x"][0], expect)
    assert not torch.equal(_flat(results[0][:1]), _flat(results[0][1:]))
    assert no_children_left()


def test_workers_start_once_reused_across_epochs_and_batches_come_back_in_shared_memory():
    async def main():
        loader = AsyncLoader(SyncItems(n=40), 8, workers=2)
        pids, shared = [], []
        async with loader:
            for _ in range(3):
                async for b in loader:
                    shared.append(b.untyped_storage().is_shared())
                pids.append(tuple(loader.worker_pids))
        return pids, shared, loader.worker_pids

    pids, shared, after = asyncio.run(main())
    assert len(set(pids)) == 1 and len(pids[0]) == 2, pids
    assert all(shared)  # the batch is the worker's shared segment, mapped, not a copy
    assert after == [] and no_children_left()


def test_order_kept_with_workers_under_latency():
    batches = asyncio.run(_epochs(AsyncLoader(AsyncItems(n=100), 7, workers=2, concurrency=16), 1))
    assert torch.cat(batches[0])[:, 0].tolist() == [float(i) for i in range(100)]


def test_a_worker_that_dies_is_an_error_naming_the_item_not_a_hang():
    loader = AsyncLoader(SyncItems(n=32, die=13), 8, workers=2)
    with pytest.raises(DatasetError, match=r"item 13 .*died \(killed by signal 9\)") as info:
        asyncio.run(asyncio.wait_for(_epochs(loader, 1), 30))
    assert info.value.index == 13
    assert no_children_left()


def test_skip_errors_skips_counts_and_logs_then_fails_past_the_budget(caplog):
    caplog.set_level(logging.WARNING, "aiotrain.data.loader")
    for workers in (0, 2):
        loader = AsyncLoader(SyncItems(n=24, bad={3, 17}), 8, skip_errors=2, workers=workers)
        (epoch,) = asyncio.run(_epochs(loader, 1))
        assert [len(b) for b in epoch] == [7, 8, 7]
        assert [(e, i) for e, i, _ in loader.skipped if e == 0] == [(0, 3), (0, 17)]
        assert "ValueError: bad record 3" in loader.skipped[0][2]
        assert "skipped dataset item 17 in epoch 0 (2 of skip_errors=2)" in caplog.text
        over = AsyncLoader(SyncItems(n=24, bad={3, 17, 20}), 8, skip_errors=2, workers=workers)
        with pytest.raises(DatasetError, match="item 20 failed: ValueError: bad record 20") as info:
            asyncio.run(_epochs(over, 1))
        assert "skip_errors=2 items were already skipped in epoch 0" in str(info.value.__cause__.__notes__)
    default = AsyncLoader(SyncItems(n=24, bad={5}), 8)
    with pytest.raises(DatasetError, match="item 5 failed"):
        asyncio.run(_epochs(default, 1))


def test_the_next_epoch_is_prefetched_before_the_current_one_is_closed_within_the_bound():
    log = []

    async def main():
        loader = AsyncLoader(AsyncItems(n=32, log=log), 4, prefetch=3)
        async with loader:
            stream = await loader.open_stream(0)
            for _ in range(8):
                await stream.anext()
            for _ in range(200):  # the epoch-1 fetches start without anyone asking for epoch 1
                if len(log) >= 32 + 3 * 4:
                    break
                await asyncio.sleep(0.005)
            early = list(log[32:])
            await asyncio.sleep(0.05)
            bounded = len(log) - 32
            await stream.aclose()
            nxt = await loader.open_stream(1)
            first = await nxt.anext()
            await nxt.aclose()
        return early, bounded, first

    early, bounded, first = asyncio.run(main())
    assert early == list(range(12)), early  # epoch 1's first three batches, nothing more
    assert bounded == 12
    assert first[:, 0].tolist() == [0.0, 1.0, 2.0, 3.0]  # the adopted stream, from its start


@pytest.mark.parametrize("workers", [0, 1])
def test_cancel_abandons_a_hung_sync_item_and_completes_at_once(workers, caplog):
    caplog.set_level(logging.WARNING, "aiotrain.data.loader")
    release = threading.Event()

    class Hung(SyncItems):
        def __getitem__(self, i):
            if i == 10:
                release.wait()
            return super().__getitem__(i)

    shm_before = shm_names()

    async def main():
        loader = AsyncLoader(Hung(n=64), 4, workers=workers)
        engine = Engine(lambda e, b: None)
        task = asyncio.create_task(engine.run(loader, max_epochs=1))
        await asyncio.sleep(0.5)  # batches 0-1 done, batch 2 waits on the hung item
        assert not task.done()
        t0 = time.perf_counter()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        took = time.perf_counter() - t0
        await loader.aclose()
        return took

    try:
        took = asyncio.run(main())
    finally:
        release.set()
    # nominally ~0.2 s (the grace) or a kill; the bound is loose for loaded machines: what is
    # tested is that the cancel does not wait for an item that never returns
    assert took < 2.0, f"cancel took {took:.2f} s"
    if workers == 0:
        assert "sync read still running at cancellation; abandoned" in caplog.text
    assert no_children_left()
    assert shm_names() == shm_before


def test_cancel_mid_epoch_stops_workers_and_leaves_no_process_or_segment():
    shm_before = shm_names()

    async def main():
        loader = AsyncLoader(AsyncItems(n=4000), 16, workers=2, transform=augment)
        seen = []

        async def consume():
            async for b in loader:
                seen.append(b)

        task = asyncio.create_task(consume())
        while len(seen) < 3:  # noqa: ASYNC110 - waiting on the consumer task's progress
            await asyncio.sleep(0.01)
        pids = loader.worker_pids
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return pids, loader.worker_pids

    pids, after = asyncio.run(main())
    assert len(pids) == 2 and after == []
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert no_children_left()
    assert shm_names() == shm_before


def test_workers_zero_without_transform_is_todays_path():
    batches = asyncio.run(_epochs(AsyncLoader(SyncItems(n=10), 4), 1))
    assert [b[:, 0].tolist() for b in batches[0]] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


def test_bad_arguments_are_clear():
    with pytest.raises(ValueError, match="workers must be a non-negative integer"):
        AsyncLoader(SyncItems(), 4, workers=-1)
    with pytest.raises(ValueError, match="skip_errors must be a non-negative integer"):
        AsyncLoader(SyncItems(), 4, skip_errors=1.5)
    with pytest.raises(TypeError, match="transform must be callable"):
        AsyncLoader(SyncItems(), 4, transform="flip")
