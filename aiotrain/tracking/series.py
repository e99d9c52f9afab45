"""Metric histories as columns, read incrementally, and downsampling that keeps extremes.

The dashboard charts histories of up to millions of points. ``SeriesFile`` holds a
metrics.jsonl (or system.jsonl) file as per-key numpy columns (step, wall time, value): it
starts from the file's binary column cache (``columns.py``: milliseconds for 10^6 points) and
decodes only the JSON lines the cache does not cover (all of them when there is no valid
cache), and afterwards reads only the bytes appended since, so a live run costs a few new lines per
refresh. It stops at the last complete line, so a writer mid-append (or a torn last line) is
never read half, and before a range of NUL bytes: on a network file system (NFS) another
machine's writes reach the server out of order, so a reader there can see the file grown with a
hole not yet filled; it reads up to the hole and goes on from there once the hole is filled.
(A full read of the file, ``reader.iter_history``, calls a hole before the last line corrupt.) Non-scalar values (histograms, images, tables) are kept aside per key with
their step, for the run detail page. A scalar logged as nan is dropped from its column (a chart
has nothing to draw there); inf values are kept.

``downsample`` cuts a column to at most ``points`` points by equal-count buckets, keeping the
minimum and the maximum of every bucket (and the first and last point), so spikes survive.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
from numpy.typing import ArrayLike

from .columns import ColumnRef, StaleColumn, read_cache, split_records

__all__ = ["Column", "SeriesFile", "decode_lines", "downsample", "read_new_records"]

_decoder = msgspec.json.Decoder()


def decode_lines(chunk: bytes, path: Path) -> list[dict[str, Any]]:
    """Decode complete JSON lines; a corrupt line raises ``ValueError`` naming the file."""
    lines = [line for line in chunk.split(b"\n") if line.strip()]
    if not lines:
        return []
    try:
        records: list[dict[str, Any]] = msgspec.json.decode(b"[" + b",".join(lines) + b"]")
        return records
    except msgspec.DecodeError:
        for line in lines:  # find the bad one for the message
            try:
                _decoder.decode(line)
            except msgspec.DecodeError:
                raise ValueError(f"{path}: corrupt metrics line {line[:60]!r}") from None
        raise


def read_new_records(path: Path, offset: int, until: int | None = None) -> tuple[list[dict[str, Any]], int]:
    """The complete records appended to ``path`` after byte ``offset`` (up to byte ``until``
    when given), and the new offset.

    A file that shrank below ``offset`` was replaced: it is read again from the start.
    """
    try:
        size = os.stat(path).st_size
    except FileNotFoundError:
        return [], 0
    if until is not None:
        size = min(size, until)
    if size < offset:
        offset = 0
    if size == offset:
        return [], offset
    with open(path, "rb") as f:
        f.seek(offset)
        chunk = f.read(size - offset)
    hole = chunk.find(b"\0")  # JSON lines never hold a NUL byte: a range not written yet
    end = chunk.rfind(b"\n", 0, hole if hole >= 0 else len(chunk)) + 1
    if end == 0:
        return [], offset
    return decode_lines(chunk[:end], path), offset + end


@dataclass
class Column:
    """One scalar metric: steps, wall times and values, in file order."""

    step: np.ndarray
    time: np.ndarray
    value: np.ndarray

    def __len__(self) -> int:
        return len(self.value)


@dataclass
class _Parts:
    cached: ColumnRef | None = None  # the column cache's records, read when the column is asked for
    step: list[np.ndarray] = field(default_factory=list)
    time: list[np.ndarray] = field(default_factory=list)
    value: list[np.ndarray] = field(default_factory=list)
    joined: Column | None = None

    def add(self, step: ArrayLike, time: ArrayLike, value: ArrayLike) -> None:
        self.step.append(np.asarray(step, np.int64))
        self.time.append(np.asarray(time, np.float64))
        self.value.append(np.asarray(value, np.float64))
        self.joined = None


class SeriesFile:
    """The columns of one JSON-lines history file, refreshed incrementally. Thread-safe; call it
    from a thread (``refresh`` reads the disk, ``downsampled`` works through whole columns).

    The first refresh starts from the file's column cache (``columns.py``) when the cache agrees
    with the file, and decodes only the lines the cache does not cover; otherwise (no cache, or
    one that fails a check) it decodes the whole file. A key's cached records are read when its
    column is first asked for, and no file stays open between calls: a reader keeping many
    histories of many keys holds no descriptor for them."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.from_cache = 0  # bytes of the file the last start read from the column cache
        self._parts: dict[str, _Parts] = {}
        self._small: dict[tuple[str, int], tuple[int, Column]] = {}
        self.media: dict[str, list[tuple[int, dict[str, Any]]]] = {}
        self._lock = threading.Lock()

    def refresh(self) -> int:
        """Read what was appended since the last call; returns how many records it added."""
        with self._lock:
            if self.offset == 0 and not self._parts:
                self._start()
            records, offset = read_new_records(self.path, self.offset)
            if offset < self.offset or (offset == 0 and self.offset):  # replaced: start over
                self._clear()
                self._start()
                records, offset = read_new_records(self.path, self.offset)
            self.offset = offset
            if records:
                self._add(records)
            return len(records)

    def _reload(self) -> None:
        """Read the history again from scratch, up to the offset already reached."""
        offset = self.offset
        self._clear()
        self._start()
        records, self.offset = read_new_records(self.path, self.offset, until=offset)
        self._add(records)

    def _clear(self) -> None:
        self._parts.clear()
        self._small.clear()
        self.media.clear()
        self.offset = self.from_cache = 0

    def _start(self) -> None:
        cached = read_cache(self.path)
        if cached is None or not cached.offset:
            return
        for key, ref in cached.columns.items():
            self._parts.setdefault(key, _Parts()).cached = ref
        for key, step, value in cached.media:
            self.media.setdefault(key, []).append((step, value))
        self.offset = self.from_cache = cached.offset

    def downsampled(self, key: str, points: int) -> tuple[int, Column] | None:
        """``(total points, downsample(column(key), points))``, cached until the column grows."""
        with self._lock:
            column = self._column(key)
            if column is None:
                return None
            cached = self._small.get((key, points))
            if cached is None or cached[0] != len(column):
                cached = self._small[key, points] = (len(column), downsample(column, points))
            return cached

    def _add(self, records: list[dict[str, Any]]) -> None:
        entries = split_records(records)
        for key, (_, steps, times, values) in entries.scalars.items():
            self._parts.setdefault(key, _Parts()).add(steps, times, values)
        for _, key, step, value in entries.media:
            self.media.setdefault(key, []).append((step, value))

    def media_entries(self) -> dict[str, list[tuple[int, dict[str, Any]]]]:
        """Non-scalar values (histograms, images, tables) by key, as ``(step, value)`` pairs."""
        with self._lock:
            return {k: list(v) for k, v in self.media.items()}

    def keys(self) -> list[str]:
        """The scalar keys seen so far, sorted."""
        with self._lock:
            return sorted(self._parts)

    def column(self, key: str) -> Column | None:
        """Every point of ``key`` so far (None when it has no scalar point)."""
        with self._lock:
            return self._column(key)

    def _column(self, key: str, retry: bool = True) -> Column | None:
        parts = self._parts.get(key)
        if parts is None:
            return None
        if parts.cached is not None:
            try:
                records = parts.cached.read()
            except StaleColumn:  # the cache was rebuilt since: read the history again, to the same offset
                if not retry:
                    raise
                self._reload()
                return self._column(key, retry=False)
            parts.step.insert(0, records["step"])
            parts.time.insert(0, records["time"])
            parts.value.insert(0, records["value"])
            parts.cached = parts.joined = None
        if parts.joined is None:
            parts.joined = Column(np.concatenate(parts.step), np.concatenate(parts.time),
                                  np.concatenate(parts.value))
            parts.step, parts.time, parts.value = [parts.joined.step], [parts.joined.time], [parts.joined.value]
        return parts.joined


def downsample(column: Column, points: int) -> Column:
    """At most about ``points`` points of ``column``: per equal-count bucket its min and max
    (and the first and last point overall), in step order."""
    if points < 4:
        raise ValueError(f"points must be >= 4, got {points}")
    step, time, value = column.step, column.time, column.value
    if len(step) > 1 and np.any(step[1:] < step[:-1]):
        order = np.argsort(step, kind="stable")
        step, time, value = step[order], time[order], value[order]
    n = len(value)
    if n <= points:
        return Column(step, time, value)
    buckets = points // 2
    size = -(-n // buckets)
    padded = np.full(buckets * size, np.nan)
    padded[:n] = value
    grid = padded.reshape(buckets, size)
    missing = np.isnan(grid)
    lo = np.where(missing, np.inf, grid).argmin(axis=1)
    hi = np.where(missing, -np.inf, grid).argmax(axis=1)
    base = np.arange(buckets) * size
    idx = np.unique(np.concatenate([base + lo, base + hi, [0, n - 1]]))
    idx = idx[idx < n]
    return Column(step[idx], time[idx], value[idx])
