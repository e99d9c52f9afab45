"""Export stored runs to TensorBoard event files and to an MLflow tracking store.

TensorBoard (``aiotrain runs export RUN... --tensorboard DIR``): one folder per run under DIR
(``{project}-{name}-{id}``), so TensorBoard shows each as a run of its own. Scalars keep their
names, steps and wall times; histograms are written with their stored bucket edges and counts
(``add_histogram_raw``); images are read back from their PNG files; system metrics
(system.jsonl) go in as scalars too. The config goes in twice: as a text summary named
``config``, and as hparams (flattened, dotted keys) with the run's scalar summary metrics as the
HParams view's metrics, so that view lists and compares the runs.

MLflow (``--mlflow URI``): through MLflow's own client, one MLflow run per aiotrain run, in the
experiment named after the project: params (flattened config), metrics with their steps and
timestamps (system metrics included), tags (``aiotrain.run_id``, ``aiotrain.project``, the run's
tags, notes as ``mlflow.note.content``), media/ and tables/ as artifacts, and the status and
times. A run already exported to that store (same ``aiotrain.run_id`` tag) is skipped, so the
export can be repeated.

Both read the run through :mod:`aiotrain.tracking.read`, so the summary metrics they export are
the ones ``runs show`` and the dashboard show (a killed run's are derived from its log).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .read import RunRecord, flatten, scan_history

if TYPE_CHECKING:
    from mlflow.entities import Metric
    from torch.utils.tensorboard import SummaryWriter

__all__ = ["export_mlflow", "export_tensorboard", "tensorboard_folder"]

_MLFLOW_STATUS = {"finished": "FINISHED", "crashed": "FAILED", "interrupted": "KILLED"}
_PARAM_BATCH, _METRIC_BATCH = 100, 1000  # MLflow's log_batch limits


def _histories(record: RunRecord) -> Iterator[dict[str, Any]]:
    """The run's records, then its system metrics records."""
    yield from scan_history(record.dir, "metrics")
    yield from scan_history(record.dir, "system")


def _hparam(value: object) -> bool | int | float | str:
    if isinstance(value, bool | int | float | str):
        return value
    return json.dumps(value, default=str)


def tensorboard_folder(record: RunRecord) -> str:
    """The folder name of ``record`` under an export directory."""
    from .media import safe_filename

    return safe_filename(f"{record.project}-{record.name}-{record.id}")


def export_tensorboard(record: RunRecord, out_dir: Path) -> dict[str, int]:
    """Write ``record``'s history and hparams under ``out_dir``; returns how many values of each kind."""
    from torch.utils.tensorboard import SummaryWriter
    from torch.utils.tensorboard.summary import hparams

    counts = {"scalars": 0, "histograms": 0, "images": 0}
    written: dict[str, int] = {}
    writer = SummaryWriter(log_dir=str(out_dir))
    try:
        writer.add_text("config", "```\n" + json.dumps(record.config, indent=2, default=str) + "\n```", 0)
        last_step = 0
        for entry in _histories(record):
            step, wall = int(entry["step"]), float(entry.get("timestamp") or 0.0) or None
            last_step = max(last_step, step)
            for key, value in entry.items():
                if key in ("step", "timestamp"):
                    continue
                kind = _write(writer, record.dir, key, value, step, wall)
                if kind:
                    counts[kind] += 1
                    written[key] = step
        metrics = {k: float(v) for k, v in record.summary.items()
                   if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)}
        for key, value in metrics.items():  # summary-only values (e.g. set by run.summary.update)
            if key not in written:
                writer.add_scalar(key, value, last_step)
                counts["scalars"] += 1
        hp = {k: _hparam(v) for k, v in flatten(record.config).items()}
        file_writer = writer._get_file_writer()
        for summary in hparams(hp, metrics):
            file_writer.add_summary(summary)
    finally:
        writer.close()
    return counts


def _write(writer: SummaryWriter, run_dir: Path, key: str, value: object, step: int,
           wall: float | None) -> str | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float):
        writer.add_scalar(key, value, step, walltime=wall)
        return "scalars"
    if not isinstance(value, dict):
        return None
    kind = value.get("_type")
    if kind == "histogram" and value.get("num"):
        edges = value["bins"]
        writer.add_histogram_raw(key, min=value["min"], max=value["max"], num=value["num"],
                                 sum=value["sum"], sum_squares=value["sum_squares"],
                                 bucket_limits=edges[1:], bucket_counts=value["counts"],
                                 global_step=step, walltime=wall)
        return "histograms"
    if kind == "image":
        path = run_dir / value["path"]
        if path.is_file():
            writer.add_image(key, _read_png(path), step, walltime=wall, dataformats="HWC")
            return "images"
    return None


def _read_png(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"))


def export_mlflow(record: RunRecord, uri: str) -> dict[str, Any]:
    """Write ``record`` into the MLflow tracking store at ``uri``; returns the MLflow run id and
    counts (``skipped`` is True when this run was exported there before)."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param, RunTag
    from mlflow.exceptions import MlflowException

    client = MlflowClient(tracking_uri=uri)
    try:
        experiment = client.get_experiment_by_name(record.project)
        exp_id = experiment.experiment_id if experiment else client.create_experiment(record.project)
        found = client.search_runs([exp_id], filter_string=f"tags.`aiotrain.run_id` = '{record.id}'",
                                   max_results=1)
        if found:
            return {"run_id": found[0].info.run_id, "skipped": True, "params": 0, "metrics": 0, "artifacts": 0}
        tags = {"aiotrain.run_id": record.id, "aiotrain.project": record.project,
                "aiotrain.tags": ",".join(record.tags), "mlflow.note.content": record.metadata.get("notes") or ""}
        tags.update({f"tag.{t}": "true" for t in record.tags})
        run = client.create_run(exp_id, start_time=int(record.created_at * 1000), tags=tags, run_name=record.name)
        run_id = run.info.run_id
        params = [Param(k, str(_hparam(v))[:6000]) for k, v in flatten(record.config).items()]
        for i in range(0, len(params), _PARAM_BATCH):
            client.log_batch(run_id, params=params[i:i + _PARAM_BATCH])
        metrics: list[Metric] = []
        count = 0
        for entry in _histories(record):
            step, ms = int(entry["step"]), int(float(entry.get("timestamp") or 0.0) * 1000)
            for key, value in entry.items():
                if key in ("step", "timestamp") or isinstance(value, bool) or not isinstance(value, int | float):
                    continue
                metrics.append(Metric(key, float(value), ms, step))
                if len(metrics) == _METRIC_BATCH:
                    client.log_batch(run_id, metrics=metrics)
                    count += len(metrics)
                    metrics = []
        if metrics:
            client.log_batch(run_id, metrics=metrics)
            count += len(metrics)
        artifacts = 0
        for sub in ("media", "tables"):
            folder = record.dir / sub
            files = [p for p in folder.rglob("*") if p.is_file()] if folder.is_dir() else []
            if files:
                client.log_artifacts(run_id, str(folder), artifact_path=sub)
                artifacts += len(files)
        status = _MLFLOW_STATUS.get(record.status)
        if status is not None:
            end = record.metadata.get("finished_at")
            client.set_terminated(run_id, status, end_time=int(end * 1000) if end else None)
        client.log_batch(run_id, tags=[RunTag("aiotrain.status", record.status)])
    except MlflowException as exc:
        raise ValueError(f"mlflow store {uri}: {exc.message.splitlines()[0]}") from None
    return {"run_id": run_id, "skipped": False, "params": len(params), "metrics": count, "artifacts": artifacts}
