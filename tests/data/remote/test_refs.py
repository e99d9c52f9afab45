"""An item reference travels without its shard and is read, checked and decoded from the
shard's descriptor wherever it lands; a changed byte is refused."""

from __future__ import annotations

import os
import pickle

import pytest

from aiotrain.data.remote.codec import encode_item
from aiotrain.data.remote.packed import (
    ShardIntegrityError,
    build_shard,
    crc32,
    header_size,
    read_header,
)
from aiotrain.data.remote.refs import ItemRef
from aiotrain.data.remote.tar import write_tar_shard


class _File:
    """A shard in a memfd, as a ShardBuffer holds one."""

    def __init__(self, data: bytes) -> None:
        self.fd = os.memfd_create("test-shard")
        os.write(self.fd, data)

    def fileno(self) -> int:
        return self.fd

    def close(self) -> None:
        os.close(self.fd)


def test_a_reference_is_read_from_the_descriptor_it_travels_with():
    items = [{"i": i, "x": bytes(range(i, i + 50))} for i in range(5)]
    records = [encode_item(it, "zlib") for it in items]
    data = build_shard(records, "zlib")
    header = read_header(data[:header_size(5)], 5, len(data), "s")
    shard = _File(data)
    start, end = header.bounds(3)
    ref = ItemRef(shard, start, end, header.crc(3), "packed", "zlib", "s3://b/s.atp")  # type: ignore[arg-type]
    sent = pickle.loads(pickle.dumps(ref))
    assert sent.shard is None and len(pickle.dumps(ref)) < 200  # the bytes stay where they are
    assert sent.load(shard.fileno()) == items[3] == ref.load(shard.fileno())
    shard.close()


def test_a_changed_byte_is_refused_and_a_tar_sample_is_decoded():
    data, offsets = write_tar_shard([{"__key__": "a", "txt": "one"}, {"__key__": "b", "txt": "two"}])
    shard = _File(data)
    sample = ItemRef(shard, offsets[1], offsets[2], crc32(data[offsets[1]:offsets[2]]), "tar", None, "t")  # type: ignore[arg-type]
    assert sample.load(shard.fileno()) == {"__key__": "b", "txt": b"two"}
    bad = ItemRef(shard, offsets[1], offsets[2], sample.crc ^ 1, "tar", None, "s3://b/t.tar")  # type: ignore[arg-type,operator]
    with pytest.raises(ShardIntegrityError, match=r"s3://b/t.tar: the item at bytes .* does not match its CRC-32"):
        bad.load(shard.fileno())
    past = ItemRef(shard, len(data) - 10, len(data) + 10, None, "tar", None, "t")  # type: ignore[arg-type]
    with pytest.raises(ShardIntegrityError, match="are not all in the shard"):
        past.load(shard.fileno())
    shard.close()
