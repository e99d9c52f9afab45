"""MmapDataset: fixed-size records of one or more binary files, served as zero-copy tensors.

The files go through a ``CacheManager``: files it maps (``CacheMode.MMAP``) are served as views
of the mapping (``__getitem__``) or as one gather over it (``__getitems__``); files it plans to
read normally (too large for the memory limit) are served with one positioned read per record.
Every access stats the file first. A file truncated or rewritten in place after the dataset
opened it is a ``DatasetError`` naming the file (the views already handed out stay readable: they
are over the cache's snapshot, see ``aiotrain.data.cache``); a file replaced atomically (a new
inode of the same size) is served with its new content.
"""

from __future__ import annotations

import bisect
import math
import operator
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from numpy.typing import DTypeLike

from ..values import check_int
from .cache import CacheManager, CacheMode, PathLike, Signature, file_signature
from .loader import DatasetError

__all__ = ["MmapDataset"]


class MmapDataset(torch.utils.data.Dataset[torch.Tensor]):
    """Records of ``record_shape`` and ``dtype`` laid end to end in ``path_or_paths`` (in order).

    ``dataset[i]`` is a zero-copy tensor of ``record_shape`` (for mapped files);
    ``dataset.__getitems__(indices)`` returns one ``(B, *record_shape)`` tensor, the batched fetch
    torch's DataLoader and aiotrain's AsyncLoader use. Files that are not a whole number of
    records are an error. ``cache`` may be shared between datasets; without one the dataset makes
    its own (default memory limit) and ``close()`` releases it. Pickling (DataLoader worker
    processes) drops the cache: each process maps the files on its own.
    """

    def __init__(self, path_or_paths: PathLike | Sequence[PathLike],
                 record_shape: int | Sequence[int], dtype: torch.dtype | DTypeLike,
                 cache: CacheManager | None = None) -> None:
        if isinstance(path_or_paths, str | os.PathLike):
            path_or_paths = [path_or_paths]
        self.paths = [os.path.abspath(os.fspath(p)) for p in path_or_paths]
        if not self.paths:
            raise ValueError("MmapDataset needs at least one file")
        self.record_shape = _record_shape(record_shape)
        self.dtype = _torch_dtype(dtype)
        itemsize = torch.empty((), dtype=self.dtype).element_size()
        self.record_bytes: int = math.prod(self.record_shape) * itemsize
        self._own_cache = cache is None
        self.cache = CacheManager() if cache is None else cache
        self._open()

    def _open(self) -> None:
        untracked = [p for p in self.paths if self.cache.mode_of(p) is None]
        if untracked:
            missing = self.cache.scan_files(untracked)["missing"]
            if missing:
                raise FileNotFoundError(f"MmapDataset: no such data file: {missing[0]}")
        stats = [os.stat(p) for p in self.paths]
        self._counts = [self._record_count(p, st.st_size) for p, st in zip(self.paths, stats, strict=True)]
        self._opened = [file_signature(st) for st in stats]  # what a change is measured against
        self._starts: list[int] = [0, *np.cumsum(self._counts).tolist()]
        self._len = self._starts[-1]
        self._views: dict[int, tuple[Signature | None, torch.Tensor]] = {}

    def _record_count(self, path: str, size: int) -> int:
        if size % self.record_bytes:
            raise ValueError(f"{path}: {size} bytes is not a whole number of "
                             f"{self.record_bytes}-byte records")
        return size // self.record_bytes

    def __len__(self) -> int:
        return self._len

    def __getitem__(self, index: int) -> torch.Tensor:
        """Record ``index`` (negative counts from the end): a view of the mapping when mapped."""
        i = self._normalize(operator.index(index))
        f = bisect.bisect_right(self._starts, i) - 1
        local = i - self._starts[f]
        if self.cache.mode_of(self.paths[f]) is CacheMode.MMAP:
            return self._file_tensor(f)[local]
        return self._read_records(f, torch.tensor([local])).squeeze(0)

    def __getitems__(self, indices: Sequence[int] | torch.Tensor) -> torch.Tensor:
        """Records ``indices`` as one ``(B, *record_shape)`` tensor: one gather per file touched."""
        idx = torch.as_tensor(indices, dtype=torch.int64).reshape(-1)
        if len(idx) and not _within(idx, self._len):
            given = idx
            idx = torch.where(idx < 0, idx + self._len, idx)
            bad = (idx < 0) | (idx >= self._len)
            if bool(bad.any()):
                raise IndexError(f"MmapDataset index {int(given[bad][0])} out of range for "
                                 f"{self._len} records")
        if len(self.paths) == 1:
            return self._gather(0, idx)
        files = torch.from_numpy(np.searchsorted(self._starts, idx.numpy(), side="right") - 1)
        out = torch.empty((len(idx), *self.record_shape), dtype=self.dtype)
        for f in torch.unique(files).tolist():
            pos = torch.nonzero(files == f).reshape(-1)
            out[pos] = self._gather(f, idx[pos] - self._starts[f])
        return out

    def _normalize(self, i: int) -> int:
        j = i + self._len if i < 0 else i
        if not 0 <= j < self._len:
            raise IndexError(f"MmapDataset index {i} out of range for {self._len} records")
        return j

    def _gather(self, f: int, local: torch.Tensor) -> torch.Tensor:
        if self.cache.mode_of(self.paths[f]) is CacheMode.MMAP:
            return torch.index_select(self._file_tensor(f), 0, local)
        return self._read_records(f, local)

    def _file_tensor(self, f: int) -> torch.Tensor:
        """The whole file ``f`` as a ``(records, *record_shape)`` view of its (checked) mapping.

        The file is stat'ed on every call, as ``CacheManager.get`` does; while its signature is
        the one the cached view was made from, the view is reused instead of asking the cache
        for a new one (that costs more than the record itself).
        """
        path, count = self.paths[f], self._counts[f]
        sig = self._check(f)
        hit = self._views.get(f)
        if hit is not None and hit[0] == sig:
            return hit[1]
        data = self.cache.get(path)
        if len(data) != count * self.record_bytes:
            raise self._changed(f, f"changed size since the dataset was opened "
                                   f"({count * self.record_bytes} -> {len(data)} bytes)")
        tensor = data.as_tensor(self.dtype, (count, *self.record_shape))
        self._views[f] = (data.signature, tensor)
        return tensor

    def _check(self, f: int) -> Signature:
        """The file's signature now; a DatasetError when it was truncated or rewritten in place
        (same inode, or a different size) since the dataset opened it."""
        path = self.paths[f]
        try:
            sig = file_signature(os.stat(path))
        except FileNotFoundError as exc:
            raise self._changed(f, "was removed while the dataset was reading it") from exc
        opened = self._opened[f]
        if sig != opened:
            if sig[2] != opened[2]:
                raise self._changed(f, f"changed size since the dataset was opened "
                                       f"({opened[2]} -> {sig[2]} bytes)")
            if sig[:2] == opened[:2]:
                raise self._changed(f, "was rewritten in place while the dataset was reading it")
            self._opened[f] = sig  # replaced atomically by a file of the same size: serve it
        return sig

    def _changed(self, f: int, what: str) -> DatasetError:
        return DatasetError(self.paths[f], OSError(
            f"{self.paths[f]} {what}; replace data files atomically (write a new file, os.replace)"))

    def _read_records(self, f: int, local: torch.Tensor) -> torch.Tensor:
        """Positioned reads of the records ``local`` of file ``f`` (a file served without mmap)."""
        path, size = self.paths[f], self.record_bytes
        self._check(f)
        out = torch.empty((len(local), *self.record_shape), dtype=self.dtype)
        raw = out.view(torch.uint8).numpy().data.cast("B")
        fd = os.open(path, os.O_RDONLY)
        try:
            for k, j in enumerate(local.tolist()):
                if os.preadv(fd, [raw[k * size:(k + 1) * size]], j * size) != size:
                    raise self._changed(f, f"shrank since the dataset was opened (short read at "
                                           f"record {j})")
        finally:
            os.close(fd)
        return out

    def close(self) -> None:
        """Drop the dataset's views; release the mappings when it made its own cache (a shared
        cache is left alone)."""
        self._views.clear()
        if self._own_cache:
            self.cache.cleanup()

    def __enter__(self) -> MmapDataset:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getstate__(self) -> dict[str, object]:
        return {"paths": self.paths, "record_shape": self.record_shape, "dtype": self.dtype}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["paths"], state["record_shape"], state["dtype"])  # type: ignore[misc]

    def __repr__(self) -> str:
        return (f"MmapDataset({len(self.paths)} file(s), {self._len} records of "
                f"{tuple(self.record_shape)} {self.dtype})")


def _within(idx: torch.Tensor, n: int) -> bool:
    lo, hi = torch.aminmax(idx)
    return int(lo) >= 0 and int(hi) < n


def _record_shape(shape: int | Sequence[int]) -> tuple[int, ...]:
    """``()`` is a scalar record (labels); every dimension given must be a positive int."""
    dims = (shape,) if isinstance(shape, int) else tuple(shape)
    return tuple(check_int(f"record_shape {shape!r}: each dimension (or () for scalars)", d)
                 for d in dims)


def _torch_dtype(dtype: torch.dtype | DTypeLike) -> torch.dtype:
    """Accept a torch dtype, a numpy dtype or a name such as "float32"."""
    if isinstance(dtype, torch.dtype):
        return dtype
    named = getattr(torch, dtype, None) if isinstance(dtype, str) else None
    if isinstance(named, torch.dtype):
        return named
    try:
        return torch.from_numpy(np.empty(0, dtype=np.dtype(dtype))).dtype
    except TypeError as exc:
        raise TypeError(f"MmapDataset: unsupported dtype {dtype!r}") from exc
