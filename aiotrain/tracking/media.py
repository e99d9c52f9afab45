"""Rich values for ``Run.log``: histograms, images (PNG via Pillow) and tables (JSON lines).

Each becomes one value in a metrics.jsonl line, a dict with a ``_type`` key:
``{"_type": "histogram", "bins": [...edges], "counts": [...], "min", "max", "num", "sum",
"sum_squares"}`` (enough for a TensorBoard histogram), ``{"_type": "image", "path":
"media/images/...png", "caption", "width", "height"}`` and ``{"_type": "table", "path":
"tables/...jsonl", "columns", "nrows"}``. Pixels and rows are snapshotted on the caller's
thread (the tensor may change right after) and written by the I/O executor.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import msgspec
import numpy as np

from ..values import check_int
from .store import atomic_write, encode_nonfinite, jsonable

__all__ = ["Table", "histogram_entry", "image_array", "safe_filename", "require_pillow", "write_png"]


def safe_filename(name: str) -> str:
    """A metric name as a file-name stem (``train/acc`` -> ``train_acc``)."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name).strip(".") or "value"


def _to_numpy(values: object) -> np.ndarray:
    if hasattr(values, "detach"):  # torch tensor: copy off the device once
        values = values.detach().to("cpu").numpy()
    return np.asarray(values)


def histogram_entry(values: object, bins: int = 64) -> dict[str, object]:
    """Histogram of the finite values in ``values`` (a tensor, array or sequence)."""
    bins = check_int("bins", bins)
    arr = _to_numpy(values).astype(np.float64, copy=False).ravel()
    arr = arr[np.isfinite(arr)]
    if arr.size == 0:
        return {"_type": "histogram", "bins": [0.0, 0.0], "counts": [0], "min": 0.0, "max": 0.0,
                "num": 0, "sum": 0.0, "sum_squares": 0.0}
    counts, edges = np.histogram(arr, bins=bins)
    return {"_type": "histogram", "bins": edges.tolist(), "counts": counts.tolist(),
            "min": float(arr.min()), "max": float(arr.max()), "num": int(arr.size),
            "sum": float(arr.sum()), "sum_squares": float(np.dot(arr, arr))}


def image_array(image: object) -> np.ndarray:
    """``image`` as a uint8 HxW, HxWx3 or HxWx4 array (a copy).

    Accepts CHW tensors (torchvision's layout) and HWC arrays; floats are taken to lie in
    [0, 1] and scaled to 0..255, integers are clipped to 0..255.
    """
    arr = _to_numpy(image)
    if arr.ndim == 3 and arr.shape[0] in (1, 3, 4) and arr.shape[-1] not in (1, 3, 4):
        arr = np.moveaxis(arr, 0, -1)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[-1] not in (3, 4)):
        raise ValueError(f"an image must be HxW, HxWxC or CxHxW with C in 1, 3, 4; got shape {arr.shape}")
    if arr.dtype.kind == "f":
        arr = np.clip(np.nan_to_num(arr) * 255.0 + 0.5, 0, 255)
    elif arr.dtype.kind not in "uib":
        raise ValueError(f"image values must be numbers, got dtype {arr.dtype}")
    return np.ascontiguousarray(np.clip(arr, 0, 255).astype(np.uint8))


def require_pillow() -> None:
    """Fail at the call site, not in the writer, when the ``media`` extra is missing."""
    try:
        import PIL.Image  # noqa: F401
    except ImportError as exc:  # pragma: no cover - Pillow is in the dev extra
        raise ImportError("log_image needs Pillow: pip install 'aiotrain[media]'") from exc


def write_png(path: Path, arr: np.ndarray) -> None:
    """Encode ``arr`` as PNG and write it atomically (runs in the I/O executor)."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    atomic_write(path, buf.getvalue())


class Table:
    """Rows under named columns, logged with ``run.log_table(name, table)`` (W&B's Table).

    ``Table(columns=["id", "pred"], data=[[1, "cat"]])``, ``add_row(2, "dog")``. Stored as
    JSON lines: a header ``{"columns": [...]}`` then one JSON array per row.
    """

    def __init__(self, columns: Sequence[str], data: Iterable[Sequence[object]] | None = None) -> None:
        cols = [str(c) for c in columns]
        if not cols or len(set(cols)) != len(cols):
            raise ValueError(f"Table columns must be non-empty and unique, got {list(columns)!r}")
        self.columns = cols
        self.data: list[list[Any]] = []
        for row in data or ():
            self.add_row(*row)

    def add_row(self, *values: object) -> None:
        """Append one row; it must have one value per column."""
        if len(values) != len(self.columns):
            raise ValueError(f"Table row has {len(values)} values for {len(self.columns)} columns")
        self.data.append([jsonable(v) for v in values])

    def __len__(self) -> int:
        return len(self.data)

    def to_bytes(self) -> bytes:
        """The JSON-lines encoding written under the run's ``tables/``."""
        rows = [{"columns": self.columns}, *(encode_nonfinite(r) for r in self.data)]
        return msgspec.json.Encoder().encode_lines(rows)

    @classmethod
    def load(cls, path: str | Path) -> Table:
        """Read a table file back (a torn last row is skipped)."""
        lines = Path(path).read_bytes().split(b"\n")
        header = msgspec.json.decode(lines[0])
        table = cls(header["columns"])
        for i, line in enumerate(lines[1:], start=2):
            if not line.strip():
                continue
            try:
                table.data.append(msgspec.json.decode(line))
            except msgspec.DecodeError:
                if i < len(lines) and any(x.strip() for x in lines[i:]):
                    raise ValueError(f"{path}:{i}: corrupt table row") from None
        return table

