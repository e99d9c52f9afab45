"""Where one item of a shard is, and how it is read and checked: in this process, or in a data
worker process that reads it itself.

``ItemRef`` names an item's bytes (``start``, ``end``) in a shard held in a file (a memfd of shared
memory, or a cache file: ``shard``), the CRC-32 they must have (None when the shard was checked
whole), and how to decode them (the packed codec, or a tar sample). ``AsyncLoader`` with
``workers=N`` asks the dataset for references (``aget_ref``) instead of items: it sends each
worker the reference, pickled without its shard (a few dozen bytes), and the shard's descriptor
beside it; the worker reads the bytes itself (``load``), checks them, and decodes them, so items
never travel pickled from the event loop, and decoding runs in parallel.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Literal

from .codec import Compression, decode_item
from .manifest import ManifestError
from .packed import ShardIntegrityError, crc32
from .tar import iter_samples

if TYPE_CHECKING:
    from .shard import Shard

__all__ = ["ItemRef"]

Kind = Literal["packed", "tar"]


class ItemRef:
    """Item bytes ``[start, end)`` of ``shard`` (see the module docstring). ``where`` names the
    shard in messages."""

    __slots__ = ("compression", "crc", "end", "kind", "shard", "start", "where")

    def __init__(self, shard: Shard | None, start: int, end: int, crc: int | None, kind: Kind,
                 compression: Compression, where: str) -> None:
        self.shard, self.start, self.end, self.crc = shard, start, end, crc
        self.kind, self.compression, self.where = kind, compression, where

    def __reduce__(self) -> tuple[type[ItemRef], tuple[None, int, int, int | None, Kind,
                                                        Compression, str]]:
        # to a worker: everything but the shard (its fd travels beside)
        return (ItemRef, (None, self.start, self.end, self.crc, self.kind, self.compression,
                          self.where))

    def __repr__(self) -> str:
        return f"ItemRef({self.where!r}, {self.start}, {self.end})"

    def fileno(self) -> int:
        """The descriptor of the file holding the item (this process; open while this lives)."""
        assert self.shard is not None, "a reference sent to a worker has no shard of its own"
        return self.shard.fileno()

    def load(self, fd: int) -> object:
        """The item, read from ``fd`` (the shard's file), checked and decoded."""
        size = self.end - self.start
        raw = os.pread(fd, size, self.start)
        if len(raw) != size:
            raise ShardIntegrityError(f"{self.where}: bytes {self.start}-{self.end} are not all "
                                      "in the shard")
        return self.decode(raw)

    def decode(self, raw: bytes | memoryview) -> object:
        """The item from its bytes, after checking them against the item's CRC-32."""
        if self.crc is not None and crc32(raw) != self.crc:
            raise ShardIntegrityError(f"{self.where}: the item at bytes {self.start}-{self.end} "
                                      "does not match its CRC-32 (corrupt in transit or in the "
                                      "store)")
        if self.kind == "packed":
            return decode_item(raw, self.compression)
        samples = list(iter_samples(raw, self.where))
        if len(samples) != 1:
            raise ManifestError(f"{self.where}: an indexed sample holds {len(samples)} samples "
                                "(the index does not match the shard)")
        return samples[0][1]
