"""Writing a sharded dataset: ``pack(items, out)`` and ``aiotrain data pack``.

Items come from a local folder (files grouped into samples by WebDataset's rule: ``a/0001.jpg``
and ``a/0001.cls`` are the sample ``{"__key__": "a/0001", "jpg": ..., "cls": ...}``), from any
iterable, or from a map-style Dataset (``len`` and ``[i]``). They are written in order into
shards of about ``shard_bytes`` each, in the project's packed format (``format="packed"``, optional
per-item ``compression="zlib"``) or as WebDataset tars (``format="tar"``, items must be dicts of
extension -> bytes or str), and the index (``index.json``) is written last, so a reader never sees
a dataset whose index names a shard not yet there. Every file is written atomically.

``out`` is a local folder or an object-store URL; for a URL the shards are built in memory one
at a time and uploaded as they are completed.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Literal

from ...files import atomic_write
from .codec import Compression, encode_item
from .manifest import INDEX_NAME, Manifest, ShardInfo, manifest_json
from .packed import build_shard, crc32, header_size
from .source import ObjectSource, _local_url
from .tar import sample_offsets, write_tar_shard

__all__ = ["PackWriter", "folder_samples", "index_tars", "pack"]

Format = Literal["packed", "tar"]


class PackWriter:
    """Items in, shards out (see the module docstring). ``add`` items in order, then ``close``
    (or use it as a context manager) to write the last shard and the index."""

    def __init__(self, out: str | os.PathLike[str], *, shard_bytes: int = 64 << 20,
                 compression: Compression = None, format: Format = "packed",
                 prefix: str = "shard") -> None:
        if format not in ("packed", "tar"):
            raise ValueError(f"format must be 'packed' or 'tar', got {format!r}")
        if compression not in (None, "zlib"):
            raise ValueError(f"compression must be None or 'zlib', got {compression!r}")
        if format == "tar" and compression is not None:
            raise ValueError("tar shards are written uncompressed (compress the members yourself)")
        self.out, self.format, self.compression = str(out), format, compression
        self.shard_bytes, self.prefix = max(int(shard_bytes), 1), prefix
        self._local = _local_url(self.out)
        self._source = None if self._local is not None else ObjectSource(self.out)
        self._pending: list[Any] = []
        self._pending_bytes = 0
        self._shards: list[ShardInfo] = []
        self._closed = False

    def add(self, item: Any) -> None:
        """Append one item (a shard is written when it reaches ``shard_bytes``)."""
        if self.format == "tar":
            if not isinstance(item, dict):
                raise TypeError(f"tar shards hold dict samples (extension -> bytes), got {type(item).__name__}")
            size = sum(len(v) + 512 for k, v in item.items() if k != "__key__") + 512
            entry: Any = item
        else:
            entry = encode_item(item, self.compression)
            size = len(entry)
        if self._pending and self._pending_bytes + size > self.shard_bytes:
            self._flush()
        self._pending.append(entry)
        self._pending_bytes += size

    def _flush(self) -> None:
        if not self._pending:
            return
        k = len(self._shards)
        if self.format == "tar":
            data, offsets = write_tar_shard(self._pending)
            name = f"{self.prefix}-{k:05d}.tar"
            info = ShardInfo(name, len(self._pending), len(data), crc32(data), offsets)
        else:
            data = build_shard(self._pending, self.compression)
            name = f"{self.prefix}-{k:05d}.atp"
            head = header_size(len(self._pending))
            info = ShardInfo(name, len(self._pending), len(data), crc32(data),
                             head_crc32=crc32(memoryview(data)[:head]))
        self._write(name, data)
        self._shards.append(info)
        self._pending, self._pending_bytes = [], 0

    def _write(self, name: str, data: bytes) -> None:
        if self._local is not None:
            atomic_write(Path(self._local) / name, data)
        else:
            assert self._source is not None
            asyncio.run(self._source.aput(name, data))

    def close(self) -> Manifest:
        """Write the last shard and the index; returns the index."""
        if not self._closed:
            self._flush()
            if not self._shards:
                raise ValueError("no items to pack")
            self._closed = True
            self.manifest = Manifest(self.format, self._shards, self.compression)
            self._write(INDEX_NAME, manifest_json(self.manifest))
        return self.manifest

    def __enter__(self) -> PackWriter:
        return self

    def __exit__(self, exc_type: Any, *rest: Any) -> None:
        if exc_type is None:
            self.close()


def folder_samples(folder: str | os.PathLike[str]) -> Iterator[dict[str, Any]]:
    """The samples of a local folder, by WebDataset's rule (files sharing the part of their path
    before the first dot of the name), in sorted order; hidden files are skipped."""
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such folder")
    files = sorted(p for p in root.rglob("*") if p.is_file()
                   and not any(part.startswith(".") for part in p.relative_to(root).parts))
    current: dict[str, Any] | None = None
    for path in files:
        rel = path.relative_to(root).as_posix()
        folder_part, _, base = rel.rpartition("/")
        stem, _, ext = base.partition(".")
        key = f"{folder_part}/{stem}" if folder_part else stem
        if current is None or current["__key__"] != key:
            if current is not None:
                yield current
            current = {"__key__": key}
        current[ext or "data"] = path.read_bytes()
    if current is not None:
        yield current


def _items(source: Any) -> Iterable[Any]:
    if isinstance(source, str | os.PathLike):
        return folder_samples(source)
    if hasattr(source, "__len__") and hasattr(source, "__getitem__") and not isinstance(source, list | tuple | dict):
        return (source[i] for i in range(len(source)))
    items: Iterable[Any] = source
    return items


def pack(items: Any, out: str | os.PathLike[str], *, shard_bytes: int = 64 << 20,
         compression: Compression = None, format: Format = "packed") -> Manifest:
    """Write ``items`` (a local folder, an iterable, or a map-style Dataset) as a sharded dataset
    at ``out`` (a folder or a URL); returns its index. Runs synchronously: from async code call it
    with ``await to_io(pack, ...)``."""
    with PackWriter(out, shard_bytes=shard_bytes, compression=compression, format=format) as w:
        for item in _items(items):
            w.add(item)
    return w.manifest


def index_tars(shards: list[tuple[str, bytes]]) -> Manifest:
    """A wids-style index (with sample offsets and CRCs) of tar shards given as (name, bytes)."""
    infos = []
    for name, data in shards:
        offsets = sample_offsets(data, name)
        infos.append(ShardInfo(name, len(offsets) - 1, len(data), crc32(data), offsets))
    return Manifest("tar", infos)
