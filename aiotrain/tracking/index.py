"""A cached index of run summaries: one row per run for ``runs ls`` and the dashboard's table.

Loading a run means parsing its metadata.sdn and summary.sdn; with a thousand runs that takes
seconds. ``RunIndex.refresh`` keeps each run's row and re-reads a run only when one of its files
changed (size or mtime). A finished run costs one ``stat`` of its folder: its files are replaced
atomically (``os.replace``), which changes the folder's mtime, and appending to it again means
resuming, which rewrites metadata.sdn first; a folder changed in the last two seconds is checked
file by file (coarse mtimes). A run still being written (or killed) has no summary.sdn newer
than its log: its summary is
folded from the lines appended to metrics.jsonl since the last refresh (the one rule of
``reader.py``: summary.sdn when it is newer than the log, else summary.sdn updated by the log).
``refresh`` reads the
disk: call it from a thread (the dashboard uses the I/O executor).

Parsing SDN is what makes a first (cold) refresh slow, so a run also writes ``row.json`` beside
its metadata (``write_row``): the same metadata and summary as JSON, with the size and mtime
that metadata.sdn and summary.sdn had when it was written. The index uses a row file only while
both files still have that size and mtime; a run changed since (a status rewritten, a resumed
run's new summary, a run written by an older version) is read from its SDN files, so a row is
never stale.

An error is never an empty answer: a run whose files are corrupt is a row with status
``unreadable`` and the error (one line naming the file), and any other error (a file that
cannot be opened, a descriptor limit reached) is raised from ``refresh``, not turned into a
table without that run.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypedDict

import msgspec

from ..files import atomic_write
from .reader import (
    RunRecord,
    decode_tree,
    fold_summary,
    load_run,
    read_stored_summary,
    summary_is_final,
)
from .series import read_new_records
from .store import encode_nonfinite, flatten, jsonable

__all__ = ["ROW_FILE", "RunFields", "RunIndex", "RunRow", "read_row", "write_row"]

ROW_FILE = "row.json"
_ROW_VERSION = 1
_row_encoder = msgspec.json.Encoder(enc_hook=str)  # str subclasses (torch.__version__) as text


def write_row(run_dir: Path, metadata: Mapping[str, object], summary: Mapping[str, object] | None) -> None:
    """Write ``run_dir/row.json`` right after metadata.sdn (and, with ``summary``, summary.sdn)
    were written from these very values, stamped with both files' current size and mtime."""
    stamps = {name: _stat(os.path.join(run_dir, name)) for name in ("metadata.sdn", "summary.sdn")}
    row = {"version": _ROW_VERSION, "stamps": stamps, "metadata": _storable(metadata),
           "summary": None if summary is None else _storable(summary)}
    atomic_write(run_dir / ROW_FILE, _row_encoder.encode(row))


def _storable(tree: Mapping[str, object]) -> Any:
    """What write_sdn stores of ``tree`` (a config may nest as deep as SDN allows, so the row
    around it is not walked)."""
    return encode_nonfinite(jsonable(tree))


def read_row(run_dir: str, metadata: tuple[int, int] | None, summary: tuple[int, int] | None) -> RunRecord | None:
    """The run as ``row.json`` holds it when metadata.sdn and summary.sdn still have the size
    and mtime it recorded (``metadata`` / ``summary``: their stamps now), else None (also when
    it cannot be read: the caller reads the SDN files, and their errors are its answer)."""
    try:
        with open(os.path.join(run_dir, ROW_FILE), "rb") as f:
            data = f.read()
        row = msgspec.json.decode(data)
        stamps = row["stamps"]
        if row.get("version") != _ROW_VERSION or _stamp(stamps["metadata.sdn"]) != metadata \
                or _stamp(stamps["summary.sdn"]) != summary:
            return None
        if summary is not None and row["summary"] is None:  # summary.sdn not written from this row
            return None
        meta, values = row["metadata"], row["summary"] or {}
        if b'nan"' in data or b'inf"' in data:  # non-finite values stored as text: read them back
            meta, values = decode_tree(meta), decode_tree(values)
        return RunRecord(Path(run_dir), meta, values)
    except (OSError, msgspec.DecodeError, KeyError, TypeError):
        return None


def _stamp(value: Any) -> tuple[int, int] | None:
    return None if value is None else (int(value[0]), int(value[1]))


class RunFields(TypedDict):
    """The plain fields of a run that a filter or a column can name."""

    id: str
    name: str
    project: str
    host: str | None
    status: str
    tags: list[str]
    notes: str
    created: float
    duration: float | None


@dataclass
class RunRow:
    """What the runs table shows of one run: flat config, scalar summary, timing and status."""

    record: RunRecord
    config: dict[str, Any]
    summary: dict[str, Any]
    last_write: float
    _dict: dict[str, object] | None = None

    @property
    def key(self) -> str:
        """``project/id``: unique under one tracking root."""
        return f"{self.record.project}/{self.record.id}"

    @property
    def duration(self) -> float | None:
        """Seconds from creation to finish (or to the last write of a run that did not finish)."""
        meta = self.record.metadata
        start = meta.get("created_at")
        end = meta.get("finished_at") or (time.time() if self.record.status == "running" else self.last_write)
        return None if start is None else max(0.0, float(end) - float(start))

    def fields(self) -> RunFields:
        """The plain fields a filter or column can name (see ``aiotrain.tracking.query``)."""
        r = self.record
        return {"id": r.id, "name": r.name, "project": r.project, "host": r.host, "status": r.status,
                "tags": r.tags, "notes": r.metadata.get("notes") or "", "created": r.created_at,
                "duration": self.duration}

    def to_dict(self) -> dict[str, object]:
        """JSON-able row (non-finite summary values as the strings "nan" / "inf" / "-inf");
        kept once the run is done (its duration and status no longer move)."""
        if self._dict is not None:
            return self._dict
        data = {**self.fields(), "key": self.key, "error": self.record.metadata.get("error"),
                "config": self.config, "summary": encode_nonfinite(self.summary)}
        if data["status"] != "running":
            self._dict = data
        return data


Stamp = tuple[tuple[int, int] | None, ...]
"""(size, mtime) of a run's metadata.sdn, summary.sdn and metrics.jsonl (None: absent)."""


@dataclass
class _Entry:
    stamp: Stamp
    row: RunRow
    offset: int = 0
    folded: dict[str, Any] = field(default_factory=dict)
    folder: tuple[int, int] | None = None  # the folder's stamp once the run is done


class RunIndex:
    """Rows of every run under ``root`` (all projects), refreshed from what changed on disk."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self._entries: dict[str, _Entry] = {}
        self.generation = 0  # bumped whenever a row changed, appeared or went away

    def refresh(self) -> list[RunRow]:
        """Every run's row, oldest first; re-reads only runs whose files changed."""
        seen: dict[str, _Entry] = {}
        changed = False
        base = os.path.join(self.root, "runs")
        try:
            projects = sorted(e.path for e in os.scandir(base) if e.is_dir())
        except FileNotFoundError:
            projects = []
        for project in projects:
            for run in os.scandir(project):
                before = self._entries.get(run.path)
                entry = self._load(run.path, before)
                if entry is not None:
                    seen[run.path] = entry
                    changed |= entry is not before or entry.row.record.status == "running"
        if changed or seen.keys() != self._entries.keys():
            self.generation += 1
        self._entries = seen
        rows = [e.row for e in seen.values()]
        rows.sort(key=lambda r: (r.record.created_at, r.record.id))
        return rows

    def row(self, run_dir: str | os.PathLike[str]) -> RunRow | None:
        """The row of one run (None when ``run_dir`` holds no run), refreshed from disk as
        ``refresh`` would: a reader of one run folds its log incrementally too."""
        key = os.fspath(run_dir)
        before = self._entries.get(key)
        entry = self._load(key, before)
        if entry is None:
            if self._entries.pop(key, None) is not None:
                self.generation += 1
            return None
        if entry is not before:
            self._entries[key] = entry
            self.generation += 1
        return entry.row

    def _load(self, run_dir: str, entry: _Entry | None) -> _Entry | None:
        if entry is not None and entry.folder is not None:
            folder = _stat(run_dir)
            if folder == entry.folder and time.time() - folder[1] / 1e9 > 2.0:
                return entry
        stamp = tuple(_stat(os.path.join(run_dir, name)) for name in ("metadata.sdn", "summary.sdn", "metrics.jsonl"))
        if stamp[0] is None:
            return None  # not a run folder (or being created)
        if entry is not None and entry.stamp == stamp:
            entry.folder = _stat(run_dir) if entry.folder is not None else None
            return entry
        try:
            return self._read(run_dir, stamp, entry)
        except ValueError as exc:  # a corrupt file: the run is listed as unreadable, not left out
            record = RunRecord(Path(run_dir), {"id": os.path.basename(run_dir), "status": "unreadable",
                                               "error": str(exc).splitlines()[0]}, {})
            return _Entry(stamp, RunRow(record, {}, {}, 0.0))

    def _read(self, run_dir: str, stamp: Stamp, entry: _Entry | None) -> _Entry | None:
        """Read a run whose files changed (``ValueError`` for a corrupt one; any other error,
        a descriptor limit reached included, is raised too: never an empty or shortened table)."""
        folder = _stat(run_dir)
        record = read_row(run_dir, stamp[0], stamp[1])
        if record is not None:
            stored = record.summary  # summary.sdn as row.json holds it ({} when there is none)
        else:
            try:
                record = load_run(run_dir)
                stored = read_stored_summary(run_dir) if stamp[1] is not None else {}
            except FileNotFoundError:  # replaced or removed between stat and read: next refresh sees it
                return entry
        if entry is None or stamp[:2] != entry.stamp[:2]:  # new, or summary.sdn changed: fold anew
            entry = _Entry(stamp, RunRow(record, {}, {}, 0.0), folded=dict(stored))
        entry.stamp = stamp
        final = summary_is_final(_mtime(stamp[1]), _mtime(stamp[2]))
        if final:
            summary = stored
        else:  # not finished since it last logged: the lines appended since the last refresh, folded
            records, entry.offset = read_new_records(Path(run_dir, "metrics.jsonl"), entry.offset)
            entry.folded = summary = fold_summary(entry.folded, records)
        record.set_summary(summary, final)
        last_write = max((s[1] / 1e9 for s in stamp if s is not None), default=0.0)
        entry = _Entry(entry.stamp, RunRow(record, flatten(record.config), _scalars(summary), last_write),
                       entry.offset, entry.folded)
        done = final and record.metadata.get("status") != "running"
        entry.folder = folder if done else None
        return entry


def _mtime(stamp: tuple[int, int] | None) -> int | None:
    return None if stamp is None else stamp[1]


def _stat(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return (st.st_size, st.st_mtime_ns)


def _scalars(summary: Mapping[str, object]) -> dict[str, Any]:
    """Numbers as floats ("nan" strings decoded); media records and text left out."""
    out = {}
    for key, value in summary.items():
        if isinstance(value, bool):
            out[key] = float(value)
        elif isinstance(value, int | float):
            out[key] = float(value)
        elif value in ("nan", "inf", "-inf"):
            out[key] = float(value)
    return out

