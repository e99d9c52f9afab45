"""WebDataset tar shards: samples are runs of members that share a key (``0001.jpg``,
``0001.cls`` -> ``{"__key__": "0001", "jpg": ..., "cls": ...}``).

A small reader of its own (POSIX ustar headers, GNU long names, pax ``path``) rather than
``tarfile``: it never touches the file system, reads from memory or a byte range, and reports
where each sample starts, which is what an index for range requests needs. Only regular files
are samples' members; directories and other entries are skipped, as WebDataset does.
"""

from __future__ import annotations

import io
import tarfile
from collections.abc import Iterator
from typing import Any

__all__ = ["TarFormatError", "iter_samples", "sample_offsets", "write_tar_shard"]

_BLOCK = 512


class TarFormatError(ValueError):
    """Bytes that are not a tar stream (the message names the shard and the offset)."""


def _octal(field: bytes, where: str, pos: int) -> int:
    text = field.rstrip(b"\0 ").strip()
    if field[:1] and field[0] & 0x80:  # GNU base-256 for large sizes
        return int.from_bytes(field[1:], "big")
    try:
        return int(text or b"0", 8)
    except ValueError as exc:
        raise TarFormatError(f"{where}: bad tar header at byte {pos}") from exc


def _members(data: memoryview, where: str) -> Iterator[tuple[int, str, memoryview]]:
    """``(header offset, name, payload)`` of each regular file in ``data``."""
    pos, long_name = 0, None
    end = len(data)
    while pos + _BLOCK <= end:
        header = bytes(data[pos:pos + _BLOCK])
        if header == b"\0" * _BLOCK:
            return
        size = _octal(header[124:136], where, pos)
        kind = header[156:157]
        start = pos + _BLOCK
        if start + size > end:
            raise TarFormatError(f"{where}: tar member at byte {pos} runs past the end")
        payload = data[start:start + size]
        next_pos = start + (size + _BLOCK - 1) // _BLOCK * _BLOCK
        if kind == b"L":  # GNU long name: the next member's name
            long_name = bytes(payload).rstrip(b"\0").decode("utf-8", "replace")
        elif kind == b"x":  # pax extended header: take its path
            for record in bytes(payload).decode("utf-8", "replace").split("\n"):
                _, _, kv = record.partition(" ")
                if kv.startswith("path="):
                    long_name = kv[5:]
        elif kind in (b"0", b"\0", b"7"):
            name = long_name or _ustar_name(header)
            long_name = None
            yield pos, name, payload
        else:
            long_name = None
        pos = next_pos


def _ustar_name(header: bytes) -> str:
    name = header[0:100].split(b"\0", 1)[0]
    if header[257:262] == b"ustar":
        prefix = header[345:500].split(b"\0", 1)[0]
        if prefix:
            name = prefix + b"/" + name
    return name.decode("utf-8", "replace")


def _split(name: str) -> tuple[str, str]:
    """WebDataset's split: the key is everything before the first dot of the base name."""
    folder, _, base = name.rpartition("/")
    stem, dot, ext = base.partition(".")
    key = f"{folder}/{stem}" if folder else stem
    return key, ext if dot else ""


def iter_samples(data: bytes | memoryview, where: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(byte offset, sample)`` of each sample in a tar stream, in order."""
    current: dict[str, Any] | None = None
    start = 0
    for pos, name, payload in _members(memoryview(data), where):
        key, ext = _split(name)
        if current is None or current["__key__"] != key:
            if current is not None:
                yield start, current
            current, start = {"__key__": key}, pos
        current[ext] = bytes(payload)
    if current is not None:
        yield start, current


def sample_offsets(data: bytes | memoryview, where: str) -> list[int]:
    """Where each sample of a tar stream starts, then where the last one ends (the index)."""
    offsets: list[int] = []
    end, last = 0, None
    for pos, name, payload in _members(memoryview(data), where):
        key, _ = _split(name)
        if key != last:
            offsets.append(pos)
            last = key
        end = pos + _BLOCK + (len(payload) + _BLOCK - 1) // _BLOCK * _BLOCK
    return [*offsets, end]


def write_tar_shard(samples: list[dict[str, Any]]) -> tuple[bytes, list[int]]:
    """A tar shard of ``samples`` (dicts of extension -> bytes or str, with ``__key__``) and its
    sample offsets."""
    buf = io.BytesIO()
    offsets: list[int] = []
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for i, sample in enumerate(samples):
            offsets.append(buf.tell())
            key = str(sample.get("__key__", f"{i:09d}"))
            for ext, value in sample.items():
                if ext == "__key__":
                    continue
                payload = value.encode() if isinstance(value, str) else bytes(value)
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size, info.mode, info.mtime = len(payload), 0o644, 0
                tar.addfile(info, io.BytesIO(payload))
        end = buf.tell()
    return buf.getvalue(), [*offsets, end]
