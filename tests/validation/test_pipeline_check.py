"""Check 6, data pipeline: broken, empty, hanging, one-shot and dict-shaped loaders."""

from __future__ import annotations

import asyncio
import threading
import time

import torch
from torch.utils.data import DataLoader, Dataset
from validation_helpers import FEATURES, check, dataset

from aiotrain.data import AsyncLoader


class Broken(Dataset):
    """Item 20 fails: the second batch of 16 cannot load."""

    def __len__(self) -> int:
        return 48

    def __getitem__(self, i: int):
        if i == 20:
            raise OSError(f"cannot read shard for item {i}")
        return torch.randn(FEATURES), torch.tensor(i % 4)


async def test_an_exception_in_the_loader_is_an_error_and_the_first_batch_still_checks(net):
    report = await check(net, DataLoader(Broken(), batch_size=16))
    [error] = report.section("data pipeline").errors
    assert error.startswith("loading batch 2 raised OSError") and "item 20" in error
    assert report.section("shapes").passed  # the batch that did load is still checked


async def test_an_empty_loader_is_an_error_and_batch_checks_are_not_run(net):
    report = await check(net, [])
    assert "yielded no batch" in report.section("data pipeline").errors[0]
    assert report.section("shapes").status == "not run"
    assert report.section("optimizer").passed  # needs no batch


class _Hang:
    """An iterable whose second batch never comes (until released)."""

    def __init__(self, release: threading.Event) -> None:
        self.release = release

    def __iter__(self):
        yield torch.randn(8, FEATURES), torch.zeros(8, dtype=torch.long)
        self.release.wait(60)


async def test_a_hanging_sync_loader_is_abandoned_after_the_timeout(net):
    release = threading.Event()
    try:
        start = time.monotonic()
        # the bound applies to every check: long enough for the others on a loaded machine
        report = await check(net, _Hang(release), timeout=2.0)
        assert time.monotonic() - start < 30  # hanging would take 60 s
    finally:
        release.set()
    assert "batch 2 did not arrive within 2 s" in report.section("data pipeline").errors[0]
    assert report.section("training loop").passed  # runs on the one batch that came


class _AsyncHang:
    def __aiter__(self):
        return self._gen()

    async def _gen(self):
        yield torch.randn(8, FEATURES), torch.zeros(8, dtype=torch.long)
        await asyncio.Event().wait()


async def test_a_hanging_async_loader_is_cancelled_after_the_timeout(net):
    start = time.monotonic()
    report = await check(net, _AsyncHang(), timeout=0.3)
    assert time.monotonic() - start < 15
    assert "batch 2 did not arrive within 0.3 s" in report.section("data pipeline").errors[0]


async def test_a_one_shot_generator_is_refused_and_not_consumed(net):
    gen = ((torch.randn(8, FEATURES), torch.zeros(8, dtype=torch.long)) for _ in range(5))
    report = await check(net, gen)
    assert "one-shot iterator" in report.section("data pipeline").errors[0]
    assert len(list(gen)) == 5


async def test_dict_batches_and_prepare_batch(net):
    x, y = torch.randn(32, FEATURES), torch.randint(0, 4, (32,))
    as_dicts = [{"inputs": x[i:i + 16], "labels": y[i:i + 16]} for i in (0, 16)]
    assert not (await check(net, as_dicts)).has_errors()
    unknown = await check(net, [{"a": x, "b": y}])
    assert "a dict batch needs an input key" in unknown.section("data pipeline").errors[0]
    triples = [(x, y, "meta")]
    bad = await check(net, triples)
    assert "got tuple of 3 items: pass prepare_batch" in bad.section("data pipeline").errors[0]
    from aiotrain.validation import RuntimeValidator

    good = await RuntimeValidator("check_only").validate_all(
        net, triples, torch.optim.SGD(net.parameters(), lr=0.1), torch.nn.CrossEntropyLoss(),
        prepare_batch=lambda b, device: (b[0].to(device), b[1].to(device)))
    assert not good.has_errors(), good.render()


async def test_async_loader_batches_pass(net):
    report = await check(net, AsyncLoader.wrap(list(DataLoader(dataset(), batch_size=16))))
    assert report.section("data pipeline").passed, report.render()
