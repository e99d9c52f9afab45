"""MlflowSink: a run mirrored to an MLflow tracking server, live; the local run stays the truth.

Runs on many machines should land in one place while they train. With ``tracking.mlflow_uri``
(TrainJob), ``Track.run(..., mlflow_uri=...)`` or the ``MLFLOW_TRACKING_URI`` environment
variable, a run mirrors its params (the flattened config), tags, metrics, system metrics, status,
media, tables and logged artifacts to that server as it runs. ``aiotrain runs export --mlflow``
and ``aiotrain runs sync`` use the same code to send a stored run once.

How it stays off the step's path and loses nothing:

- **The local files are the buffer.** ``Run.log`` feeds only the local writer, as always. A
  background thread (one per run, from ``aiotrain.runtime.spawn_daemon``) reads what the writer
  appended to metrics.jsonl and system.jsonl, and sends it in batches (``log_batch``, at most
  1,000 values a request). A server that is down or slow delays only that thread. The thread
  retries with exponential backoff and jitter, and everything waits on disk meanwhile.
- **A cursor says what was sent.** ``mlflow-<hash of the URI>.json`` in the run's folder is
  rewritten atomically after every batch. It holds the MLflow run id, the byte offsets read so
  far, and, per metric, the last step sent. A process that restarts (a resumed run) continues
  from it into the same MLflow run. Without a cursor, the MLflow run is found by its
  ``aiotrain.run_id`` tag, so a lost cursor does not create a second one.
- **Each metric step once.** A value whose step is not above the last step sent for its key is not
  sent again. A run resumed from a checkpoint logs again the steps since that checkpoint, with the
  same values because resume is exact, so the mirror gets each step once, as W&B does. A crash
  between a send and the cursor's update sends the same key, step, timestamp and value again, and
  MLflow stores such a duplicate once. System samples are numbered by their line in
  system.jsonl.
- **At finish** the thread sends what is left, uploads media/, tables/ and the artifact versions the
  run logged, and marks the MLflow run FINISHED, FAILED or KILLED. ``Run.finish`` waits for this
  for at most ``finish_timeout`` seconds. If the server is still down then, the records stay on
  disk with the cursor, one line on stderr says so, and ``aiotrain runs sync RUN`` sends them
  later.

MLflow's own client does the HTTP work, and its retry settings (``MLFLOW_HTTP_REQUEST_MAX_RETRIES``,
``MLFLOW_HTTP_REQUEST_TIMEOUT``) apply to each request. It also prints the run's URL when the run
ends (``MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT=true`` turns that off). mlflow is an optional extra
(``pip install 'aiotrain[mlflow]'``), imported on the sink's thread.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import random
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import msgspec

from ..files import atomic_write
from ..runtime import spawn_daemon
from .series import read_new_records
from .store import flatten

__all__ = ["MirrorResult", "MlflowCursor", "MlflowSink", "RunFacts", "mlflow_metrics", "pending_uris", "sync_run"]

_BATCH = 1000  # MLflow's log_batch limit on metrics per request
_PARAMS_BATCH = 100  # and on params
_NAME_RE = re.compile(r"[^\w./\- :]")
_NONFINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}
_STATUS = {"finished": "FINISHED", "crashed": "FAILED", "interrupted": "KILLED"}
_NOT_METRICS = frozenset({"step", "timestamp"})
_FOLDERS = ("media", "tables")  # uploaded as they are, under the same names

Value = tuple[str, float, int, int]  # key, value, timestamp in ms, step


class RunFacts(msgspec.Struct):
    """What the sink needs to know of the local run to create and finish its MLflow twin."""

    run_dir: Path
    project: str
    name: str
    run_id: str
    config: dict[str, Any]
    tags: list[str]
    notes: str
    start_time: float
    host: str = ""
    end_time: float | None = None

    @classmethod
    def of_record(cls, record: Any) -> RunFacts:
        """The facts of a stored run (a ``tracking.read.RunRecord``)."""
        meta = record.metadata
        return cls(run_dir=record.dir, project=record.project, name=record.name, run_id=record.id,
                   config=record.config, tags=list(record.tags), notes=meta.get("notes") or "",
                   start_time=record.created_at, host=(meta.get("system") or {}).get("hostname", ""),
                   end_time=meta.get("finished_at"))


class MlflowCursor(msgspec.Struct):
    """What of a run has reached one MLflow server."""

    uri: str
    run_id: str | None = None
    params_sent: int = -1  # how many params, once sent
    metrics_offset: int = 0
    system_offset: int = 0
    system_lines: int = 0
    last_step: dict[str, int] = msgspec.field(default_factory=dict)
    metrics_sent: int = 0
    uploaded: list[str] = msgspec.field(default_factory=list)  # folders and artifact refs
    files_sent: int = 0
    status_sent: str | None = None

    @staticmethod
    def path(run_dir: Path, uri: str) -> Path:
        """The cursor file of ``uri`` in ``run_dir`` (one per server)."""
        return run_dir / f"mlflow-{hashlib.sha256(uri.encode()).hexdigest()[:16]}.json"

    @classmethod
    def load(cls, run_dir: Path, uri: str) -> MlflowCursor:
        """The run's cursor for ``uri``; a fresh one when there is none."""
        try:
            cursor = msgspec.json.decode(cls.path(run_dir, uri).read_bytes(), type=cls)
        except (FileNotFoundError, msgspec.DecodeError):
            return cls(uri=uri)
        return cursor if cursor.uri == uri else cls(uri=uri)

    def save(self, run_dir: Path) -> None:
        atomic_write(self.path(run_dir, self.uri), msgspec.json.encode(self))


class MirrorResult(msgspec.Struct):
    """What a one-shot sync did: the MLflow run, whether it was complete already, counts."""

    run_id: str
    skipped: bool
    params: int
    metrics: int
    artifacts: int


def mlflow_name(key: str) -> str:
    """``key`` with the characters MLflow rejects in metric and param names replaced by ``_``."""
    return _NAME_RE.sub("_", key)[:250]


def mlflow_metrics(records: Iterable[Mapping[str, Any]], last_step: dict[str, int],
                   step_of: Callable[[int, Mapping[str, Any]], Any] | None = None) -> list[Value]:
    """``(key, value, timestamp_ms, step)`` for every scalar in ``records`` whose step is above
    the last one sent for its key; ``last_step`` is advanced as values are taken. ``step_of(i,
    record)`` overrides a record's step (system samples are numbered by line)."""
    out = []
    for i, record in enumerate(records):
        step = record.get("step") if step_of is None else step_of(i, record)
        stamp = record.get("timestamp")
        if not isinstance(step, int) or not isinstance(stamp, (int, float)):
            continue
        for key, value in record.items():
            number = _scalar(value) if key not in _NOT_METRICS else None
            if number is None:
                continue
            name = mlflow_name(key)
            if step <= last_step.get(name, -1):
                continue
            last_step[name] = step
            out.append((name, number, int(stamp * 1000), step))
    return out


def _scalar(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        return _NONFINITE.get(value)
    return None


def _param(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text[:6000]


class MlflowSink:
    """Mirrors one local run to the MLflow server at ``uri``; ``start`` runs it on a thread."""

    POLL_S = 1.0
    MAX_BACKOFF_S = 30.0

    def __init__(self, facts: RunFacts, uri: str, *, finish_timeout: float = 30.0) -> None:
        self.facts = facts
        self.uri = uri
        self.finish_timeout = finish_timeout
        self.cursor = MlflowCursor.load(facts.run_dir, uri)
        self._clamp_offsets()
        self.error: BaseException | None = None  # the last failure, while retrying
        self.skipped = False  # found complete on the server already (a repeated export)
        self._wake = threading.Event()
        self._status: str | None = None  # set by finish: send the rest, then mark the run
        self._given_up = False  # finish timed out: the thread stops after its current attempt
        self._done: Any = None
        self._client: Any = None

    def _clamp_offsets(self) -> None:
        """A resumed run may have cut its history back to its checkpoint (``Run(rewind=N)``,
        done before the mirror starts): reading goes on from the cut. What it re-logs from there
        has the steps already sent, and is not sent again."""
        c = self.cursor
        for field, name in (("metrics_offset", "metrics.jsonl"), ("system_offset", "system.jsonl")):
            try:
                size = (self.facts.run_dir / name).stat().st_size
            except FileNotFoundError:
                size = 0
            if getattr(c, field) > size:
                setattr(c, field, size)

    # the owner's side -------------------------------------------------------------------------
    def start(self) -> None:
        """Start mirroring (the thread idles until the run's files exist)."""
        self._done = spawn_daemon(self._main, name="aiotrain-mlflow")

    def finish(self, status: str) -> bool:
        """Send the rest, mark the MLflow run ``status``; wait at most ``finish_timeout`` s.
        True when everything reached the server."""
        self._status = status
        self._wake.set()
        if self._done is None:
            return False
        try:
            self._done.result(timeout=self.finish_timeout)
        except TimeoutError:
            self._given_up = True
            self._wake.set()
            return False
        return self.cursor.status_sent is not None

    def pending(self) -> str:
        """One line: what has not reached the server yet, or ''."""
        if self.cursor.status_sent is not None:
            return ""
        why = f" ({type(self.error).__name__}: {str(self.error).splitlines()[0]})" if self.error else ""
        return (f"run {self.facts.run_id} is not fully mirrored to MLflow at {self.uri}{why}; "
                f"the local run is whole: 'aiotrain runs sync {self.facts.run_id}' sends the rest")

    # the thread ---------------------------------------------------------------------------------
    def _main(self) -> None:
        backoff = 0.5
        while True:
            finishing = self._status is not None
            try:
                self.sync(final=finishing)
                self.error = None
                backoff = 0.5
                if finishing:
                    return
                self._wake.wait(self.POLL_S)
            except Exception as exc:  # the server is down or refused: retry later, keep the data
                self.error = exc
                if self._given_up:
                    return
                self._wake.wait(backoff * (0.5 + random.random()))
                backoff = min(backoff * 2, self.MAX_BACKOFF_S)
            self._wake.clear()

    def sync(self, final: bool) -> None:
        """Send what is new; with ``final``, also the files and the status (``self._status``)."""
        if self.cursor.status_sent is not None:
            return
        if not (self.facts.run_dir / "metadata.sdn").exists() and not final:
            return  # nothing written yet
        if not MlflowCursor.path(self.facts.run_dir, self.uri).exists():
            self.cursor.save(self.facts.run_dir)  # the folder names its server before any send
        client = self._ensure_run()
        if self.skipped:
            return
        self._send_metrics(client)
        if final:
            self._upload(client)
            self._terminate(client, self._status or "crashed")

    def _ensure_run(self) -> Any:
        if self._client is None:
            from mlflow.tracking import MlflowClient

            self._client = MlflowClient(tracking_uri=self.uri)
        client = self._client
        if self.cursor.run_id is None:
            self.cursor.run_id = self._find_or_create(client)
            self.cursor.save(self.facts.run_dir)
        if self.cursor.params_sent < 0 and not self.skipped:
            self._send_params(client)
        return client

    def _find_or_create(self, client: Any) -> str:
        """The MLflow run tagged with this run's id (a repeated export or a lost cursor), else a
        new one in the experiment named after the project."""
        f = self.facts
        experiment = client.get_experiment_by_name(f.project)
        experiment_id = experiment.experiment_id if experiment is not None else client.create_experiment(f.project)
        found = client.search_runs([experiment_id], filter_string=f"tags.`aiotrain.run_id` = '{f.run_id}'",
                                   max_results=1)
        if found:
            self.skipped = found[0].info.status in _STATUS.values() and found[0].data.tags.get(
                "aiotrain.status") is not None
            return str(found[0].info.run_id)
        run = client.create_run(experiment_id, start_time=int(f.start_time * 1000), tags=self._tags(),
                                run_name=f.name)
        return str(run.info.run_id)

    def _tags(self) -> dict[str, str]:
        f = self.facts
        tags = {"aiotrain.run_id": f.run_id, "aiotrain.project": f.project,
                "aiotrain.tags": ",".join(f.tags), "mlflow.note.content": f.notes}
        if f.host:
            tags["aiotrain.host"] = f.host
        tags.update({f"tag.{mlflow_name(t)}": "true" for t in f.tags})
        return tags

    def _send_params(self, client: Any) -> None:
        from mlflow.entities import Param

        params = [Param(mlflow_name(k), _param(v)) for k, v in flatten(self.facts.config).items()]
        for i in range(0, len(params), _PARAMS_BATCH):
            client.log_batch(self.cursor.run_id, params=params[i:i + _PARAMS_BATCH])
        self.cursor.params_sent = len(params)
        self.cursor.save(self.facts.run_dir)

    def _send_metrics(self, client: Any) -> None:
        """Send what was appended to metrics.jsonl and system.jsonl since the cursor. The cursor
        (offsets and last steps) moves only once a batch is on the server."""
        c = self.cursor
        records, offset = read_new_records(self.facts.run_dir / "metrics.jsonl", c.metrics_offset)
        last = dict(c.last_step)
        self._send(client, mlflow_metrics(records, last), last, metrics_offset=offset)
        records, offset = read_new_records(self.facts.run_dir / "system.jsonl", c.system_offset)
        first, last = c.system_lines, dict(c.last_step)
        values = mlflow_metrics(records, last, step_of=lambda i, _r: first + i)
        self._send(client, values, last, system_offset=offset, system_lines=first + len(records))

    def _send(self, client: Any, values: list[Value], last_step: dict[str, int], **advance: int) -> None:
        """Send ``values`` in batches, then move the cursor past them (saved durably)."""
        from mlflow.entities import Metric

        metrics = [Metric(k, v, ts, step) for k, v, ts, step in values]
        for i in range(0, len(metrics), _BATCH):
            client.log_batch(self.cursor.run_id, metrics=metrics[i:i + _BATCH])
        if not metrics and all(getattr(self.cursor, k) == v for k, v in advance.items()):
            return
        self.cursor.last_step = last_step
        self.cursor.metrics_sent += len(metrics)
        for field, value in advance.items():
            setattr(self.cursor, field, value)
        self.cursor.save(self.facts.run_dir)

    def _upload(self, client: Any) -> None:
        """media/ and tables/ as they are, and each artifact version the run logged as
        ``NAME/vN/...``; each once (the cursor lists what was uploaded)."""
        from .lineage import logged_artifacts

        f = self.facts
        uploads: list[tuple[str, Callable[[], Path]]] = [
            (sub, functools.partial(Path, f.run_dir / sub)) for sub in _FOLDERS if (f.run_dir / sub).is_dir()]
        uploads += [(a.ref, a.download) for a in logged_artifacts(f.run_dir.parents[2], f.project, f.run_id)]
        for name, folder in uploads:
            if name in self.cursor.uploaded:
                continue
            path = folder()
            client.log_artifacts(self.cursor.run_id, str(path), artifact_path=name.replace(":", "/"))
            self.cursor.files_sent += sum(1 for p in path.rglob("*") if p.is_file())
            self.cursor.uploaded.append(name)
            self.cursor.save(f.run_dir)

    def _terminate(self, client: Any, status: str) -> None:
        from mlflow.entities import RunTag

        client.log_batch(self.cursor.run_id, tags=[RunTag("aiotrain.status", status)])
        end = self.facts.end_time
        client.set_terminated(self.cursor.run_id, status=_STATUS.get(status, "FAILED"),
                              end_time=int(end * 1000) if end else None)
        self.cursor.status_sent = _STATUS.get(status, "FAILED")
        self.cursor.save(self.facts.run_dir)


def pending_uris(run_dir: Path) -> list[str]:
    """The MLflow servers ``run_dir`` mirrors to that have not received all of it."""
    out = []
    for path in sorted(run_dir.glob("mlflow-*.json")):
        try:
            cursor = msgspec.json.decode(path.read_bytes(), type=MlflowCursor)
        except msgspec.DecodeError:
            continue
        if cursor.status_sent is None:
            out.append(cursor.uri)
    return out


def sync_run(facts: RunFacts, uri: str, status: str, timeout: float = 0.0) -> MirrorResult:
    """Send what a stored run has not yet sent to ``uri`` and mark its status (``aiotrain runs
    sync`` and ``runs export --mlflow``). Retries for up to ``timeout`` seconds, then raises the
    last error."""
    sink = MlflowSink(facts, uri)
    sink._status = status
    sink.skipped = sink.cursor.status_sent is not None
    deadline = time.monotonic() + timeout
    while True:
        try:
            sink.sync(final=True)
            break
        except Exception:
            if time.monotonic() >= deadline:
                raise
            time.sleep(1.0)
    c = sink.cursor
    return MirrorResult(run_id=c.run_id or "", skipped=sink.skipped, params=max(c.params_sent, 0),
                        metrics=c.metrics_sent, artifacts=c.files_sent)
