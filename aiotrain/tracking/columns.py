"""A binary column cache beside a JSON-lines history, so a chart of 10^6 points opens in milliseconds.

metrics.jsonl (and system.jsonl) is the source of truth; decoding 83 MB of JSON lines takes
seconds. So the writer that appends lines to ``NAME.jsonl`` also appends what a chart needs to
``NAME.columns/``, off the caller's thread, after the lines themselves (every
``MetricsWriter.CACHE_RECORDS`` lines and at each durable drain; see ``writer.py``):

- ``keys.jsonl``: one line per scalar key, ``{"key": "train/loss", "file": "0.col"}``, written
  before the key's first record;
- ``N.col``: fixed 32-byte records ``(end, step, time, value)`` (little-endian int64, int64,
  float64, float64), ``end`` being the byte offset just past the jsonl line the value came from;
- ``media.jsonl``: the non-scalar values (images, histograms, tables) as
  ``{"end", "key", "step", "value"}`` lines, for the run page;
- ``marks.bin``: one 16-byte mark ``(offset, entries)`` per appended batch, written last: the
  cache covers the jsonl up to ``offset``, holding ``entries`` scalar records and media lines.

The cache is derived and is never trusted blindly. ``read_cache`` accepts it only when the last
mark lies on a line boundary of the jsonl, the records and media lines at or before that offset
add up to exactly ``entries`` (a torn or lost file fails this), and the jsonl line that ends at
the offset holds exactly the values the cache recorded for it (a jsonl replaced by another
fails this). Anything after the last mark (a batch cut short by a crash) is ignored, and the
jsonl past the offset is read as JSON, so a cache behind its jsonl (a crash between the two
appends, a run written by an older version) still gives the whole history. A cache that fails
a check is not used: the reader decodes the whole jsonl instead. ``ColumnAppender.open`` (what
the writer does when it opens a run's file, a resumed one included) repairs the cache: it cuts
what follows the last mark, rebuilds it from the jsonl when it fails a check, and appends the
lines it lacks.

What counts as a point is decided in one place, ``split_records``: numbers (bools as 0/1), the
strings "inf"/"-inf" (and any other string that reads as a number); "nan" and anything else has
no point. Dicts with a ``_type`` are media.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import msgspec
import numpy as np

try:
    import fcntl
except ImportError:  # Windows: no advisory locks, so readers never build caches there
    fcntl = None  # type: ignore[assignment]

__all__ = ["RECORD", "CachedColumns", "ColumnAppender", "ColumnRef", "Entries", "StaleColumn", "build_cache",
           "cache_dir", "drop_torn_tail", "hold_for_writing", "let_go", "read_cache", "split_records"]

RECORD = np.dtype([("end", "<i8"), ("step", "<i8"), ("time", "<f8"), ("value", "<f8")])
_MARK = np.dtype([("offset", "<i8"), ("entries", "<i8")])
_RESERVED = ("step", "timestamp")
_CHUNK = 16 << 20  # jsonl bytes decoded at a time when (re)building
_decoder = msgspec.json.Decoder()
_encoder = msgspec.json.Encoder()


def cache_dir(jsonl: Path) -> Path:
    """``metrics.jsonl`` -> ``metrics.columns`` (its cache folder, beside it)."""
    return jsonl.with_name(jsonl.name.removesuffix(".jsonl") + ".columns")


# what a record holds ---------------------------------------------------------------------------------
@dataclass
class Entries:
    """The points and media of a batch of records: per key, the indexes (in the batch) of the
    records that hold a point of it, and their steps, wall times and values; media as
    ``(record index, key, step, value)``."""

    scalars: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = field(default_factory=dict)
    media: list[tuple[int, str, int, dict[str, Any]]] = field(default_factory=list)


_NUMERIC = frozenset((float, int, bool, type(None)))


def _number(value: Any) -> float | None:
    """The point ``value`` draws, or None (nan, text, lists, dicts, null)."""
    cls = value.__class__
    if cls is float:
        x = value
    elif cls is int or cls is bool:
        try:
            x = float(value)
        except OverflowError:  # an int beyond float range
            x = math.copysign(math.inf, value)
    elif cls is str:
        try:
            x = float(value)
        except ValueError:
            return None
    else:
        return None
    return None if x != x else x


def _floats(values: list[Any]) -> np.ndarray:
    """``values`` as float64, nan where a value draws no point (see ``_number``)."""
    if _NUMERIC.issuperset(map(type, values)):
        try:
            return np.array(values, dtype=np.float64)  # None -> nan, bool -> 0/1
        except OverflowError:
            pass
    return np.array([math.nan if (x := _number(v)) is None else x for v in values], dtype=np.float64)


def _steps(values: list[Any]) -> np.ndarray:
    """Steps as int64 (a step that is not a finite number reads as 0)."""
    if set(map(type, values)) == {int}:
        try:
            return np.array(values, dtype=np.int64)
        except OverflowError:
            pass
    steps = _floats(values)
    return np.where(np.isfinite(steps) & (np.abs(steps) < 2.0**63), steps, 0).astype(np.int64)


def split_records(records: list[dict[str, Any]]) -> Entries:
    """Sort the values of ``records`` into per-key points and media entries (see the module doc).

    Works a key at a time over the whole batch (one list and one numpy conversion per key), so
    the writer's drain stays a fraction of a microsecond per value."""
    out = Entries()
    if not records:
        return out
    steps = _steps([r.get("step", 0) for r in records])
    times = _floats([r.get("timestamp") for r in records])
    for key in set().union(*records).difference(_RESERVED):
        raw = [r.get(key) for r in records]
        values = _floats(raw)
        keep = np.flatnonzero(~np.isnan(values))
        if len(keep):
            out.scalars[key] = (keep, steps[keep], times[keep], values[keep])
        if len(keep) != len(raw) and dict in set(map(type, raw)):
            out.media.extend((i, key, int(steps[i]), v) for i, v in enumerate(raw)
                             if v.__class__ is dict and "_type" in v)
    out.media.sort(key=lambda m: m[0])
    return out


# reading ------------------------------------------------------------------------------------------------
class StaleColumn(ValueError):
    """A column file is no longer the one ``read_cache`` checked (the cache was rebuilt since):
    read the history again."""


@dataclass(frozen=True)
class ColumnRef:
    """The covered records of one key's column file, read only when asked for: a reader holds
    no descriptor (nor mapping) per key between calls, however many keys and runs it keeps.

    ``read`` checks that the file is still the one that was checked (same device and inode,
    the same last covered record) and raises ``StaleColumn`` otherwise."""

    path: Path
    count: int
    identity: tuple[int, int]  # (st_dev, st_ino) when checked
    last: bytes  # the last covered record, as stored

    def __len__(self) -> int:
        return self.count

    def read(self) -> np.ndarray:
        """The ``count`` covered records (a RECORD array in memory)."""
        try:
            with open(self.path, "rb") as f:
                st = os.fstat(f.fileno())
                data = f.read(self.count * RECORD.itemsize)
        except FileNotFoundError:
            raise StaleColumn(f"{self.path} is gone (the cache was rebuilt)") from None
        if (st.st_dev, st.st_ino) != self.identity or len(data) != self.count * RECORD.itemsize \
                or data[-RECORD.itemsize:] != self.last:
            raise StaleColumn(f"{self.path} changed since it was checked (the cache was rebuilt)")
        return np.frombuffer(data, RECORD)


@dataclass
class CachedColumns:
    """What a valid cache holds: the jsonl offset it covers, and per key its records there."""

    offset: int
    columns: dict[str, ColumnRef]  # read on demand
    media: list[tuple[str, int, dict[str, Any]]]  # (key, step, value), in file order


def read_cache(jsonl: Path) -> CachedColumns | None:
    """The cache of ``jsonl`` when it passes every check (see the module doc), else None.

    A missing cache (or an empty one) reads as covering nothing; only a cache that exists and
    disagrees with the jsonl is None. Each column file is opened once, briefly, to find how many
    of its records the last mark covers (a binary search over a few pages), and then closed."""
    folder = cache_dir(jsonl)
    try:
        jsonl_size = os.stat(jsonl).st_size
    except FileNotFoundError:
        jsonl_size = 0
    state = _read_state(folder)
    if state is None:
        return None
    offset, entries, keys, media = state
    if offset > jsonl_size:
        return None
    try:
        columns = {key: _covered(folder / name, offset) for key, name in keys.items()}
    except OSError:  # a column file missing or unreadable: the cache is not whole
        return None
    kept = [m for m in media if m[0] <= offset]
    if sum(c.count for c in columns.values()) + len(kept) != entries:
        return None
    if offset and not _boundary_agrees(jsonl, offset, columns, kept):
        return None
    return CachedColumns(offset, {k: c for k, c in columns.items() if c.count},
                         [(k, s, v) for _, k, s, v in kept])


def _covered(path: Path, offset: int) -> ColumnRef:
    """The records of a column file whose line ends at or before ``offset`` (they come first:
    ``end`` grows through the file; a writer only ever cuts records after the last mark)."""
    with open(path, "rb") as f:
        st = os.fstat(f.fileno())
        n = st.st_size // RECORD.itemsize
        tail = max(0, n - 256)  # usually all but the last few are covered: look there first
        block = np.frombuffer(os.pread(f.fileno(), (n - tail) * RECORD.itemsize, tail * RECORD.itemsize), RECORD)
        if len(block) and int(block["end"][0]) <= offset:
            lo = hi = tail + int(np.searchsorted(block["end"], offset, side="right"))
        else:  # the first record whose end > offset lies in [lo, hi]
            lo, hi = 0, tail
        while lo < hi:
            mid = (lo + hi) // 2
            end = int(np.frombuffer(os.pread(f.fileno(), 8, mid * RECORD.itemsize), "<i8")[0])
            lo, hi = (mid + 1, hi) if end <= offset else (lo, mid)
        last = os.pread(f.fileno(), RECORD.itemsize, (lo - 1) * RECORD.itemsize) if lo else b""
    return ColumnRef(path, lo, (st.st_dev, st.st_ino), last)


def _read_state(folder: Path) -> tuple[int, int, dict[str, str], list[tuple[int, str, int, Any]]] | None:
    """The last mark, the key files and the media lines; None when a file is unreadable."""
    try:
        marks = np.fromfile(folder / "marks.bin", dtype=_MARK)
    except FileNotFoundError:
        return 0, 0, {}, []
    except (OSError, ValueError):
        return None
    if not len(marks):
        return 0, 0, {}, []
    offset, entries = int(marks[-1]["offset"]), int(marks[-1]["entries"])
    try:
        keys = {}
        for line in _complete_lines(folder / "keys.jsonl"):
            item = _decoder.decode(line)
            keys[item["key"]] = _checked_file(item["file"])
        media = []
        for line in _complete_lines(folder / "media.jsonl"):
            item = _decoder.decode(line)
            media.append((int(item["end"]), str(item["key"]), int(item["step"]), item["value"]))
    except (msgspec.DecodeError, KeyError, TypeError, ValueError, OSError):
        return None
    return offset, entries, keys, media


def _checked_file(name: Any) -> str:
    if not isinstance(name, str) or not name.endswith(".col") or "/" in name or "\\" in name or name.startswith("."):
        raise ValueError(f"bad column file name {name!r}")
    return name


def _complete_lines(path: Path) -> list[bytes]:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    return data[: data.rfind(b"\n") + 1].splitlines()


def _last_line(jsonl: Path, offset: int) -> bytes | None:
    """The jsonl line that ends exactly at ``offset`` (None when ``offset`` is not a line end)."""
    with open(jsonl, "rb") as f:
        end, tail = offset, b""
        while end > 0:
            start = max(0, end - 65536)
            f.seek(start)
            tail = f.read(end - start) + tail
            if not tail.endswith(b"\n"):
                return None
            cut = tail.rfind(b"\n", 0, len(tail) - 1)
            if cut >= 0:
                return tail[cut + 1:]
            end = start
        return tail


def _boundary_agrees(jsonl: Path, offset: int, columns: dict[str, ColumnRef],
                     media: list[tuple[int, str, int, Any]]) -> bool:
    """Whether the jsonl line ending at ``offset`` holds exactly what the cache recorded for it."""
    try:
        line = _last_line(jsonl, offset)
        record = _decoder.decode(line) if line is not None else None
    except (OSError, msgspec.DecodeError):
        return False
    if not isinstance(record, dict):
        return False
    entries = split_records([record])
    expected = {k: (s[0], t[0], v[0]) for k, (_, s, t, v) in entries.scalars.items()}
    lasts = {k: np.frombuffer(c.last, RECORD)[0] for k, c in columns.items() if c.count}
    found = {k: last for k, last in lasts.items() if int(last["end"]) == offset}
    if expected.keys() != found.keys():
        return False
    for key, (step, when, value) in expected.items():
        got = found[key]
        if (int(got["step"]) != step or float(got["value"]) != value
                or not (float(got["time"]) == when or (when != when and got["time"] != got["time"]))):
            return False
    at_end = sorted((k, s) for end, k, s, _ in media if end == offset)
    return at_end == sorted((k, s) for _, k, s, _ in entries.media)


# writing -------------------------------------------------------------------------------------------------
class ColumnAppender:
    """Appends batches of records to the cache of one jsonl file; owned by that file's writer.

    At most ``OPEN_FILES`` column files stay open (the least recently written is closed and
    reopened when its key comes again), so a run logging thousands of keys needs no more
    descriptors than one logging a few; ``sync`` fsyncs every file written since the last one,
    open or not."""

    OPEN_FILES = 48

    def __init__(self, folder: Path, keys: dict[str, str], entries: int) -> None:
        self.folder = folder
        self._keys = keys
        self._entries = entries
        self._files: OrderedDict[str, BinaryIO] = OrderedDict()
        self._written: set[str] = set()  # keys appended to since the last sync
        self._marks: BinaryIO = open(folder / "marks.bin", "ab")  # noqa: SIM115 - held for the run
        self._keys_file: BinaryIO | None = None
        self._media: BinaryIO | None = None

    @classmethod
    def open(cls, jsonl: Path) -> ColumnAppender:
        """The cache of ``jsonl`` ready to append to, repaired and brought level with the jsonl's
        complete lines (decoding what it lacks: nothing for a new run, the whole file for a run
        written before caches existed). Call it from the writer, off the event loop."""
        folder = cache_dir(jsonl)
        folder.mkdir(parents=True, exist_ok=True)
        cached = read_cache(jsonl)
        if cached is None:  # disagrees with the jsonl: start again from nothing
            shutil.rmtree(folder)
            folder.mkdir()
            keys: dict[str, str] = {}
            entries = offset = 0
        else:
            keys, entries, offset = _cut_to_last_mark(folder, cached)
        appender = cls(folder, keys, entries)
        try:
            appender._catch_up(jsonl, offset)
        except BaseException:
            appender.close()
            raise
        return appender

    def _catch_up(self, jsonl: Path, offset: int) -> None:
        try:
            size = os.stat(jsonl).st_size
        except FileNotFoundError:
            return
        if offset >= size:
            return
        with open(jsonl, "rb") as f:
            f.seek(offset)
            while offset < size:
                chunk = f.read(min(_CHUNK, size - offset))
                if not chunk:
                    break
                end = chunk.rfind(b"\n") + 1
                if end == 0:
                    if len(chunk) < _CHUNK:
                        break  # a torn last line: not part of the history yet
                    raise ValueError(f"{jsonl}: a line longer than {_CHUNK} bytes at byte {offset}")
                f.seek(offset + end)
                lines = chunk[:end]
                try:
                    records = msgspec.json.decode(b"[" + b",".join(ln for ln in lines.split(b"\n") if ln.strip()) + b"]")
                except msgspec.DecodeError:
                    raise ValueError(f"{jsonl}: corrupt metrics line after byte {offset}") from None
                self.append(records, lines, offset)
                offset += end

    def append(self, records: list[dict[str, Any]], lines: bytes, offset: int) -> None:
        """Add ``records``, encoded as ``lines`` (one JSON line each, no other newline), which
        the jsonl holds from byte ``offset``; then mark them covered."""
        entries = split_records(records)
        if entries.scalars or entries.media:
            ends = np.flatnonzero(np.frombuffer(lines, np.uint8) == 10) + (offset + 1)
            if len(ends) != len(records):
                raise ValueError(f"{len(records)} records but {len(ends)} lines")
            for key, (index, steps, times, values) in entries.scalars.items():
                column = np.empty(len(index), RECORD)
                column["end"] = ends[index]
                column["step"] = steps
                column["time"] = times
                column["value"] = values
                self._file(key).write(column.tobytes())
                self._entries += len(index)
            if entries.media:
                if self._media is None:
                    self._media = open(self.folder / "media.jsonl", "ab")  # noqa: SIM115
                self._media.write(_encoder.encode_lines(
                    [{"end": int(ends[i]), "key": k, "step": s, "value": v} for i, k, s, v in entries.media]))
                self._entries += len(entries.media)
        for f in self._files.values():
            f.flush()
        if self._media is not None:
            self._media.flush()
        self._marks.write(np.array([(offset + len(lines), self._entries)], _MARK).tobytes())
        self._marks.flush()

    def _file(self, key: str) -> BinaryIO:
        self._written.add(key)
        f = self._files.get(key)
        if f is not None:
            self._files.move_to_end(key)
            return f
        name = self._keys.get(key)
        if name is None:
            name = self._keys[key] = f"{len(self._keys)}.col"
            if self._keys_file is None:
                self._keys_file = open(self.folder / "keys.jsonl", "ab")  # noqa: SIM115
            self._keys_file.write(_encoder.encode({"key": key, "file": name}) + b"\n")
            self._keys_file.flush()  # the name is on record before any of its values
        f = self._files[key] = open(self.folder / name, "ab")  # noqa: SIM115
        while len(self._files) > self.OPEN_FILES:
            _, oldest = self._files.popitem(last=False)
            oldest.close()  # flushed; synced (reopened) by the next sync
        return f

    def sync(self) -> None:
        """fsync every file of the cache written since the last sync (the writer's durable drains)."""
        for key in self._written.difference(self._files):
            with open(self.folder / self._keys[key], "rb") as closed:  # fsync reaches the file's data through any descriptor
                os.fsync(closed.fileno())
        self._written.clear()
        for f in (*self._files.values(), self._keys_file, self._media, self._marks):
            if f is not None:
                f.flush()
                os.fsync(f.fileno())

    def close(self) -> None:
        """Close every file."""
        for f in (*self._files.values(), self._keys_file, self._media, self._marks):
            if f is not None:
                with contextlib.suppress(OSError):
                    f.close()
        self._files.clear()


def hold_for_writing(jsonl_file: BinaryIO, wait: float = 10.0) -> bool:
    """Mark the jsonl open in ``jsonl_file`` as being written (until that file is closed), so
    ``build_cache`` leaves its cache alone. Waits up to ``wait`` seconds while a build (or
    another writer of the same file) holds it, then returns False: the caller must then leave
    the cache alone too (readers decode what it lacks). Never blocks forever."""
    if fcntl is None:
        return True
    deadline = time.monotonic() + wait
    while True:
        try:
            fcntl.flock(jsonl_file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)


def let_go(jsonl_file: BinaryIO) -> None:
    """End ``hold_for_writing`` before closing the file. Closing alone is not enough: a process
    forked meanwhile (a data worker) shares the lock through its copy of the descriptor and would
    keep it for as long as it lives, so the next writer of the file would wait out its timeout."""
    if fcntl is not None:
        with contextlib.suppress(OSError, ValueError):
            fcntl.flock(jsonl_file.fileno(), fcntl.LOCK_UN)


def build_cache(jsonl: Path) -> bool:
    """Bring the cache of ``jsonl`` level with it when no writer holds the file (a finished run
    written before caches existed, an imported one, a torn cache); returns whether it did.
    For a reader that had to decode much of the jsonl, so that later starts read columns."""
    if fcntl is None:
        return False
    try:
        with open(jsonl, "rb") as f:
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:  # a writer has it open: it keeps its own cache
                return False
            ColumnAppender.open(jsonl).close()
            return True
    except (OSError, ValueError):  # read-only folder, corrupt line: readers decode the jsonl
        return False


def _cut_to_last_mark(folder: Path, cached: CachedColumns) -> tuple[dict[str, str], int, int]:
    """Drop what follows the last mark in every file (a batch a crash cut short)."""
    state = _read_state(folder)
    assert state is not None  # read_cache just read the same files
    offset, entries, keys, media = state
    for key, name in keys.items():
        ref = cached.columns.get(key)
        size = (ref.count if ref is not None else 0) * RECORD.itemsize
        _truncate(folder / name, size)
    with contextlib.suppress(FileNotFoundError):
        _truncate(folder / "marks.bin", os.path.getsize(folder / "marks.bin") // _MARK.itemsize * _MARK.itemsize)
    drop_torn_tail(folder / "keys.jsonl")
    _truncate_lines(folder / "media.jsonl", sum(1 for m in media if m[0] <= offset))
    return keys, entries, cached.offset


def _truncate(path: Path, size: int) -> None:
    with contextlib.suppress(FileNotFoundError), open(path, "r+b") as f:
        f.truncate(size)


def _truncate_lines(path: Path, keep: int) -> None:
    """Cut ``path`` after its ``keep``-th line."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return
    end = 0
    for _ in range(keep):
        end = data.index(b"\n", end) + 1
    if end != len(data):
        _truncate(path, end)


def drop_torn_tail(path: Path) -> None:
    """Cut a torn last line left by a crash (a jsonl, a cache's line files), so appended lines
    start on a line of their own."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return
    if size == 0:
        return
    with open(path, "r+b") as f:
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return
        chunk = 1 << 16
        end = size
        while end > 0:
            start = max(0, end - chunk)
            f.seek(start)
            cut = f.read(end - start).rfind(b"\n")
            if cut >= 0:
                f.truncate(start + cut + 1)
                return
            end = start
        f.truncate(0)
