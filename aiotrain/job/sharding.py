"""Under torchrun, every rank must train on its own share of the data, never all of it."""

from __future__ import annotations

from torch.utils.data import DataLoader, DistributedSampler

from .. import distributed as dist
from ..config import ConfigError
from ..data.loader import AsyncLoader
from ..data.remote.order import ResumableOrder

__all__ = ["shard_train_loader"]


def shard_train_loader(loader: object) -> str | None:
    """Make ``loader`` serve this rank's shard when the world has several ranks.

    An AsyncLoader without a sampler gets a DistributedSampler (its ``shuffle``, ``seed`` and
    ``drop_last`` carried over; its batch size stays per rank) and a line saying so is returned.
    A loader that is already sharded is left alone. Anything else cannot be sharded from outside
    and is a ConfigError saying what to do. Returns None when nothing was changed.
    """
    world = dist.world_size()
    if world <= 1:
        return None
    sampler = getattr(loader, "sampler", None)
    if isinstance(loader, DataLoader):
        inner = getattr(loader.batch_sampler, "sampler", None)
        if isinstance(sampler, DistributedSampler) or isinstance(inner, DistributedSampler):
            return None
        raise ConfigError(f"distributed: {world} ranks but the train loader (a torch DataLoader) "
                          "has no DistributedSampler, so every rank would train on all the data; "
                          "pass sampler=DistributedSampler(dataset)")
    if not isinstance(loader, AsyncLoader):
        raise ConfigError(f"distributed: {world} ranks but the train loader "
                          f"({type(loader).__name__}) cannot be sharded from outside; use an "
                          "AsyncLoader over a map-style dataset, or shard the data per rank")
    if isinstance(sampler, DistributedSampler | ResumableOrder):  # a ShardSampler deals per rank
        return None
    if sampler is not None:
        raise ConfigError(f"distributed: {world} ranks but the train loader's sampler "
                          f"({type(sampler).__name__}) is not a DistributedSampler; every rank "
                          "would read the same items: shard it per rank")
    loader.sampler = DistributedSampler(loader.dataset, num_replicas=world, rank=dist.rank(),
                                        shuffle=loader.shuffle, seed=loader.seed,
                                        drop_last=loader.drop_last)
    loader.shuffle = False
    return (f"distributed: train loader sharded over {world} ranks with a DistributedSampler "
            f"(shuffle={loader.shuffle or loader.sampler.shuffle}, seed={loader.seed}); "
            f"batch {loader.batch_size} per rank")
