"""Export a stored run to TensorBoard event files (``aiotrain runs export RUN --tensorboard DIR``).

Scalars keep their names, steps and wall times; histograms are written with their stored
bucket edges and counts (``add_histogram_raw``); images are read back from their PNG files.
The config goes in as a text summary named ``config``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["export_tensorboard"]


def export_tensorboard(record: Any, out_dir: Path) -> dict[str, int]:
    """Write ``record``'s history under ``out_dir``; returns how many values of each kind."""
    from torch.utils.tensorboard import SummaryWriter

    counts = {"scalars": 0, "histograms": 0, "images": 0}
    writer = SummaryWriter(log_dir=str(out_dir))
    try:
        writer.add_text("config", "```\n" + json.dumps(record.config, indent=2, default=str) + "\n```", 0)
        for entry in record.history():
            step, wall = int(entry["step"]), float(entry.get("timestamp") or 0.0) or None
            for key, value in entry.items():
                if key in ("step", "timestamp"):
                    continue
                kind = _write(writer, record.dir, key, value, step, wall)
                if kind:
                    counts[kind] += 1
    finally:
        writer.close()
    return counts


def _write(writer: Any, run_dir: Path, key: str, value: Any, step: int, wall: float | None) -> str | None:
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
