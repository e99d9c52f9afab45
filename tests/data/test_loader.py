"""AsyncLoader: order, concurrency, bounded memory, determinism, resume, errors (the stream
itself and AsyncLoader.wrap: test_stream.py)."""

from __future__ import annotations

import asyncio
import random
import weakref

import pytest
import torch

from aiotrain import AsyncLoader, Engine
from aiotrain.data import DatasetError


class LatencyDataset:
    """Async items behind random latency; counts how many fetches run at once."""

    def __init__(self, n=64, max_latency=0.004, seed=0):
        self.n, self.max_latency = n, max_latency
        self.rng = random.Random(seed)
        self.in_flight = self.peak = self.fetches = 0
        self.log = []

    def __len__(self):
        return self.n

    async def aget(self, i):
        self.in_flight += 1
        self.fetches += 1
        self.log.append(i)
        self.peak = max(self.peak, self.in_flight)
        try:
            await asyncio.sleep(self.rng.random() * self.max_latency)
            return torch.tensor([i])
        finally:
            self.in_flight -= 1


async def _collect(loader):
    return [b.view(-1).tolist() async for b in loader]


def test_batches_in_sampler_order_under_random_latency_and_concurrency_reached():
    ds = LatencyDataset(n=200)
    batches = asyncio.run(_collect(AsyncLoader(ds, 8, concurrency=16, prefetch=4)))
    assert sum(batches, []) == list(range(200))
    assert all(len(b) == 8 for b in batches)
    assert ds.peak == 16


def test_sync_dataset_read_on_abandonable_threads_off_the_loop():
    class Sync:
        def __len__(self):
            return 10

        def __getitem__(self, i):
            import threading
            # reusable threads a hung item can be abandoned on, never the loop nor the I/O pool
            assert threading.current_thread().name.startswith("aiotrain-abandonable")
            return torch.tensor([i])

    batches = asyncio.run(_collect(AsyncLoader(Sync(), 4)))
    assert batches == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert asyncio.run(_collect(AsyncLoader(Sync(), 4, drop_last=True))) == [[0, 1, 2, 3], [4, 5, 6, 7]]


def test_prefetch_bounds_batches_in_memory():
    live = weakref.WeakSet()

    class Tracked(torch.Tensor):
        pass

    def collate(items):
        t = torch.stack(items).as_subclass(Tracked)
        live.add(t)
        return t

    async def main():
        loader = AsyncLoader(LatencyDataset(n=400, max_latency=0.0), 4, prefetch=3, collate_fn=collate)
        peak = 0
        async for batch in loader:
            await asyncio.sleep(0.002)  # a slow consumer: the producer must wait for room
            del batch
            peak = max(peak, len(live))
        return peak

    peak = asyncio.run(main())
    assert 1 <= peak <= 3 + 1  # prefetch waiting + the one being consumed


def test_shuffle_is_a_function_of_seed_and_epoch():
    def epoch_order(seed, epoch):
        loader = AsyncLoader(LatencyDataset(n=50, max_latency=0), 50, shuffle=True, seed=seed)
        loader.set_epoch(epoch)
        return asyncio.run(_collect(loader))[0]

    assert epoch_order(1, 0) == epoch_order(1, 0)
    assert epoch_order(1, 0) != epoch_order(1, 1)
    assert epoch_order(1, 0) != epoch_order(2, 0)
    assert sorted(epoch_order(3, 5)) == list(range(50))


def test_consecutive_async_for_passes_advance_the_epoch():
    async def main():
        loader = AsyncLoader(LatencyDataset(n=20, max_latency=0), 20, shuffle=True, seed=4)
        first, second = await _collect(loader), await _collect(loader)
        return first, second, loader.state_dict()

    first, second, sd = asyncio.run(main())
    assert first != second
    assert sd == {"epoch": 2, "position": 0}


def test_resume_from_state_equals_uninterrupted_pass_without_fetching_skipped():
    full = asyncio.run(_collect(AsyncLoader(LatencyDataset(n=40), 4, shuffle=True, seed=9)))

    async def partial():
        loader = AsyncLoader(LatencyDataset(n=40), 4, shuffle=True, seed=9)
        got = []
        async for b in loader:
            got.append(b.view(-1).tolist())
            if len(got) == 3:
                break
        return got, loader.state_dict()

    head, sd = asyncio.run(partial())
    assert sd == {"epoch": 0, "position": 3}
    ds = LatencyDataset(n=40)
    resumed = AsyncLoader(ds, 4, shuffle=True, seed=9)
    resumed.load_state_dict(sd)
    tail = asyncio.run(_collect(resumed))
    assert head + tail == full
    # the skipped batches were never fetched (later fetches are the next epoch's early start)
    assert sorted(ds.log[:28]) == sorted(sum(tail, []))


def test_engine_resume_with_loader_matches_uninterrupted():
    def run(stop_at=None):
        seen = []
        engine = Engine(lambda e, b: seen.append(b.view(-1).tolist()))
        loader = AsyncLoader(LatencyDataset(n=30), 4, shuffle=True, seed=3)
        if stop_at:
            engine.add_event_handler(
                __import__("aiotrain").Events.ITERATION_COMPLETED(once=stop_at),
                lambda e: e.terminate())
        engine.run_sync(loader, max_epochs=3)
        if stop_at:
            sd = engine.state_dict()
            engine2 = Engine(lambda e, b: seen.append(b.view(-1).tolist()))
            engine2.load_state_dict(sd)
            engine2.run_sync(AsyncLoader(LatencyDataset(n=30), 4, shuffle=True, seed=3))
        return seen

    reference = run()
    assert len(reference) == 24
    for stop in (3, 8, 11):
        assert run(stop) == reference


def test_getitems_called_once_per_batch_and_not_collated():
    class Batched:
        calls = []

        def __len__(self):
            return 10

        def __getitems__(self, indices):
            self.calls.append(list(indices))
            return torch.tensor(indices) * 10

    ds = Batched()
    batches = asyncio.run(_collect(AsyncLoader(ds, 4)))
    assert batches == [[0, 10, 20, 30], [40, 50, 60, 70], [80, 90]]
    assert ds.calls[:3] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]  # then the next epoch's early start


def test_torch_sampler_and_distributed_sampler_epochs():
    from torch.utils.data import DistributedSampler

    ds = LatencyDataset(n=16, max_latency=0)
    shards = []
    for rank in range(2):
        sampler = DistributedSampler(range(16), num_replicas=2, rank=rank, shuffle=True, seed=1)
        loader = AsyncLoader(ds, 4, sampler=sampler)
        loader.set_epoch(1)
        shards.append(sum(asyncio.run(_collect(loader)), []))
    assert sorted(shards[0] + shards[1]) == list(range(16))
    assert len(AsyncLoader(ds, 4, sampler=DistributedSampler(range(16), num_replicas=2, rank=0))) == 2


@pytest.mark.parametrize("kwargs, message", [
    ({"batch_size": 0}, "batch_size must be a positive integer"),
    ({"batch_size": -2}, "batch_size must be a positive integer"),
    ({"concurrency": 0}, "concurrency must be a positive integer"),
    ({"prefetch": 0}, "prefetch must be a positive integer"),
    ({"shuffle": True, "sampler": [0, 1]}, "mutually exclusive"),
])
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        AsyncLoader(LatencyDataset(), **kwargs)


def test_bad_datasets():
    with pytest.raises(TypeError, match="map-style"):
        AsyncLoader(iter([1, 2]))
    with pytest.raises(TypeError, match="has no aget"):
        AsyncLoader(type("NoGet", (), {"__len__": lambda self: 3})())
    with pytest.raises(ValueError, match="data source is empty"):
        Engine(lambda e, b: None).run_sync(AsyncLoader(LatencyDataset(n=0)))


def test_failing_aget_surfaces_in_training_task_with_index():
    class Broken(LatencyDataset):
        async def aget(self, i):
            if i == 13:
                raise OSError("disk on fire")
            return await super().aget(i)

    engine = Engine(lambda e, b: None)
    with pytest.raises(DatasetError, match=r"item 13 failed: OSError: disk on fire") as info:
        engine.run_sync(AsyncLoader(Broken(n=32), 4))
    assert isinstance(info.value.__cause__, OSError)
    assert engine.state.iteration == 3  # batches 0..2 trained, batch 3 holds item 13


def test_device_moves_batches():
    loader = AsyncLoader(LatencyDataset(n=4, max_latency=0), 2, device="cpu")
    batches = asyncio.run(_collect(loader))
    assert batches == [[0, 1], [2, 3]]
    assert loader.pin_memory is False


@pytest.mark.cuda
def test_cuda_device_pins_and_copies_non_blocking():
    devices = []
    loader = AsyncLoader(LatencyDataset(n=8, max_latency=0), 4, device="cuda")
    assert loader.pin_memory is True
    Engine(lambda e, b: devices.append(b.device.type), device="cuda").run_sync(loader)
    assert devices == ["cuda", "cuda"]


def test_mmap_dataset_batches_through_async_loader(tmp_path):
    import numpy as np

    from aiotrain.data import CacheManager, MmapDataset

    records = np.arange(40 * 3, dtype=np.float32).reshape(40, 3)
    path = tmp_path / "records.f32"
    path.write_bytes(records.tobytes())
    with CacheManager() as cache:
        cache.scan_files([str(path)])
        ds = MmapDataset(str(path), (3,), torch.float32, cache=cache)
        loader = AsyncLoader(ds, 8, shuffle=True, seed=5)
        order = loader.order(0)
        seen = []
        Engine(lambda e, b: seen.append(b.clone())).run_sync(loader)
    assert [tuple(b.shape) for b in seen] == [(8, 3)] * 5
    assert torch.equal(torch.cat(seen), torch.from_numpy(records)[order])
