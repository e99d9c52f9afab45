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

import msgspec
import numpy as np

from .read import RunRecord, flatten, scan_history

if TYPE_CHECKING:
    from torch.utils.tensorboard import SummaryWriter

__all__ = ["export_mlflow", "export_tensorboard", "tensorboard_folder"]



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
    """Write ``record`` into the MLflow tracking store at ``uri`` (through the same code as the
    live mirror, ``mlflow_sink.py``); returns the MLflow run id and counts (``skipped`` is True
    when this run was exported there before)."""
    from mlflow.exceptions import MlflowException

    from .mlflow_sink import RunFacts, sync_run

    try:
        result = sync_run(RunFacts.of_record(record), uri, record.status)
    except MlflowException as exc:
        raise ValueError(f"mlflow store {uri}: {exc.message.splitlines()[0]}") from None
    return msgspec.structs.asdict(result)
