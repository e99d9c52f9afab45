"""The epoch order and the deal to ranks: every item once, a function of (seed, epoch), shard
local, and resumable exactly with another world size (checked over random shapes)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aiotrain.data.remote.order import ShardSampler, epoch_order

counts_st = st.lists(st.integers(0, 40), min_size=1, max_size=12)


@given(counts_st, st.integers(0, 2**40), st.integers(0, 5), st.sampled_from(["shards", "global", "none"]),
       st.integers(1, 50), st.integers(1, 4))
@settings(max_examples=150, deadline=None)
def test_order_is_a_permutation_fixed_by_seed_and_epoch(counts, seed, epoch, shuffle, buffer, parts):
    order = epoch_order(counts, seed, epoch, shuffle, buffer, parts)
    assert sorted(order.tolist()) == list(range(sum(counts)))
    again = epoch_order(counts, seed, epoch, shuffle, buffer, parts)
    assert np.array_equal(order, again)


def test_orders_differ_between_epochs_and_seeds():
    counts = [50] * 8
    a, b, c = (epoch_order(counts, s, e) for s, e in ((0, 0), (0, 1), (1, 0)))
    assert not np.array_equal(a, b) and not np.array_equal(a, c)


@given(counts_st, st.integers(0, 2**40), st.integers(1, 60))
@settings(max_examples=100, deadline=None)
def test_the_shuffle_buffer_moves_every_item_fewer_than_buffer_places(counts, seed, buffer):
    """Shard-local, and the first reads come from the first items of the first shard: an item
    is read within ``buffer`` places of where it is in the stream of shards (buffer 1: the
    stream itself, same shard order)."""
    stream = epoch_order(counts, seed, 0, "shards", buffer=1)
    order = epoch_order(counts, seed, 0, "shards", buffer=buffer)
    place = np.empty(len(order), dtype=np.int64)
    place[order] = np.arange(len(order))
    assert all(abs(place[item] - p) < buffer for p, item in enumerate(stream.tolist()))


def test_the_buffer_shuffles():
    counts = [100] * 20
    order = epoch_order(counts, seed=3, epoch=0, shuffle="shards", buffer=100)
    assert not np.array_equal(order, epoch_order(counts, 3, 0, "shards", buffer=1))
    shards = order // 100
    for i in range(0, len(order) - 100, 37):  # a window of one buffer touches at most 3 shards
        assert len(set(shards[i:i + 100].tolist())) <= 3


@given(counts_st, st.integers(1, 4), st.integers(0, 3))
@settings(max_examples=100, deadline=None)
def test_ranks_partition_the_epoch(counts, world, seed):
    samplers = [ShardSampler(counts, seed=seed, rank=r, world_size=world) for r in range(world)]
    dealt = [s.items(0).tolist() for s in samplers]
    flat = [i for d in dealt for i in d]
    assert sorted(flat) == list(range(sum(counts)))  # no overlap, nothing left out
    assert [len(d) for d in dealt] == [len(s) for s in samplers]


def test_as_many_ranks_as_partitions_read_disjoint_shards():
    counts = [30] * 8
    samplers = [ShardSampler(counts, seed=1, rank=r, world_size=2) for r in range(2)]
    shards = [set((s.items(0) // 30).tolist()) for s in samplers]
    assert not shards[0] & shards[1]


@given(counts_st, st.integers(1, 4), st.integers(1, 4), st.integers(1, 8), st.data())
@settings(max_examples=150, deadline=None)
def test_elastic_resume_repeats_and_drops_nothing(counts, w1, w2, batch, data):
    """Ranks step together for ``steps`` batches, the state is saved, and ``w2`` ranks finish the
    epoch: together they read every item exactly once."""
    total = sum(counts)
    first = [ShardSampler(counts, seed=7, rank=r, world_size=w1) for r in range(w1)]
    per_rank = min(len(s) for s in first)
    steps = data.draw(st.integers(0, per_rank // batch if batch else 0))
    read = [i for s in first for i in s.items(0)[:steps * batch].tolist()]
    state = first[0].state_at(0, steps * batch)
    second = [ShardSampler(counts, seed=7, rank=r, world_size=w2) for r in range(w2)]
    rest: list[int] = []
    for s in second:
        position = s.resume(state, steps, batch)
        rest += s.items(0)[position * batch:].tolist()
    assert sorted(read + rest) == list(range(total))
    # the next epoch is whole again
    assert sum(len(s.items(1)) for s in second) == total


def test_resume_refuses_another_order():
    s = ShardSampler([10, 10], seed=1)
    state = s.state_at(0, 4)
    with pytest.raises(ValueError, match="seed: saved 1, now 2"):
        ShardSampler([10, 10], seed=2).resume(state, 1, 4)
    with pytest.raises(ValueError, match="not a ShardSampler state"):
        s.resume({"epoch": 0}, 0, 4)
    older = {k: v for k, v in state.items() if k != "version"}  # saved before the order changed
    with pytest.raises(ValueError, match="version: saved 1, now 2 .*start the epoch afresh"):
        ShardSampler([10, 10], seed=1).resume(older, 1, 4)


def test_rank_and_world_come_from_torchrun(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setenv("RANK", "2")
    s = ShardSampler([9])
    assert (s.rank, s.world, s.partitions) == (2, 3, 3)
    assert s.items(0).tolist() == epoch_order([9], 0, 0, "shards", 1024, 3)[2::3].tolist()
