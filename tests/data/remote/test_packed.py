"""The packed shard: offsets and item checksums at the head, any item by itself and checked,
version-1 shards still read, hostile bytes refused."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from aiotrain.data.remote.codec import encode_item
from aiotrain.data.remote.packed import (
    ShardFormatError,
    ShardIntegrityError,
    build_shard,
    crc32,
    header_size,
    iter_items,
    read_header,
)


def _v1_shard(records: list[bytes]) -> bytes:
    """A shard as version 1 wrote it (no item CRC-32s), to check it is still read."""
    pos = 16 + 8 * (len(records) + 1)
    offsets = [pos]
    for r in records:
        offsets.append(offsets[-1] + len(r))
    return struct.pack("<8sII", b"ATPACK01", len(records), 0) + \
        np.array(offsets, "<u8").tobytes() + b"".join(records)


def test_any_item_is_read_from_its_range_and_checked():
    items = [{"i": i, "x": bytes(i * 7)} for i in range(20)]
    records = [encode_item(it) for it in items]
    shard = build_shard(records, None)
    header = read_header(shard[:header_size(20)], 20, len(shard), "s")
    start, end = header.bounds(13)
    assert shard[start:end] == records[13] and header.crc(13) == crc32(records[13])
    assert list(iter_items(shard, 20, None, "s"))[13] == items[13]


def test_version_1_shards_are_still_read_without_item_checksums():
    items = [{"i": i} for i in range(5)]
    shard = _v1_shard([encode_item(it) for it in items])
    header = read_header(shard[:header_size(5, 1)], 5, len(shard), "s", version=1)
    assert header.crcs is None and header.crc(2) is None
    assert list(iter_items(shard, 5, None, "s")) == items
    with pytest.raises(ShardFormatError, match="a version-1 packed shard where the index says version 2"):
        read_header(shard, 5, len(shard), "s")


def test_a_corrupt_item_is_refused_by_its_checksum():
    shard = bytearray(build_shard([encode_item(b"x" * 100), encode_item(b"y" * 100)], None))
    shard[-10] ^= 0x01  # inside the second item
    with pytest.raises(ShardIntegrityError, match="s: item 1 does not match its CRC-32"):
        list(iter_items(bytes(shard), 2, None, "s"))


def test_bad_shards_are_refused_with_their_name():
    shard = build_shard([encode_item(1), encode_item(2)], None)
    with pytest.raises(ShardFormatError, match="s3://b/x: not an aiotrain packed shard"):
        read_header(b"XXXXXXXX" + shard[8:], 2, len(shard), "s3://b/x")
    with pytest.raises(ShardFormatError, match="holds 2 items, the index says 3"):
        read_header(shard + bytes(12), 3, len(shard), "s")
    bad = bytearray(shard)
    bad[16 + 8:16 + 16] = np.array([10**9], "<u8").tobytes()  # an offset past the end
    with pytest.raises(ShardFormatError, match="not increasing inside the shard"):
        read_header(bytes(bad), 2, len(shard), "s")
    with pytest.raises(ShardFormatError, match="shorter than its header"):
        read_header(shard[:10], 2, len(shard), "s")
