"""Items that stay in files: a dataset with ``aget_ref`` gives AsyncLoader's worker processes
references (``transport.FileItem``) and the files' descriptors with each job; the workers read
the items themselves, and the batches are those of the items sent whole, also when a batch
draws on more files than one message carries descriptors."""

from __future__ import annotations

import collections
import os
import weakref

import numpy as np
import pytest

from aiotrain import AsyncLoader
from aiotrain.data import DatasetError
from aiotrain.data.loader import MAX_JOB_FILES
from aiotrain.data.transport import is_file_item
from tests.data.leftovers import child_processes

ITEM = 16  # bytes per item


class _File:
    """Bytes in a memfd (closed with the object)."""

    def __init__(self, data: bytes) -> None:
        self.fd = os.memfd_create("test-items")
        os.write(self.fd, data)
        weakref.finalize(self, os.close, self.fd)


class _InFile:
    """A FileItem: item bytes ``[start, start + ITEM)`` of a file."""

    def __init__(self, file: _File | None, start: int) -> None:
        self.file, self.start = file, start

    def __reduce__(self):
        return (_InFile, (None, self.start))

    def fileno(self) -> int:
        assert self.file is not None
        return self.file.fd

    def load(self, fd: int) -> np.ndarray:
        raw = os.pread(fd, ITEM, self.start)
        if raw[0] == 255:
            raise ValueError("a bad item")
        return np.frombuffer(raw, np.uint8).copy()


class _Files:
    """``files`` files of ``per`` items; item ``i`` is ``ITEM`` bytes of value ``i % 255``
    (255: an item that fails to load). ``fetched`` counts the references given per item,
    ``gets`` the items read here (``aget``)."""

    def __init__(self, files: int, per: int, bad: int = -1) -> None:
        self.per, self.fetched, self.gets = per, collections.Counter[int](), 0
        self.files = [_File(b"".join(bytes([255 if i == bad else i % 255]) * ITEM
                                     for i in range(k * per, (k + 1) * per))) for k in range(files)]

    def __len__(self) -> int:
        return len(self.files) * self.per

    def __reduce__(self):
        return (list, ())  # the workers never read the dataset itself

    async def aget(self, i: int) -> np.ndarray:
        self.gets += 1
        ref = await self.aget_ref(i)
        return ref.load(ref.fileno())

    async def aget_ref(self, i: int) -> _InFile:
        self.fetched[i] += 1
        return _InFile(self.files[i // self.per], i % self.per * ITEM)


class _ByEpoch:
    """A sampler with its own items per epoch (``orders[e]``), so what an epoch fetched can be
    told apart from what the loader fetched ahead for the next one (it starts the next epoch
    once every batch of this one has started)."""

    def __init__(self, orders: list[list[int]]) -> None:
        self.orders, self.epoch = orders, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.orders[0])

    def __iter__(self):
        return iter(self.orders[self.epoch % len(self.orders)])


async def _batches(loader: AsyncLoader) -> list[np.ndarray]:
    async with loader:
        return [b.numpy().copy() async for b in loader]


async def test_workers_read_the_items_from_the_files_themselves():
    files = MAX_JOB_FILES + 8
    ds = _Files(files=2 * files, per=3)
    half = files * 3  # epoch 0 reads the first half's items, epoch 1 (started early) the rest
    rng = np.random.default_rng(0)
    orders = [rng.permutation(half).tolist(), (half + rng.permutation(half)).tolist()]
    batch = half // 2
    spread = [len({i // ds.per for i in orders[0][b:b + batch]}) for b in range(0, half, batch)]
    assert max(spread) > MAX_JOB_FILES  # a batch draws on more files than one job carries

    def loader(workers: int) -> AsyncLoader:
        return AsyncLoader(ds, batch_size=batch, sampler=_ByEpoch(orders), workers=workers)

    whole = await _batches(loader(0))
    assert {i: ds.fetched[i] for i in orders[0]} == dict.fromkeys(orders[0], 1)  # once each
    assert ds.gets == sum(ds.fetched.values())  # workers=0: every item read here (aget)
    ds.fetched.clear()
    ds.gets = 0
    by_ref = await _batches(loader(2))
    assert {i: ds.fetched[i] for i in orders[0]} == dict.fromkeys(orders[0], 1)
    assert ds.gets == 0  # every item went to the workers as a reference, past MAX_JOB_FILES too
    assert all((a == b).all() for a, b in zip(whole, by_ref, strict=True))
    assert [int(r[0]) for r in np.concatenate(by_ref)] == [i % 255 for i in orders[0]]
    assert child_processes() == []


async def test_an_item_that_fails_in_the_worker_is_named():
    ds = _Files(files=4, per=4, bad=6)
    loader = AsyncLoader(ds, batch_size=8, workers=1)
    with pytest.raises(DatasetError, match="item 6 failed: ValueError: a bad item"):
        await _batches(loader)
    loader.close()
    assert child_processes() == []


def test_a_file_item_is_told_by_its_class():
    assert is_file_item(_InFile(None, 0)) and is_file_item(_InFile(None, 16))
    assert not is_file_item(b"bytes") and not is_file_item(np.zeros(2)) and not is_file_item(None)
