"""The index of a sharded dataset: which shards, how many items each, how to check them.

Two layouts are read:
- the project's own packed format (``aiotrain data pack``): ``index.json`` beside the shards, with
  ``{"format": "aiotrain-packed", "version": 2, "compression": null | "zlib", "shards":
  [{"name", "items", "bytes", "crc32", "head_crc32"}]}``; each shard starts with the offsets and
  CRC-32s of its items (see ``packed``), so any item can be read with one range request and
  checked by itself; ``head_crc32`` checks that header. Version 1 (no ``head_crc32``, shards
  without item CRC-32s) is still read, each shard checked as a whole;
- WebDataset tar shards, listed in a wids-style index (``{"wids_version": 1, "shardlist":
  [{"url", "nsamples", "filesize"}]}``, what ``aiotrain data index`` writes). Where an entry also
  has ``"offsets"`` (the byte offset where each sample starts, and the end), a sample is read
  with one range request; without it a shard is read whole.

A manifest comes from outside the process: it is decoded into typed structs (wrong types, negative
counts, offsets that are not increasing or leave the shard are refused with the field named),
never evaluated.
"""

from __future__ import annotations

from typing import Literal

import msgspec

from .packed import VERSION

__all__ = ["INDEX_NAME", "Manifest", "ManifestError", "ShardInfo", "manifest_json", "parse_manifest"]

INDEX_NAME = "index.json"
PACKED = "aiotrain-packed"


class ManifestError(ValueError):
    """A dataset index that cannot be used (the message names the field or shard)."""


class ShardInfo(msgspec.Struct, frozen=True, omit_defaults=True):
    """One shard: its object name (relative to the dataset's URL, or a full URL), its item
    count, its size in bytes, its CRC-32 (packed shards), the CRC-32 of its header (packed
    version 2: the header then checks each item), and, for tar shards read by range, the byte
    offset where each sample starts followed by the end of the last one."""

    name: str
    items: int
    bytes: int | None = None
    crc32: int | None = None
    offsets: list[int] | None = None
    head_crc32: int | None = None


class Manifest(msgspec.Struct, frozen=True):
    """A dataset's shards, their format (``"packed"`` or ``"tar"``) and, for packed shards, the
    format version (2: every item has its own CRC-32; 1: shards are checked whole)."""

    format: Literal["packed", "tar"]
    shards: list[ShardInfo]
    compression: Literal["zlib"] | None = None
    version: int = VERSION

    @property
    def items(self) -> int:
        """Items in the whole dataset."""
        return sum(s.items for s in self.shards)


class _Packed(msgspec.Struct):
    format: str
    version: int
    shards: list[ShardInfo]
    compression: Literal["zlib"] | None = None


class _WidsShard(msgspec.Struct, omit_defaults=True):
    url: str
    nsamples: int
    filesize: int | None = None
    crc32: int | None = None
    offsets: list[int] | None = None


class _Wids(msgspec.Struct):
    shardlist: list[_WidsShard]


def parse_manifest(raw: bytes | memoryview, where: str) -> Manifest:
    """Decode and check an index (packed ``index.json`` or a wids shard list) read from ``where``."""
    try:
        head = msgspec.json.decode(raw)
    except msgspec.DecodeError as exc:
        raise ManifestError(f"{where}: not a JSON dataset index ({exc})") from exc
    if not isinstance(head, dict):
        raise ManifestError(f"{where}: a dataset index is a JSON object")
    try:
        if "shardlist" in head:
            wids = msgspec.json.decode(raw, type=_Wids)
            shards = [ShardInfo(s.url, s.nsamples, s.filesize, s.crc32, s.offsets) for s in wids.shardlist]
            manifest = Manifest("tar", shards)
        else:
            packed = msgspec.json.decode(raw, type=_Packed)
            if packed.format != PACKED or packed.version not in (1, 2):
                raise ManifestError(f"{where}: unknown index format {packed.format!r} version "
                                    f"{packed.version} (this aiotrain reads {PACKED!r} versions "
                                    "1 and 2)")
            manifest = Manifest("packed", packed.shards, packed.compression, packed.version)
    except msgspec.ValidationError as exc:
        raise ManifestError(f"{where}: {exc}") from exc
    _check(manifest, where)
    return manifest


def _check(manifest: Manifest, where: str) -> None:
    if not manifest.shards:
        raise ManifestError(f"{where}: the index lists no shards")
    for k, shard in enumerate(manifest.shards):
        what = f"{where}: shard {k} ({shard.name!r})"
        if not shard.name or shard.name.startswith("/") or ".." in shard.name.split("/"):
            if "://" not in shard.name:
                raise ManifestError(f"{what}: a shard name is a relative object name or a URL")
        if shard.items < 0 or (shard.bytes is not None and shard.bytes < 0):
            raise ManifestError(f"{what}: negative item count or size")
        if manifest.format == "packed" and (shard.bytes is None or shard.crc32 is None):
            raise ManifestError(f"{what}: a packed shard needs 'bytes' and 'crc32'")
        if manifest.format == "packed" and manifest.version >= 2 and shard.head_crc32 is None:
            raise ManifestError(f"{what}: a version-2 packed shard needs 'head_crc32'")
        offsets = shard.offsets
        if offsets is not None:
            if len(offsets) != shard.items + 1 or any(b < a for a, b in zip(offsets, offsets[1:], strict=False)) \
                    or (offsets and offsets[0] < 0) \
                    or (shard.bytes is not None and offsets and offsets[-1] > shard.bytes):
                raise ManifestError(f"{what}: 'offsets' must be items + 1 increasing byte offsets "
                                    "inside the shard")


def manifest_json(manifest: Manifest) -> bytes:
    """The index file for ``manifest`` (packed: ``index.json``; tar: a wids shard list)."""
    if manifest.format == "packed":
        return msgspec.json.encode(_Packed(PACKED, manifest.version, manifest.shards,
                                           manifest.compression))
    shards = [_WidsShard(s.name, s.items, s.bytes, s.crc32, s.offsets) for s in manifest.shards]
    return msgspec.json.encode({"__kind__": "wids-shard-index-v1", "wids_version": 1,
                                "shardlist": shards})
