"""Reading runs back from disk: listing, one run's record, its summary and its metric history.

Readers never trust the last line of metrics.jsonl: a crash (or a writer mid-append) may have
torn it, so an undecodable last line is skipped. An undecodable line anywhere else is real
corruption and raises ``ValueError`` naming the file and line.

**One summary, whoever reads it.** A run's summary is the last logged value of every key plus
``run.summary`` updates; ``finish`` writes it to summary.sdn after the last line of
metrics.jsonl. So summary.sdn *is* the summary when it is at least as new as metrics.jsonl
(``summary_is_final``). Otherwise the run did not finish since it last logged (it is running,
or its process was killed, or it was resumed): its summary is summary.sdn (when a finished
session left one) updated by every record of metrics.jsonl in order (``fold_summary``), which
is what ``finish`` would have written except ``run.summary`` updates made since the last
finish, which lived only in the killed process. ``RunRecord.summary``, the runs index (and so
``runs ls`` and the dashboard's table), the dashboard's run page, ``runs show`` and the
exporters all use this rule.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypedDict

import msgspec

from ..owner import process_alive
from .store import decode_nonfinite, get_dir, read_sdn

__all__ = ["RunMetadata", "RunRecord", "decode_tree", "find_run", "fold_summary", "iter_history", "list_runs", "load_run",
           "process_alive", "read_history", "read_stored_summary", "read_summary", "summary_is_final"]

_RESERVED = ("step", "timestamp")

_decoder = msgspec.json.Decoder()


class RunMetadata(TypedDict, total=False):
    """A run's metadata.sdn (``Run`` writes it; older runs may lack keys). Config and system
    information are the user's and the machine's: their values are arbitrary."""

    id: str
    name: str | None
    project: str
    tags: list[str]
    notes: str
    status: str
    created_at: float
    finished_at: float | None
    error: str | None
    pid: int
    owner: dict[str, object]
    config: dict[str, Any]
    system: dict[str, Any]


def iter_history(path: Path) -> Iterator[dict[str, Any]]:
    """Yield the records of a metrics.jsonl file; "nan" / "inf" / "-inf" values come back as floats."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return
    lines = data.split(b"\n")
    last = len(lines) - 1
    while last >= 0 and not lines[last].strip():
        last -= 1
    for i, line in enumerate(lines[: last + 1]):
        if not line.strip():
            continue
        try:
            record = _decoder.decode(line)
        except msgspec.DecodeError:
            if i == last:  # torn by a crash mid-append
                return
            raise ValueError(f"{path}:{i + 1}: corrupt metrics line") from None
        yield {k: decode_nonfinite(v) for k, v in record.items()}


def read_history(path: Path) -> list[dict[str, Any]]:
    """All records of a metrics.jsonl file (see ``iter_history``)."""
    return list(iter_history(path))


def decode_tree(value: object) -> Any:
    """A metadata or summary tree as stored, with "nan" / "inf" / "-inf" values read back as floats."""
    if isinstance(value, dict):
        return {k: decode_tree(v) for k, v in value.items()}
    return decode_nonfinite(value)


def summary_is_final(summary_mtime_ns: int | None, metrics_mtime_ns: int | None) -> bool:
    """Whether summary.sdn (modified at ``summary_mtime_ns``, None: absent) is the run's summary:
    it exists and nothing was appended to metrics.jsonl (modified at ``metrics_mtime_ns``) after
    it was written. Both times come from the file system holding the run (one clock, also on NFS)."""
    return summary_mtime_ns is not None and (metrics_mtime_ns is None or summary_mtime_ns >= metrics_mtime_ns)


def fold_summary(base: Mapping[str, object], records: Iterable[Mapping[str, object]]) -> dict[str, Any]:
    """``base`` updated by each record in order (``step`` and ``timestamp`` left out, stored
    non-finite values read back as floats): the summary a run holds after logging ``records``,
    as ``Run.log`` builds it."""
    out: dict[str, Any] = dict(base)
    for record in records:
        out.update(record)
    for key, value in out.items():
        if value.__class__ is str:  # "nan" / "inf" / "-inf" as stored: read back as floats
            out[key] = decode_nonfinite(value)
    for key in _RESERVED:
        out.pop(key, None)
    return out


def _mtime_ns(path: Path) -> int | None:
    try:
        return os.stat(path).st_mtime_ns
    except FileNotFoundError:
        return None


def read_stored_summary(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """summary.sdn as stored (FileNotFoundError when the run has none); see ``read_summary``."""
    summary: dict[str, Any] = decode_tree(read_sdn(Path(run_dir) / "summary.sdn"))
    return summary


def read_summary(run_dir: str | os.PathLike[str]) -> tuple[dict[str, Any], bool]:
    """The run's summary by the one rule (module doc), and whether summary.sdn held it whole
    (False: derived from metrics.jsonl because the run did not finish after it last logged)."""
    path = Path(run_dir)
    metrics_path = path / "metrics.jsonl"
    summary_path = path / "summary.sdn"
    metrics_mtime = _mtime_ns(metrics_path)  # first: a line appended after this makes it newer
    summary_mtime = _mtime_ns(summary_path)
    try:
        stored = read_stored_summary(path) if summary_mtime is not None else {}
    except FileNotFoundError:  # removed since the stat (a run folder being deleted)
        stored, summary_mtime = {}, None
    if summary_is_final(summary_mtime, metrics_mtime):
        return stored, True
    return fold_summary(stored, iter_history(metrics_path)), False


class RunRecord:
    """A run as stored on disk: metadata, summary and (on demand) its metric history.

    ``summary`` follows the one rule of this module (summary.sdn, or derived from the log for
    a run that did not finish); it is read on first use, so listing runs costs no history read.
    ``summary_final`` says which: True when summary.sdn held it whole."""

    def __init__(self, dir: Path, metadata: RunMetadata, summary: dict[str, Any] | None = None,
                 summary_final: bool = True) -> None:
        self.dir = dir
        self.metadata = metadata
        self._summary = summary
        self._final = summary_final

    @property
    def summary(self) -> dict[str, Any]:
        """The last value of every logged key plus ``run.summary`` updates (see the module doc)."""
        if self._summary is None:
            self._summary, self._final = read_summary(self.dir)
        return self._summary

    @property
    def summary_final(self) -> bool:
        """True when summary.sdn holds the summary; False when it was derived from metrics.jsonl."""
        self.summary  # noqa: B018 - reads it when not read yet
        return self._final

    def set_summary(self, summary: dict[str, Any], final: bool) -> None:
        """Give the record a summary its reader already has (the runs index folds the log
        incrementally), with ``final`` as in ``summary_final``."""
        self._summary, self._final = summary, final

    def __repr__(self) -> str:
        return f"RunRecord(dir={str(self.dir)!r}, id={self.metadata.get('id')!r}, status={self.status!r})"

    @property
    def id(self) -> str:
        return self.metadata["id"]

    @property
    def name(self) -> str:
        return self.metadata.get("name") or self.id

    @property
    def project(self) -> str:
        return self.metadata.get("project", self.dir.parent.name)

    @property
    def config(self) -> dict[str, Any]:
        return self.metadata.get("config") or {}

    @property
    def tags(self) -> list[str]:
        return list(self.metadata.get("tags") or [])

    @property
    def host(self) -> str | None:
        """The machine the run was written on (``metadata.system.hostname``; None for a run
        that did not record one)."""
        host = (self.metadata.get("system") or {}).get("hostname")
        return host if isinstance(host, str) else None

    @property
    def status(self) -> str:
        """finished, crashed, interrupted, pruned or running; a "running" run whose process is
        gone reads as crashed (the runs index lists a run whose files are corrupt as
        "unreadable", with the error)."""
        status = self.metadata.get("status", "running")
        if status == "running" and not process_alive(self.metadata):
            return "crashed"
        return status

    @property
    def created_at(self) -> float:
        return float(self.metadata.get("created_at") or 0.0)

    def history(self, keys: list[str] | None = None) -> list[dict[str, Any]]:
        """The logged records in order, each with ``step`` (and ``timestamp``); with ``keys``,
        only records holding one of them, reduced to step, timestamp and those keys."""
        records = read_history(self.dir / "metrics.jsonl")
        if keys is None:
            return records
        wanted = set(keys)
        return [{k: v for k, v in r.items() if k in wanted or k in ("step", "timestamp")}
                for r in records if wanted.intersection(r)]


def load_run(run_dir: str | os.PathLike[str]) -> RunRecord:
    """The run stored in ``run_dir`` (FileNotFoundError when it holds no metadata.sdn)."""
    path = Path(run_dir)
    meta_path = path / "metadata.sdn"
    if not meta_path.is_file():
        raise FileNotFoundError(f"{path} is not a run folder (no metadata.sdn)")
    return RunRecord(path, decode_tree(read_sdn(meta_path)))


def list_runs(project: str | None = None, root: str | os.PathLike[str] | None = None) -> list[RunRecord]:
    """Every run under the tracking root (one project, or all), oldest first."""
    base = Path(root) if root is not None else get_dir()
    projects = [base / "runs" / project] if project is not None else sorted((base / "runs").glob("*"))
    records = []
    for folder in projects:
        if not folder.is_dir():
            continue
        for run_dir in sorted(folder.iterdir()):
            if (run_dir / "metadata.sdn").is_file():
                records.append(load_run(run_dir))
    records.sort(key=lambda r: (r.created_at, r.id))
    return records


def find_run(ref: str, root: str | os.PathLike[str] | None = None) -> RunRecord:
    """A run by folder path, id, ``project/id`` or name.

    Raises ``LookupError`` with a one-line message when nothing matches, or when an id or a name
    matches several runs (the message lists the candidates).
    """
    path = Path(ref)
    if (path / "metadata.sdn").is_file():
        return load_run(path)
    base = Path(root) if root is not None else get_dir()
    project, _, key = ref.rpartition("/")
    runs = list_runs(project or None, base)
    by_id = [r for r in runs if r.id == key]
    if len(by_id) == 1:
        return by_id[0]
    if len(by_id) > 1:
        raise LookupError(f"run id {key!r} exists in several projects; write PROJECT/{key}")
    by_name = [r for r in runs if r.name == key]
    if len(by_name) == 1:
        return by_name[0]
    if by_name:
        candidates = ", ".join(f"{r.project}/{r.id}" for r in by_name)
        raise LookupError(f"run name {key!r} is ambiguous ({len(by_name)} runs): {candidates}; "
                          "name one by PROJECT/ID")
    raise LookupError(f"no run {ref!r} under {base}")
