"""The order items are read in: a function of (seed, epoch), shard-local, dealt to ranks without
overlap, and resumable at any item with any number of ranks.

The epoch's **global order** depends only on the shard sizes, the seed, the epoch and the number
of *partitions* (fixed when the run starts and kept in the loader's state, like MosaicML
Streaming's canonical nodes):

- ``shuffle="shards"`` (the default for streaming): the shards are permuted; each shard goes to the
  partition holding the fewest items so far; each partition's items (its shards one after the
  other: the *stream*) are shuffled by a bounded buffer: item ``p`` of the stream gets the key
  ``p + buffer * u`` (``u`` uniform in [0, 1)) and the items are read in key order, so every item
  moves fewer than ``buffer`` places from its place in the stream. Only about ``buffer`` items, a
  shard or two, are in play at once, and the first items read are drawn from the first items of
  the first shard (the first batch of ``b`` needs about ``sqrt(2 * b * buffer)`` of them), so
  reading starts before the first shard has fully arrived. The partitions are then interleaved
  item by item.
- ``shuffle="global"``: one permutation of every item (random access; the packed format reads
  any item with one range request).
- ``shuffle="none"``: shard after shard, item after item (partitions interleaved).

**Dealing.** Of the items not yet consumed, ``order[start:]``, rank ``r`` of ``W`` takes
``order[start + r :: W]``. After every rank took ``t`` items (ranks step together), exactly
``order[start : start + t * W]`` is consumed, whatever ``W`` is, so a resume with another world
size deals ``order[start + t * W:]`` among the new ranks: no item is repeated or dropped. When
``W`` equals the number of partitions, rank ``r`` reads only partition ``r``'s shards. Worker
processes never change the order (they transform what the loop fetched), so the worker count
can change freely.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np

__all__ = ["ResumableOrder", "Shuffle", "ShardSampler", "epoch_order"]

Shuffle = Literal["shards", "global", "none"]
ORDER_VERSION = 2  # saved in the state: an order from another version cannot be resumed exactly


def _rng(seed: int, epoch: int, tag: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(
        [seed & 0xFFFFFFFFFFFFFFFF, epoch, tag])))


def epoch_order(counts: Sequence[int], seed: int, epoch: int, shuffle: Shuffle = "shards",
                buffer: int = 1024, partitions: int = 1) -> np.ndarray:
    """Every item id (shard-major: shard ``k`` holds ids ``sum(counts[:k])`` onwards) in the order
    of epoch ``epoch``; see the module docstring."""
    counts_arr = np.asarray(counts, dtype=np.int64)
    total = int(counts_arr.sum())
    starts = np.concatenate([[0], np.cumsum(counts_arr)[:-1]]).astype(np.int64)
    if shuffle == "global":
        return _rng(seed, epoch, 0).permutation(total)
    rng = _rng(seed, epoch, 1)
    shard_seq = rng.permutation(len(counts_arr)) if shuffle == "shards" else np.arange(len(counts_arr))
    load = [0] * partitions
    members: list[list[int]] = [[] for _ in range(partitions)]
    for k in shard_seq:  # each shard to the lightest partition
        c = min(range(partitions), key=lambda p: (load[p], p))
        members[c].append(int(k))
        load[c] += int(counts_arr[k])
    seqs: list[np.ndarray] = []
    keys: list[np.ndarray] = []
    for c, shards in enumerate(members):
        seq = np.concatenate([np.arange(starts[k], starts[k] + counts_arr[k]) for k in shards]) \
            if shards else np.empty(0, dtype=np.int64)
        if shuffle == "shards" and len(seq) > 1:
            jitter = _rng(seed, epoch, 2 + c).random(len(seq)) * max(int(buffer), 1)
            seq = seq[np.argsort(np.arange(len(seq)) + jitter, kind="stable")]
        seqs.append(seq)
        keys.append(np.arange(len(seq), dtype=np.int64) * partitions + c)
    if partitions == 1:
        return seqs[0]
    merged, key = np.concatenate(seqs), np.concatenate(keys)
    return merged[np.argsort(key, kind="stable")]


@runtime_checkable
class ResumableOrder(Protocol):
    """A sampler whose position is more than AsyncLoader's batch count: it saves where the
    whole job (all ranks) is in the epoch, and resumes there with any world size."""

    def state_at(self, epoch: int, taken: int) -> dict[str, Any]:
        """The state after this rank consumed ``taken`` items of epoch ``epoch``'s pass."""

    def resume(self, state: Mapping[str, Any], position: int, batch_size: int) -> int:
        """Continue from ``state``; returns the loader's batch position in the new deal."""


class ShardSampler:
    """This rank's items of each epoch, in the global order (see the module docstring).

    ``counts`` are the shards' item counts. ``rank``/``world_size`` default to torchrun's
    environment (``RANK``, ``WORLD_SIZE``), ``partitions`` to the world size. ``on_order`` is told
    each epoch's deal (the dataset plans its downloads and cache eviction from it).
    """

    def __init__(self, counts: Sequence[int], *, shuffle: Shuffle = "shards", seed: int = 0,
                 buffer: int = 1024, rank: int | None = None, world_size: int | None = None,
                 partitions: int | None = None,
                 on_order: Callable[[int, np.ndarray], None] | None = None) -> None:
        if shuffle not in ("shards", "global", "none"):
            raise ValueError(f"shuffle must be 'shards', 'global' or 'none', got {shuffle!r}")
        world = _env_int("WORLD_SIZE", 1) if world_size is None else world_size
        me = (_env_int("RANK", 0) if world > 1 else 0) if rank is None else rank
        if world < 1 or not 0 <= me < world:
            raise ValueError(f"rank {me} is not in a world of {world}")
        self.counts = [int(c) for c in counts]
        self.total = sum(self.counts)
        self.shuffle, self.seed, self.buffer = shuffle, int(seed), int(buffer)
        self.rank, self.world = me, world
        self.partitions = int(partitions or world)
        self.on_order = on_order
        self.epoch = 0
        self._resume: tuple[int, int] | None = None  # (epoch, items consumed before this pass)
        self._cache: tuple[tuple[int, int], np.ndarray] | None = None

    # the deal ------------------------------------------------------------------------------------
    def start_of(self, epoch: int) -> int:
        """Items of epoch ``epoch`` consumed before this pass began (0 unless resumed)."""
        return self._resume[1] if self._resume is not None and self._resume[0] == epoch else 0

    def global_order(self, epoch: int) -> np.ndarray:
        """The whole job's order of epoch ``epoch`` (every item once)."""
        key = (epoch, self.partitions)
        if self._cache is None or self._cache[0] != key:
            self._cache = (key, epoch_order(self.counts, self.seed, epoch, self.shuffle,
                                            self.buffer, self.partitions))
        return self._cache[1]

    def items(self, epoch: int) -> np.ndarray:
        """This rank's items of epoch ``epoch``, in the order it reads them."""
        return self.global_order(epoch)[self.start_of(epoch) + self.rank::self.world]

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[int]:
        mine = self.items(self.epoch)
        if self.on_order is not None:
            self.on_order(self.epoch, mine)
        return iter(mine.tolist())

    def __len__(self) -> int:
        remaining = self.total - self.start_of(self.epoch)
        return max(0, (remaining - self.rank + self.world - 1) // self.world)

    # exact, elastic resume ---------------------------------------------------------------------
    def _identity(self) -> dict[str, Any]:
        return {"version": ORDER_VERSION, "seed": self.seed, "shuffle": self.shuffle, "buffer": self.buffer,
                "counts_items": self.total, "counts_shards": len(self.counts),
                "partitions": self.partitions}

    def state_at(self, epoch: int, taken: int) -> dict[str, Any]:
        """Where the job is after every rank consumed ``taken`` items of epoch ``epoch``'s pass."""
        start = self.start_of(epoch)
        consumed = min(start + taken * self.world, self.total)
        return {"epoch": epoch, "start": start, "consumed": consumed, "world": self.world,
                **self._identity()}

    def resume(self, state: Mapping[str, Any], position: int, batch_size: int) -> int:
        """Continue epoch ``state["epoch"]`` after the items the job consumed. With the same world
        size the deal is the saved one and ``position`` stands; with another, the rest of the
        epoch is dealt afresh and the pass starts at batch 0."""
        try:
            epoch, start = int(state["epoch"]), int(state["start"])
            consumed, world = int(state["consumed"]), int(state["world"])
            saved = {k: state.get(k, 1) if k == "version" else state[k] for k in self._identity()}
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"not a ShardSampler state: {dict(state)!r}") from exc
        if int(saved["partitions"]) != self.partitions:
            self.partitions = int(saved["partitions"])  # the run's partitions are kept for good
        mine = self._identity()
        if saved != mine:
            diff = ", ".join(f"{k}: saved {saved[k]!r}, now {mine[k]!r}" for k in mine if saved[k] != mine[k])
            hint = (" (saved by an aiotrain whose shuffle differs: finish this epoch with that "
                    "version, or start the epoch afresh)" if saved["version"] != mine["version"]
                    else "")
            raise ValueError(f"cannot resume this data order exactly: {diff}{hint}")
        if not 0 <= start <= consumed <= self.total:
            raise ValueError(f"inconsistent data position in the saved state: {dict(state)!r}")
        self.epoch = epoch
        if world == self.world:
            self._resume = (epoch, start)
            return position
        self._resume = (epoch, consumed)
        return 0


def _env_int(name: str, default: int) -> int:
    import os

    try:
        return int(os.environ.get(name, default))
    except ValueError:
        return default
