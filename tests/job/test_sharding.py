"""Under torchrun, a train loader without a DistributedSampler is sharded or refused."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from aiotrain import AsyncLoader
from aiotrain import distributed as dist
from aiotrain.config import ConfigError
from aiotrain.job.sharding import shard_train_loader


class Items:
    def __len__(self):
        return 10

    def __getitem__(self, i):
        return torch.tensor(i)


@pytest.fixture
def two_ranks(monkeypatch):
    monkeypatch.setattr(dist, "world_size", lambda: 2)
    monkeypatch.setattr(dist, "rank", lambda: 1)


def test_single_process_leaves_loaders_alone():
    loader = AsyncLoader(Items(), 2, shuffle=True)
    assert shard_train_loader(loader) is None and loader.sampler is None


def test_an_async_loader_without_sampler_is_sharded(two_ranks):
    loader = AsyncLoader(Items(), 2, shuffle=True, seed=3)
    note = shard_train_loader(loader)
    assert isinstance(loader.sampler, DistributedSampler) and "sharded over 2 ranks" in note
    assert loader.sampler.rank == 1 and loader.sampler.shuffle and loader.sampler.seed == 3
    assert len(loader.order(0)) == 5  # this rank's half


def test_a_sharded_loader_is_kept(two_ranks):
    sampler = DistributedSampler(Items(), num_replicas=2, rank=1)
    loader = AsyncLoader(Items(), 2, sampler=sampler)
    assert shard_train_loader(loader) is None and loader.sampler is sampler


@pytest.mark.parametrize("loader", [DataLoader(TensorDataset(torch.zeros(4))), [1, 2, 3]])
def test_what_cannot_be_sharded_stops_the_job_in_one_line(two_ranks, loader):
    with pytest.raises(ConfigError, match="distributed: 2 ranks but the train loader") as err:
        shard_train_loader(loader)
    assert "\n" not in str(err.value)
