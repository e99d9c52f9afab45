"""The project's packed shard: items one after another, their offsets and checksums at the head.

Layout of one shard (little-endian), version 2 (what ``pack`` writes)::

    b"ATPACK02" | u32 items | u32 flags (bit 0: zlib) | u64 offsets[items + 1] | u32 crc32[items]
    | records ...

``offsets[i]`` is where item ``i``'s record starts in the shard and ``offsets[i + 1]`` where it
ends, so the first ``header_size(items)`` bytes say where everything is and any item is one range
request away; ``crc32[i]`` is the CRC-32 of item ``i``'s record. The dataset's ``index.json``
holds the CRC-32 of each shard's header and of the whole shard (see ``manifest``): the header is
checked against the index, then each item against the header, so an item can be used as soon as
its own bytes are here and checked, before the rest of its shard has arrived.

Version 1 (``b"ATPACK01"``, shards packed before per-item checksums) has no ``crc32`` array: it
is still read, and checked only as a whole against the index's CRC-32.

A record is ``codec.encode_item`` of the item.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from .codec import Compression, decode_item

__all__ = ["MAGIC", "VERSION", "ShardFormatError", "ShardHeader", "ShardIntegrityError", "build_shard",
           "crc32", "header_size", "iter_items", "read_header", "shard_version"]

VERSION = 2
MAGIC = b"ATPACK02"
_MAGICS = {b"ATPACK01": 1, MAGIC: 2}
_HEAD = struct.Struct("<8sII")


class ShardFormatError(ValueError):
    """A shard whose bytes do not match its format (the message names the shard)."""


class ShardIntegrityError(OSError):
    """Shard bytes whose size or checksum is not what the index (or the shard's checked header)
    says: corrupt in transit, in the store or in the cache."""


def header_size(items: int, version: int = VERSION) -> int:
    """Bytes before the first record of a shard of ``items`` items."""
    return _HEAD.size + 8 * (items + 1) + (4 * items if version >= 2 else 0)


@dataclass(frozen=True)
class ShardHeader:
    """Where a shard's items are (``offsets``: ``items + 1`` byte offsets) and, from version 2 on,
    the CRC-32 of each item's record (``crcs``; None for version 1 and for tar shards)."""

    offsets: np.ndarray
    crcs: np.ndarray | None = None

    def bounds(self, index: int) -> tuple[int, int]:
        """``(start, end)`` of item ``index``'s record."""
        return int(self.offsets[index]), int(self.offsets[index + 1])

    def crc(self, index: int) -> int | None:
        """The CRC-32 item ``index``'s record must have, or None where the shard has none."""
        return None if self.crcs is None else int(self.crcs[index])


def build_shard(records: Iterable[bytes], compression: Compression) -> bytes:
    """The bytes of one version-2 shard holding ``records`` (already encoded) in order."""
    records = list(records)
    offsets = np.empty(len(records) + 1, dtype="<u8")
    crcs = np.array([crc32(r) for r in records], dtype="<u4")
    pos = header_size(len(records))
    for i, record in enumerate(records):
        offsets[i] = pos
        pos += len(record)
    offsets[-1] = pos
    flags = 1 if compression == "zlib" else 0
    return b"".join([_HEAD.pack(MAGIC, len(records), flags), offsets.tobytes(), crcs.tobytes(),
                     *records])


def read_header(head: bytes | memoryview, items: int, size: int, where: str,
                version: int = VERSION) -> ShardHeader:
    """A shard's header from its first ``header_size(items, version)`` bytes, checked against the
    shard's ``size`` (offsets increasing, inside the shard) and ``version``."""
    need = header_size(items, version)
    if len(head) < need:
        raise ShardFormatError(f"{where}: shorter than its header ({len(head)} < {need} bytes)")
    magic, count, _flags = _HEAD.unpack_from(head)
    found = _MAGICS.get(bytes(magic))
    if found is None:
        raise ShardFormatError(f"{where}: not an aiotrain packed shard (bad magic)")
    if found != version:
        raise ShardFormatError(f"{where}: a version-{found} packed shard where the index says "
                               f"version {version} (pack the dataset again)")
    if count != items:
        raise ShardFormatError(f"{where}: holds {count} items, the index says {items}")
    offsets = np.frombuffer(head, dtype="<u8", count=items + 1, offset=_HEAD.size).astype(np.int64)
    if items and (offsets[0] != need or np.any(np.diff(offsets) < 0) or offsets[-1] > size):
        raise ShardFormatError(f"{where}: item offsets are not increasing inside the shard")
    crcs = None
    if version >= 2:
        crcs = np.frombuffer(head, dtype="<u4", count=items,
                             offset=_HEAD.size + 8 * (items + 1)).astype(np.uint32)
    return ShardHeader(offsets, crcs)


def shard_version(shard: bytes | memoryview, where: str) -> int:
    """The format version of a whole shard, from its magic."""
    found = _MAGICS.get(bytes(shard[:8]))
    if found is None:
        raise ShardFormatError(f"{where}: not an aiotrain packed shard (bad magic)")
    return found


def iter_items(shard: bytes | memoryview, items: int, compression: Compression,
               where: str) -> Iterator[object]:
    """Every item of a whole shard, in order, each checked against its CRC-32 where the shard
    has one (used by tests and tools)."""
    header = read_header(shard, items, len(shard), where, shard_version(shard, where))
    view = memoryview(shard)
    for i in range(items):
        start, end = header.bounds(i)
        record = view[start:end]
        expected = header.crc(i)
        if expected is not None and crc32(record) != expected:
            raise ShardIntegrityError(f"{where}: item {i} does not match its CRC-32")
        yield decode_item(record, compression)


def crc32(data: bytes | bytearray | memoryview) -> int:
    """The CRC-32 the index records for a shard (and a version-2 header for an item)."""
    return zlib.crc32(data) & 0xFFFFFFFF
