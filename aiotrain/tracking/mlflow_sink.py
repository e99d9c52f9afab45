"""MlflowSink: a run mirrored, live, to an MLflow tracking server; the local run stays the truth.

Runs on many machines should land in one place while they train. With ``tracking.mlflow_uri``
(TrainJob), ``Track.run(..., mlflow_uri=...)`` or the ``MLFLOW_TRACKING_URI`` environment
variable, a run mirrors its params (the flattened config), tags, metrics, system metrics, status
and logged artifacts to that server.

How it stays off the step's path and loses nothing:

- **The local files are the buffer.** ``Run.log`` feeds only the local writer, as always. A
  background thread (one per run, from ``aiotrain.runtime.spawn_daemon``) reads what the writer
  appended to metrics.jsonl and system.jsonl and sends it in batches (``log_batch``, at most
  1,000 values a request). A server that is down or slow delays only that thread: it retries with
  exponential backoff and jitter, and everything waits on disk meanwhile.
- **A cursor says what was sent.** ``mlflow.json`` in the run's folder (rewritten atomically after
  every batch) holds the MLflow run id, the byte offsets read so far, and per metric the last step
  sent. A process that restarts (a resumed run) continues from it into the same MLflow run.
- **Each metric step once.** A value whose step is not above the last step sent for its key is not
  sent again. A run resumed from a checkpoint re-logs the steps since that checkpoint with the same
  values (resume is exact), so the mirror gets each step once, as W&B does. A step sent twice
  after a crash between a send and the cursor's update carries the same key, step, timestamp and
  value, and MLflow stores such duplicates once. System samples are numbered by their line in
  system.jsonl.
- **At finish** the thread sends what is left, uploads the artifacts the run logged, and marks the
  MLflow run FINISHED, FAILED or KILLED. It waits at most ``finish_timeout`` seconds. If the server
  is still down then, the records stay on disk with the cursor, ``pending()`` says how much is
  left, and ``aiotrain runs sync RUN`` sends it later.

MLflow's own client does the HTTP work, and its retry settings (``MLFLOW_HTTP_REQUEST_MAX_RETRIES``,
``MLFLOW_HTTP_REQUEST_TIMEOUT``) apply to each request. mlflow is an optional extra
(``pip install 'aiotrain[mlflow]'``), imported on the sink's thread.
"""

from __future__ import annotations

import math
import random
import re
import threading
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import msgspec

from ..files import atomic_write
from ..runtime import spawn_daemon
from .series import read_new_records
from .store import flatten

__all__ = ["MlflowCursor", "MlflowSink", "mlflow_metrics", "sync_run"]

CURSOR = "mlflow.json"
_BATCH = 1000  # MLflow's log_batch limit on metrics per request
_PARAMS_BATCH = 100  # and on params
_NAME_RE = re.compile(r"[^\w./\- :]")
_NONFINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}
_STATUS = {"finished": "FINISHED", "crashed": "FAILED", "interrupted": "KILLED"}
_NOT_METRICS = frozenset({"step", "timestamp"})


class MlflowCursor(msgspec.Struct):
    """What of a run has reached the MLflow server (``mlflow.json`` in the run's folder)."""

    uri: str
    run_id: str | None = None
    params_sent: bool = False
    metrics_offset: int = 0
    system_offset: int = 0
    system_lines: int = 0
    last_step: dict[str, int] = msgspec.field(default_factory=dict)
    artifacts_sent: list[str] = msgspec.field(default_factory=list)
    status_sent: str | None = None

    @classmethod
    def load(cls, run_dir: Path, uri: str) -> MlflowCursor:
        """The run's cursor for ``uri``; a fresh one when there is none or it names another server."""
        try:
            cursor = msgspec.json.decode((run_dir / CURSOR).read_bytes(), type=cls)
        except (FileNotFoundError, msgspec.DecodeError):
            return cls(uri=uri)
        return cursor if cursor.uri == uri else cls(uri=uri)

    def save(self, run_dir: Path) -> None:
        atomic_write(run_dir / CURSOR, msgspec.json.encode(self))


def mlflow_name(key: str) -> str:
    """``key`` with the characters MLflow rejects in metric and param names replaced by ``_``."""
    return _NAME_RE.sub("_", key)[:250]


def mlflow_metrics(records: Iterable[Mapping[str, Any]], last_step: dict[str, int],
                   prefix: str = "", step_of: Any = None) -> list[tuple[str, float, int, int]]:
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
            name = prefix + mlflow_name(key)
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


class MlflowSink:
    """Mirrors one local run to the MLflow server at ``uri`` from a background thread."""

    POLL_S = 1.0
    MAX_BACKOFF_S = 30.0

    def __init__(self, facts: RunFacts, uri: str, *, finish_timeout: float = 30.0) -> None:
        self.facts = facts
        self.uri = uri
        self.finish_timeout = finish_timeout
        self.cursor = MlflowCursor.load(facts.run_dir, uri)
        self.error: BaseException | None = None  # the last failure, while retrying
        self._wake = threading.Event()
        self._status: str | None = None  # set by finish: send the rest, then mark the run
        self._done: Any = None
        self._client: Any = None

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
            return False
        return self.cursor.status_sent is not None

    def pending(self) -> str:
        """One line: what has not reached the server yet, or ''."""
        if self.cursor.status_sent is not None:
            return ""
        why = f" ({type(self.error).__name__}: {self.error})" if self.error else ""
        return (f"run {self.facts.run_id} is not fully mirrored to MLflow at {self.uri}{why}; "
                f"the local run is whole: 'aiotrain runs sync {self.facts.run_id}' sends the rest")

    # the thread ---------------------------------------------------------------------------------
    def _main(self) -> None:
        backoff = 0.5
        while True:
            finishing = self._status is not None
            try:
                self._sync(final=finishing)
                self.error = None
                backoff = 0.5
                if finishing:
                    return
                self._wake.wait(self.POLL_S)
            except Exception as exc:  # the server is down or refused: retry later, keep the data
                self.error = exc
                self._wake.wait(backoff * (0.5 + random.random()))
                backoff = min(backoff * 2, self.MAX_BACKOFF_S)
            self._wake.clear()

    def _sync(self, final: bool) -> None:
        if not (self.facts.run_dir / "metadata.sdn").exists() and not final:
            return  # nothing written yet
        client = self._ensure_run()
        self._send_metrics(client)
        if final:
            self._send_artifacts(client)
            status = _STATUS.get(self._status or "", "FAILED")
            client.set_terminated(self.cursor.run_id, status=status)
            self.cursor.status_sent = status
            self.cursor.save(self.facts.run_dir)

    def _ensure_run(self) -> Any:
        if self._client is None:
            from mlflow.tracking import MlflowClient

            self._client = MlflowClient(tracking_uri=self.uri)
        client = self._client
        if self.cursor.run_id is None:
            experiment = client.get_experiment_by_name(self.facts.project)
            experiment_id = (experiment.experiment_id if experiment is not None
                             else client.create_experiment(self.facts.project))
            run = client.create_run(experiment_id, start_time=int(self.facts.start_time * 1000),
                                    tags=self._tags(), run_name=self.facts.name)
            self.cursor.run_id = run.info.run_id
            self.cursor.save(self.facts.run_dir)
        if not self.cursor.params_sent:
            self._send_params(client)
        return client

    def _tags(self) -> dict[str, str]:
        tags = {"aiotrain.run_id": self.facts.run_id, "aiotrain.project": self.facts.project}
        if self.facts.host:
            tags["aiotrain.host"] = self.facts.host
        if self.facts.notes:
            tags["mlflow.note.content"] = self.facts.notes
        tags.update({mlflow_name(t): "true" for t in self.facts.tags})
        return tags

    def _send_params(self, client: Any) -> None:
        from mlflow.entities import Param

        params = [Param(mlflow_name(k), str(v)[:6000]) for k, v in flatten(self.facts.config).items()]
        for i in range(0, len(params), _PARAMS_BATCH):
            client.log_batch(self.cursor.run_id, params=params[i:i + _PARAMS_BATCH])
        self.cursor.params_sent = True
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
        values = mlflow_metrics(records, last, prefix="system/", step_of=lambda i, _r: first + i)
        self._send(client, values, last, system_offset=offset, system_lines=first + len(records))

    def _send(self, client: Any, values: list[tuple[str, float, int, int]],
              last_step: dict[str, int], **advance: int) -> None:
        """Send ``values`` in batches, then move the cursor past them (saved durably)."""
        from mlflow.entities import Metric

        metrics = [Metric(k, v, ts, step) for k, v, ts, step in values]
        for i in range(0, len(metrics), _BATCH):
            client.log_batch(self.cursor.run_id, metrics=metrics[i:i + _BATCH])
        if not metrics and all(getattr(self.cursor, k) == v for k, v in advance.items()):
            return
        self.cursor.last_step = last_step
        for field, value in advance.items():
            setattr(self.cursor, field, value)
        self.cursor.save(self.facts.run_dir)

    def _send_artifacts(self, client: Any) -> None:
        """Upload each version the run logged, as ``NAME/vN/...`` (once: the cursor lists them)."""
        from .artifacts import logged_artifacts

        f = self.facts
        for artifact in logged_artifacts(f.run_dir.parents[2], f.project, f.run_id):
            if artifact.ref in self.cursor.artifacts_sent:
                continue
            folder = artifact.download()
            client.log_artifacts(self.cursor.run_id, str(folder), artifact_path=artifact.ref.replace(":", "/"))
            self.cursor.artifacts_sent.append(artifact.ref)
            self.cursor.save(f.run_dir)


def sync_run(facts: RunFacts, uri: str, status: str, timeout: float = 300.0) -> str:
    """Send what a finished run has not yet sent to ``uri`` (``aiotrain runs sync``); returns
    '' when the mirror is complete, else the one-line reason."""
    sink = MlflowSink(facts, uri, finish_timeout=timeout)
    if sink.cursor.status_sent is not None:
        return ""
    deadline = time.monotonic() + timeout
    while True:
        sink._status = status
        try:
            sink._sync(final=True)
            return ""
        except Exception as exc:
            sink.error = exc
            if time.monotonic() > deadline:
                return sink.pending()
            time.sleep(1.0)
