"""A shard arriving in ranges: a reader of per-item shards is let through exactly when its own
bytes are all here (whatever order and pieces they arrive in), a reader of a shard checked
whole only once it is; a failed download reaches every reader."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aiotrain.data.remote.shard import ShardBuffer


def _arrivals(size: int, chunk: int, data: st.DataObject) -> list[tuple[int, int]]:
    """Every range's bytes arriving in pieces, ranges interleaved in a drawn order:
    ``(range start, bytes of that range here so far)``."""
    pending = {lo: 0 for lo in range(0, size, chunk)}
    events = []
    while pending:
        lo = data.draw(st.sampled_from(sorted(pending)))
        end = min(lo + chunk, size) - lo
        got = data.draw(st.integers(pending[lo] + 1, end))
        events.append((lo, got))
        if got == end:
            del pending[lo]
        else:
            pending[lo] = got
    return events


@given(st.integers(1, 200), st.integers(1, 64), st.data())
@settings(max_examples=80, deadline=None)
def test_a_reader_waits_for_its_own_bytes_and_no_longer(size, chunk, data):
    spans = data.draw(st.lists(st.tuples(st.integers(0, size - 1), st.integers(1, 40)),
                               min_size=1, max_size=6))
    spans = [(s, min(size, s + n)) for s, n in spans]
    events = _arrivals(size, chunk, data)

    async def go() -> None:
        shard = ShardBuffer(size, chunk, per_item=True)
        waits = [asyncio.ensure_future(shard.wait(s, e)) for s, e in spans]
        here = bytearray(size)  # which bytes have arrived
        for lo, got in events:
            here[lo:lo + got] = b"\1" * got
            shard.filled(lo, got)
            await asyncio.sleep(0)
            for (s, e), w in zip(spans, waits, strict=True):
                assert w.done() == all(here[s:e]), (s, e)
        assert shard.complete and all(w.done() for w in waits)

    asyncio.run(go())


async def test_a_shard_checked_whole_is_read_only_once_checked():
    shard = ShardBuffer(100, 30, per_item=False)
    wait = asyncio.ensure_future(shard.wait(0, 10))
    for lo in range(0, 100, 30):
        shard.filled(lo, min(30, 100 - lo))
    await asyncio.sleep(0)
    assert shard.complete and not wait.done()  # every byte here, not yet checked
    shard.finish()
    await asyncio.sleep(0)
    assert wait.done() and shard.ready(0, 100)


async def test_a_failed_download_reaches_the_readers():
    shard = ShardBuffer(64, 16, per_item=True)
    wait = asyncio.ensure_future(shard.wait(0, 64))
    shard.filled(0, 16)
    await asyncio.sleep(0)
    shard.fail(OSError("s3://b/x: 503 after 6 attempts"))
    with pytest.raises(OSError, match="after 6 attempts"):
        await wait
    with pytest.raises(OSError, match="after 6 attempts"):
        await shard.wait(0, 16)  # a failed shard serves nothing more (the cache fetches anew)
