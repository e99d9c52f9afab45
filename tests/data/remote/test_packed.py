"""The packed shard: offsets at the head, any item by itself, hostile bytes refused."""

from __future__ import annotations

import numpy as np
import pytest

from aiotrain.data.remote.codec import encode_item
from aiotrain.data.remote.packed import (
    ShardFormatError,
    build_shard,
    header_size,
    item_bounds,
    iter_items,
    read_offsets,
)


def test_any_item_is_read_from_its_range():
    items = [{"i": i, "x": bytes(i * 7)} for i in range(20)]
    shard = build_shard([encode_item(it) for it in items], None)
    offsets = read_offsets(shard[:header_size(20)], 20, len(shard), "s")
    start, end = item_bounds(offsets, 13)
    assert list(iter_items(shard, 20, None, "s"))[13] == items[13]
    assert end - start == len(encode_item(items[13]))


def test_bad_shards_are_refused_with_their_name():
    shard = build_shard([encode_item(1), encode_item(2)], None)
    with pytest.raises(ShardFormatError, match="s3://b/x: not an aiotrain packed shard"):
        read_offsets(b"XXXXXXXX" + shard[8:], 2, len(shard), "s3://b/x")
    with pytest.raises(ShardFormatError, match="holds 2 items, the index says 3"):
        read_offsets(shard + bytes(8), 3, len(shard), "s")
    bad = bytearray(shard)
    bad[16 + 8:16 + 16] = np.array([10**9], "<u8").tobytes()  # an offset past the end
    with pytest.raises(ShardFormatError, match="not increasing inside the shard"):
        read_offsets(bytes(bad), 2, len(shard), "s")
    with pytest.raises(ShardFormatError, match="shorter than its header"):
        read_offsets(shard[:10], 2, len(shard), "s")
