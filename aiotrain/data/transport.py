"""Tensors between processes through shared memory: the worker shares, the parent maps.

A worker turns a result (tensors nested in dicts, lists, tuples, namedtuples) into a small header
plus one file descriptor per tensor storage. Storages already in shared memory (``default_collate``
allocates its output there inside a worker) are passed as they are; others are moved there once.
The parent maps each descriptor and rebuilds the tensors over the mapping: the payload is never
copied on the way back and never pickled. The segments are torch's descriptor-backed shared
memory, unlinked at birth, so they leave nothing in /dev/shm and vanish with their last user.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch

from .batch import map_leaves

__all__ = ["rebuild", "share"]


@dataclass(frozen=True)
class _TensorRef:
    """Where one tensor lives: storage number (into the fds), dtype, shape, stride, offset."""

    storage: int
    dtype: torch.dtype
    shape: tuple[int, ...]
    stride: tuple[int, ...]
    offset: int
    nbytes: int


def share(obj: Any) -> tuple[Any, list[int]]:
    """Worker side: ``obj`` with its tensors replaced by references, and the descriptors of their
    storages (the caller sends them, then closes them)."""
    fds: list[int] = []
    seen: dict[int, int] = {}

    def ref(x: torch.Tensor) -> _TensorRef:
        if x.device.type != "cpu" or x.is_sparse or x.requires_grad:
            raise TypeError(f"a data worker can return dense CPU tensors without grad only, "
                            f"got {x.device} {x.layout} requires_grad={x.requires_grad}")
        storage = x.untyped_storage()
        if not storage.is_shared():  # not built in shared memory: one copy into it
            storage = torch.UntypedStorage._new_shared(x.numel() * x.element_size())
            x = torch.empty(0, dtype=x.dtype).set_(storage, 0, x.shape).copy_(x)
        key = storage.data_ptr()
        if key not in seen:
            fd, _size = storage._share_fd_cpu_()
            seen[key] = len(fds)
            fds.append(os.dup(fd))  # the storage keeps its own fd; ours is for the message
        return _TensorRef(seen[key], x.dtype, tuple(x.shape), tuple(x.stride()),
                          x.storage_offset(), storage.nbytes())

    try:
        return map_leaves(obj, torch.Tensor, ref), fds
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise


def rebuild(header: Any, fds: list[int]) -> Any:
    """Parent side: the tensors of ``header`` over mappings of ``fds`` (which are closed here)."""
    storages: dict[int, torch.UntypedStorage] = {}
    try:
        def tensor(x: _TensorRef) -> torch.Tensor:
            storage = storages.get(x.storage)
            if storage is None:
                storage = torch.UntypedStorage._new_shared_fd_cpu(fds[x.storage], x.nbytes)
                storages[x.storage] = storage
            return torch.empty(0, dtype=x.dtype).set_(storage, x.offset, x.shape, x.stride)

        return map_leaves(header, _TensorRef, tensor)
    finally:
        for fd in fds:
            os.close(fd)
