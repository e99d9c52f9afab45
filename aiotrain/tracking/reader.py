"""Reading runs back from disk: listing, one run's record and its metric history.

Readers never trust the last line of metrics.jsonl: a crash (or a writer mid-append) may have
torn it, so an undecodable last line is skipped. An undecodable line anywhere else is real
corruption and raises ``ValueError`` naming the file and line.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from ..owner import process_alive
from .store import decode_nonfinite, get_dir, read_sdn

__all__ = ["RunRecord", "decode_tree", "find_run", "iter_history", "list_runs", "load_run", "process_alive", "read_history"]

_decoder = msgspec.json.Decoder()


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


def decode_tree(value: Any) -> Any:
    """A metadata or summary tree as stored, with "nan" / "inf" / "-inf" values read back as floats."""
    if isinstance(value, dict):
        return {k: decode_tree(v) for k, v in value.items()}
    return decode_nonfinite(value)


@dataclass
class RunRecord:
    """A run as stored on disk: metadata, summary and (on demand) its metric history."""

    dir: Path
    metadata: dict[str, Any]
    summary: dict[str, Any] = field(default_factory=dict)

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
    def status(self) -> str:
        """finished, crashed or running; a "running" run whose process is gone reads as crashed."""
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
    metadata = decode_tree(read_sdn(meta_path))
    summary_path = path / "summary.sdn"
    summary = decode_tree(read_sdn(summary_path)) if summary_path.is_file() else {}
    return RunRecord(dir=path, metadata=metadata, summary=summary)


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
