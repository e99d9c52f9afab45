"""Tracking's public read API: runs, rows, summaries, histories, live tails, tables, artifacts.

Everything that reads tracked runs back (the dashboard, the ``aiotrain runs`` commands, the
TensorBoard and MLflow exporters) reads through this module, so each question has one answer:
the summary of a killed run, the rows a filter selects, the points of a chart.

``RunReader(root)`` reads one tracking root. Every method touches the disk: in async code call
it in the I/O executor (``await to_io(reader.rows)``). It is safe to share between threads, and
a long-lived reader (the dashboard) keeps the runs index and the parsed histories it was last
asked for, refreshing only what changed on disk::

    reader = RunReader("./.aiotrain")
    rows = reader.select(reader.rows(), ["status=finished"], sort="-val/accuracy")
    record = reader.find("digits/3f9a2c1b")          # id, PROJECT/ID, name or folder
    record.summary                                   # summary.sdn, or derived from the log
    history = reader.history(record.dir)             # scalar columns of metrics.jsonl
    history.column("train/loss").value               # numpy arrays: step, time, value
    tail = reader.tail(record.dir, "metrics", offset=0)   # records appended since a byte offset

The types it returns: ``RunRow`` (one line of the runs table), ``RunRecord`` (one run: metadata,
config, summary), ``History`` (a history file as columns, ``Column``), ``Tail``, ``TableRows``,
``Media``, ``ArtifactCatalog`` and ``ArtifactRefs``. Reading never writes, except that a reader
made with ``build_caches=True`` builds the column cache of a long history it had to decode from
JSON, in the background, so the next start reads columns (see ``columns.py``).

A run's files are read defensively: a torn last line is not yet part of the history, a file
replaced by another is read again from its start, and an error (a corrupt line, an unreadable
file) is raised, naming the file, never turned into an empty answer.
"""

from __future__ import annotations

import difflib
import os
import threading
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple, TypedDict, TypeVar

from . import query
from .columns import build_cache
from .index import RunIndex, RunRow
from .lineage import ArtifactCatalog, ArtifactRefs, catalog, run_artifacts
from .media import Table
from .open_runs import drain_open_run
from .reader import RunRecord, find_run, iter_history, list_runs, load_run
from .series import Column, SeriesFile, read_new_records
from .store import check_name, encode_nonfinite, flatten, get_dir

__all__ = ["HISTORIES", "ArtifactCatalog", "ArtifactRefs", "Column", "History", "Media", "RunReader", "RunRecord",
           "RunRow", "StepRows", "TableRows", "Tail", "check_name", "encode_nonfinite", "find_run", "flatten",
           "history_of", "list_runs", "load_run", "scan_history", "step_rows"]

T = TypeVar("T")

History = SeriesFile
"""A history file (metrics.jsonl or system.jsonl) as per-key columns: ``keys()``,
``column(key)``, ``downsampled(key, points)``, ``media_entries()``, ``offset``."""

HISTORIES = ("metrics", "system")
"""The two history files of a run: ``metrics.jsonl`` (``run.log``) and ``system.jsonl``
(system metrics, keys ``system/*``)."""

_BUILD_BYTES = 4 << 20  # JSON decoded at a history's first read that makes a cache worth building


class Tail(NamedTuple):
    """The complete records appended to a history file after a byte offset, and the offset
    to pass next time (a torn or half-written last line is left for the next call)."""

    records: list[dict[str, Any]]
    offset: int


class TableRows(TypedDict):
    """The first rows of a logged table: its columns, up to ``limit`` rows and how many it has."""

    columns: list[str]
    rows: list[list[Any]]
    nrows: int


class Media(TypedDict):
    """A run's non-scalar values by kind, then by key, each a list of ``{"step", **value}``."""

    image: dict[str, list[dict[str, Any]]]
    histogram: dict[str, list[dict[str, Any]]]
    table: dict[str, list[dict[str, Any]]]


def history_of(key: str) -> str:
    """Which history file holds ``key``: "system" for ``system/*`` keys, else "metrics"."""
    return "system" if key.startswith("system/") else "metrics"


def scan_history(run_dir: str | os.PathLike[str], which: str = "metrics") -> Iterator[dict[str, Any]]:
    """Every record of the run's ``which`` history in order (W&B's ``scan_history``), read as
    it goes; "nan" / "inf" values come back as floats. A corrupt line (other than a torn last
    one) is a ``ValueError`` naming the file and line."""
    return iter_history(_history_path(Path(run_dir), which))


class StepRows(NamedTuple):
    """A history as a table (W&B's ``run.history()``): one row per step, in step order, each
    holding the scalar values logged at that step (several ``log`` calls at one step merge; a
    key logged twice at one step keeps its last value)."""

    keys: list[str]  # the scalar keys, in the order they were first logged
    rows: list[tuple[int, dict[str, float]]]


def step_rows(run_dir: str | os.PathLike[str], which: str = "metrics", keys: Sequence[str] | None = None) -> StepRows:
    """The run's ``which`` history as ``StepRows``, over every scalar key or only ``keys``.
    Scalars are numbers (bools as 0/1, nan and inf kept); text and media are left out."""
    wanted = None if keys is None else set(keys)
    seen: dict[str, None] = {}
    by_step: dict[int, dict[str, float]] = {}
    for record in scan_history(run_dir, which):
        values = {k: float(v) for k, v in record.items() if k not in ("step", "timestamp")
                  and isinstance(v, int | float) and (wanted is None or k in wanted)}
        if values:
            seen.update(dict.fromkeys(values))
            by_step.setdefault(int(record.get("step", 0)), {}).update(values)
    order = list(seen) if keys is None else [k for k in keys if k in seen]
    return StepRows(order, sorted(by_step.items(), key=lambda item: item[0]))


def _history_path(run_dir: Path, which: str) -> Path:
    if which not in HISTORIES:
        raise ValueError(f"history must be one of {HISTORIES}, got {which!r}")
    return run_dir / f"{which}.jsonl"


class RunReader:
    """Read access to every run and artifact under one tracking root (default: the root in use).

    ``keep``: how many parsed histories to keep between calls (least recently used dropped);
    ``build_caches``: build the column cache of a
    history that had to be decoded from JSON (see the module doc)."""

    def __init__(self, root: str | os.PathLike[str] | None = None, *, keep: int = 64,
                 build_caches: bool = False) -> None:
        self.root = Path(root) if root is not None else get_dir()
        self.keep = keep
        self.build_caches = build_caches
        self._index = RunIndex(self.root)
        self._index_lock = threading.Lock()
        self._histories: OrderedDict[Path, SeriesFile] = OrderedDict()
        self._lock = threading.Lock()
        self._built: set[Path] = set()

    # the runs table -------------------------------------------------------------------------------
    def rows(self) -> list[RunRow]:
        """Every run's row, oldest first; re-reads only the runs whose files changed."""
        with self._index_lock:
            return self._index.refresh()

    @property
    def generation(self) -> int:
        """A number that changes whenever ``rows()`` found a row changed, new or gone."""
        return self._index.generation

    @classmethod
    def select(cls, rows: Sequence[RunRow], filters: Iterable[str] = (), sort: str | None = None,
               text: str = "", *, check: bool = False) -> list[RunRow]:
        """Rows passing every ``KEY OP VALUE`` filter and holding ``text``, sorted by ``sort``
        (``-KEY``: descending); the syntax is ``aiotrain.tracking.query``'s. With ``check``, a
        filter or sort key that no row has is a ``LookupError`` (see ``check_keys``)."""
        filters = list(filters)
        if check:
            keys = [query.parse_filter(f).key for f in filters]
            cls.check_keys(rows, [*keys, query.parse_sort(sort)[0]] if sort else keys)
        return query.apply(rows, filters, sort, text)

    @staticmethod
    def value(row: RunRow, key: str) -> object:
        """The value ``key`` names in ``row``: a field (``status``, ``host``, ...),
        ``config.DOTTED.KEY`` or a summary metric; None when the run has none."""
        return query.column_value(row, key)

    @staticmethod
    def check_keys(rows: Sequence[RunRow], keys: Iterable[str]) -> None:
        """Raise ``LookupError`` naming the first key that no row has, with the closest keys
        the rows do have: a column or filter that can only ever be empty is a typo."""
        if not rows:
            return
        known: set[str] | None = None
        for key in keys:
            if key in query.FIELDS or key == "tag" or any(query.column_value(r, key) is not None for r in rows):
                continue
            if known is None:
                known = {*query.FIELDS, *(f"config.{k}" for r in rows for k in r.config),
                         *(k for r in rows for k in r.summary)}
            close = difflib.get_close_matches(key, sorted(known), n=3, cutoff=0.6)
            hint = f"; did you mean {' or '.join(close)}?" if close else \
                "; keys are run fields, config.DOTTED.KEY or metric names"
            raise LookupError(f"no run has {key!r}{hint}")

    # one run ----------------------------------------------------------------------------------------
    def run_dir(self, project: str, run_id: str) -> Path:
        """The folder of run ``project/run_id`` (``ValueError`` for a name that is not one folder)."""
        check_name("project", project)
        check_name("run", run_id)
        return self.root / "runs" / project / run_id

    def record(self, project: str, run_id: str) -> RunRecord:
        """Run ``project/run_id`` with its summary already read (``LookupError`` when there is
        none). Through the runs index: the log of a run that did not finish is folded
        incrementally, so asking again for a live run reads only what it appended."""
        with self._index_lock:
            row = self._index.row(self.run_dir(project, run_id))
        if row is None:
            raise LookupError(f"no run {project}/{run_id} under {self.root}")
        return row.record

    def find(self, ref: str) -> RunRecord:
        """A run by folder, id, ``PROJECT/ID`` or name (``LookupError`` listing the candidates
        when a name or id is ambiguous, or when nothing matches)."""
        return find_run(ref, self.root)

    # histories ----------------------------------------------------------------------------------------
    def history(self, run_dir: str | os.PathLike[str], which: str = "metrics") -> History:
        """The run's ``which`` history ("metrics" or "system") as columns, brought up to date.
        ``ValueError`` names a corrupt line."""
        path = _history_path(Path(run_dir), which)
        with self._lock:
            series = self._histories.get(path)
            if series is None:
                series = self._histories[path] = SeriesFile(path)
                while len(self._histories) > self.keep:
                    self._histories.popitem(last=False)
            self._histories.move_to_end(path)
        series.refresh()
        if self.build_caches and series.offset - series.from_cache > _BUILD_BYTES:
            with self._lock:
                build = path not in self._built
                self._built.add(path)  # once: a run written by an older version, imported, a torn cache
            if build:
                from ..runtime import submit_io

                submit_io(build_cache, path)  # in the background; a live run's writer keeps its own
        return series

    def tail(self, run_dir: str | os.PathLike[str], which: str, offset: int) -> Tail:
        """The records appended to the run's ``which`` history after byte ``offset`` (0: all).

        A run of this process that writes there is asked to write its queued records first
        (without waiting), so a live view sees them now rather than after the periodic flush."""
        run_dir = Path(run_dir)
        drain_open_run(run_dir)
        records, offset = read_new_records(_history_path(run_dir, which), offset)
        return Tail(records, offset)

    @staticmethod
    def media(history: History, per_key: int = 200) -> Media:
        """The history's images, histograms and tables by key, at most ``per_key`` steps each
        (spread evenly, the last one kept)."""
        media: Media = {"image": {}, "histogram": {}, "table": {}}
        for key, entries in history.media_entries().items():
            for step, value in _thin(entries, per_key):
                kind = value.get("_type")
                if kind in media:
                    media[kind].setdefault(key, []).append({"step": step, **value})  # type: ignore[literal-required]
        return media

    @staticmethod
    def table(path: str | os.PathLike[str], limit: int = 100) -> TableRows:
        """The first ``limit`` rows of the table file at ``path`` (a run's ``tables/...jsonl``;
        the caller checks that it lies inside the run's folder). ``ValueError`` for a file that
        is not a table."""
        table = Table.load(Path(path))
        return {"columns": table.columns, "rows": table.data[:limit], "nrows": len(table)}

    # artifacts -----------------------------------------------------------------------------------------
    def artifacts(self) -> ArtifactCatalog:
        """Every artifact with its versions and aliases, and the lineage graph."""
        return catalog(self.root)

    @staticmethod
    def artifact_refs(run_dir: str | os.PathLike[str]) -> ArtifactRefs:
        """The artifact versions one run logged and used."""
        return run_artifacts(run_dir)


def _thin(entries: list[T], n: int) -> list[T]:
    """At most ``n`` entries spread evenly, the last one always kept."""
    if len(entries) <= n:
        return entries
    step = len(entries) / n
    return [entries[int(i * step)] for i in range(n - 1)] + [entries[-1]]
