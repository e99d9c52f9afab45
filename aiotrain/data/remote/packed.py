"""The project's packed shard: items one after another, their offsets at the head.

Layout of one shard (little-endian)::

    b"ATPACK01" | u32 items | u32 flags (bit 0: zlib) | u64 offsets[items + 1] | records ...

``offsets[i]`` is where item ``i``'s record starts in the shard and ``offsets[i + 1]`` where it
ends, so the first ``header_size(items)`` bytes say where everything is and any item is one range
request away. A record is ``codec.encode_item`` of the item. The whole shard's CRC-32 is in the
dataset's ``index.json`` (see ``manifest``), which is how a download or a cached copy is checked.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterable, Iterator

import numpy as np

from .codec import Compression, decode_item

__all__ = ["MAGIC", "ShardFormatError", "build_shard", "crc32", "header_size", "item_bounds", "iter_items",
           "read_offsets"]

MAGIC = b"ATPACK01"
_HEAD = struct.Struct("<8sII")


class ShardFormatError(ValueError):
    """A shard whose bytes do not match its format (the message names the shard)."""


def header_size(items: int) -> int:
    """Bytes before the first record of a shard of ``items`` items."""
    return _HEAD.size + 8 * (items + 1)


def build_shard(records: Iterable[bytes], compression: Compression) -> bytes:
    """The bytes of one shard holding ``records`` (already encoded) in order."""
    records = list(records)
    offsets = np.empty(len(records) + 1, dtype="<u8")
    pos = header_size(len(records))
    for i, record in enumerate(records):
        offsets[i] = pos
        pos += len(record)
    offsets[-1] = pos
    flags = 1 if compression == "zlib" else 0
    return b"".join([_HEAD.pack(MAGIC, len(records), flags), offsets.tobytes(), *records])


def read_offsets(head: bytes | memoryview, items: int, size: int, where: str) -> np.ndarray:
    """The ``items + 1`` offsets from a shard's first ``header_size(items)`` bytes, checked
    against the shard's ``size`` (increasing, inside the shard)."""
    need = header_size(items)
    if len(head) < need:
        raise ShardFormatError(f"{where}: shorter than its header ({len(head)} < {need} bytes)")
    magic, count, _flags = _HEAD.unpack_from(head)
    if magic != MAGIC:
        raise ShardFormatError(f"{where}: not an aiotrain packed shard (bad magic)")
    if count != items:
        raise ShardFormatError(f"{where}: holds {count} items, the index says {items}")
    offsets = np.frombuffer(head, dtype="<u8", count=items + 1, offset=_HEAD.size).astype(np.int64)
    if items and (offsets[0] != need or np.any(np.diff(offsets) < 0) or offsets[-1] > size):
        raise ShardFormatError(f"{where}: item offsets are not increasing inside the shard")
    return offsets


def item_bounds(offsets: np.ndarray, index: int) -> tuple[int, int]:
    """``(start, end)`` of item ``index``'s record."""
    return int(offsets[index]), int(offsets[index + 1])


def iter_items(shard: bytes | memoryview, items: int, compression: Compression,
               where: str) -> Iterator[object]:
    """Every item of a whole shard, in order (used by tests and tools)."""
    offsets = read_offsets(shard, items, len(shard), where)
    view = memoryview(shard)
    for i in range(items):
        start, end = item_bounds(offsets, i)
        yield decode_item(view[start:end], compression)


def crc32(data: bytes | bytearray | memoryview) -> int:
    """The CRC-32 the index records for a shard."""
    return zlib.crc32(data) & 0xFFFFFFFF
