"""Batches between processes through shared memory: the worker shares, the parent maps.

A worker turns a result (tensors or numpy arrays nested in dicts, lists, tuples, namedtuples)
into a small header plus one file descriptor per shared buffer. Tensors whose storage is already
in shared memory (``default_collate`` allocates its output there inside a forked worker) and
arrays built with ``shared_empty`` (``numpy_collate`` stacks into one) are passed as they are;
others are moved there once. The parent maps each descriptor and rebuilds the tensors or arrays
over the mapping: the payload is never copied on the way back and never pickled. The buffers are
memfds (torch's descriptor-backed shared memory for tensors), unlinked at birth, so they leave
nothing in /dev/shm and vanish with their last user. Nothing here imports torch unless a tensor
is involved, so a torch-free worker stays torch-free.

Items can travel the other way without their bytes: a ``FileItem`` is a reference to an item
still in a file the parent holds open (a shard in shared memory, a cache file); the job carries
the reference pickled (a few dozen bytes) and the file's descriptor beside it, and the worker
reads the item itself (``file_slots`` numbers the descriptors of a job).

Array buffers are recycled: once the consumer has dropped every array over a mapping, the
parent's ``Recycler`` keeps its memfd and lends it with a later job; the worker writes that batch
into it (``lend`` then ``shared_empty``), so the pages are not allocated and zeroed afresh for
every batch. A buffer is lent only after the parent's last view of it is gone, so a batch in use
is never overwritten.
"""

from __future__ import annotations

import collections
import mmap
import os
import sys
import threading
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeGuard, runtime_checkable

import numpy as np

from .batch import map_leaves

__all__ = ["FileItem", "FileItemSource", "Recycler", "file_slots", "is_file_item", "lend", "rebuild", "share",
           "shared_empty"]

_buffer_fds: weakref.WeakKeyDictionary[mmap.mmap, int] = weakref.WeakKeyDictionary()
_lent: list[int] = []  # worker side: memfds the parent lent with the current job


@dataclass(frozen=True)
class _TensorRef:
    """Where one tensor lives: storage number (into the fds), dtype, shape, stride, offset."""

    storage: int
    dtype: Any  # torch.dtype
    shape: tuple[int, ...]
    stride: tuple[int, ...]
    offset: int
    nbytes: int


@dataclass(frozen=True)
class _ArrayRef:
    """Where one numpy array lives: buffer number (into the fds, -1: empty), dtype, shape,
    byte offset and the buffer's size."""

    buffer: int
    dtype: str
    shape: tuple[int, ...]
    offset: int
    nbytes: int


@runtime_checkable
class FileItem(Protocol):
    """An item left in a file this process holds open: a data worker reads it itself, so only
    this small picklable reference and the file's descriptor cross to the worker."""

    def fileno(self) -> int:
        """This process's descriptor of the file (borrowed: open while the reference lives)."""
        ...

    def load(self, fd: int) -> object:
        """The item, read (and checked) from ``fd``, the same file, in whichever process."""
        ...


@runtime_checkable
class FileItemSource(Protocol):
    """A dataset that can give an item as a ``FileItem`` (or, where it cannot, the item itself):
    AsyncLoader with worker processes asks it for ``aget_ref`` instead of ``aget``."""

    async def aget_ref(self, index: int) -> object: ...


def is_file_item(obj: object) -> TypeGuard[FileItem]:
    """``isinstance(obj, FileItem)``, decided once per class: a Protocol check costs tens of
    microseconds on Python 3.11, and the loader asks it of every item."""
    cls = type(obj)
    known = _file_item_classes.get(cls)
    if known is None:
        known = _file_item_classes[cls] = issubclass(cls, FileItem)
    return known


_file_item_classes: dict[type, bool] = {}  # class -> whether its instances are FileItems


def file_slots(items: Sequence[object]) -> tuple[list[int], list[int]]:
    """Parent side: for each item, the slot of its file among the descriptors returned (-1: the
    item is not a ``FileItem`` and travels itself), and those descriptors (duplicates, for the
    message to carry and close)."""
    slots: list[int] = []
    seen: dict[int, int] = {}
    for item in items:
        if is_file_item(item):
            slots.append(seen.setdefault(item.fileno(), len(seen)))
        else:
            slots.append(-1)
    return slots, [os.dup(fd) for fd in seen]


def lend(fds: list[int]) -> list[int]:
    """Worker side: use ``fds`` (buffers lent with this job) for the next ``shared_empty`` calls;
    returns those left over from the previous job, for the caller to close."""
    left = _lent[:]
    _lent[:] = fds
    return left


def shared_empty(shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    """An uninitialised C-contiguous array in a memfd mapping (a lent one when there is one, else
    a fresh one), which ``share`` passes on without a copy (write a batch straight into it)."""
    dtype = np.dtype(dtype)
    size = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if size == 0:
        return np.empty(shape, dtype)
    fd = _lent.pop() if _lent else os.memfd_create("aiotrain-batch", os.MFD_CLOEXEC)
    try:
        if os.fstat(fd).st_size != size:
            os.ftruncate(fd, size)
        # a lent buffer's pages exist: map them all now rather than fault them one by one
        buf = mmap.mmap(fd, size, flags=mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0))
    except BaseException:
        os.close(fd)
        raise
    _buffer_fds[buf] = fd
    weakref.finalize(buf, os.close, fd)
    return np.ndarray(shape, dtype, buffer=buf)


def share(obj: Any) -> tuple[Any, list[int]]:
    """Worker side: ``obj`` with its tensors and arrays replaced by references, and the
    descriptors of their buffers (the caller sends them, then closes them)."""
    fds: list[int] = []
    seen: dict[int, int] = {}
    keep: list[Any] = []  # buffers made here live until the end, so no address or id is reused

    def slot(key: int, fd: int, owner: Any) -> int:
        keep.append(owner)
        if key not in seen:
            seen[key] = len(fds)
            fds.append(os.dup(fd))  # the buffer keeps its own fd; ours is for the message
        return seen[key]

    def array_ref(x: np.ndarray) -> _ArrayRef:
        if x.dtype.hasobject:
            raise TypeError(f"a data worker can return numeric numpy arrays only, got dtype {x.dtype}")
        if x.nbytes == 0:
            return _ArrayRef(-1, x.dtype.str, x.shape, 0, 0)
        base: Any = x.base
        while isinstance(base, np.ndarray):
            base = base.base
        if not (isinstance(base, mmap.mmap) and base in _buffer_fds and x.flags.c_contiguous):
            copy = shared_empty(x.shape, x.dtype)
            copy[...] = x
            x, base = copy, copy.base
        buf: mmap.mmap = base
        start = np.ndarray((len(buf),), np.uint8, buffer=buf).ctypes.data
        return _ArrayRef(slot(id(buf), _buffer_fds[buf], buf), x.dtype.str, x.shape,
                         x.ctypes.data - start, len(buf))

    leaves: tuple[type, ...] = (np.ndarray,)
    torch = sys.modules.get("torch")
    if torch is not None:
        leaves += (torch.Tensor,)

    def ref(x: Any) -> _TensorRef | _ArrayRef:
        return array_ref(x) if isinstance(x, np.ndarray) else _tensor_ref(x, slot)

    try:
        return map_leaves(obj, leaves, ref), fds
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise


def _tensor_ref(x: Any, slot: Any) -> _TensorRef:
    import torch

    if x.device.type != "cpu" or x.is_sparse or x.requires_grad:
        raise TypeError(f"a data worker can return dense CPU tensors without grad only, "
                        f"got {x.device} {x.layout} requires_grad={x.requires_grad}")
    storage = x.untyped_storage()
    if not storage.is_shared():  # not built in shared memory: one copy into it
        storage = torch.UntypedStorage._new_shared(x.numel() * x.element_size())
        x = torch.empty(0, dtype=x.dtype).set_(  # type: ignore[call-overload]
            storage, 0, x.shape).copy_(x)
    fd, _size = storage._share_fd_cpu_()
    return _TensorRef(slot(storage.data_ptr(), fd, storage), x.dtype, tuple(x.shape), tuple(x.stride()),
                      int(x.storage_offset()), storage.nbytes())


class Recycler:
    """Parent side: the memfds of array buffers the consumer has dropped, at most ``limit`` of
    them, to lend to workers with later jobs (see the module docstring). Thread-safe: buffers
    come back on whichever thread drops the last view."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._free: collections.deque[int] = collections.deque()
        self._lock = threading.Lock()
        self.lent = 0  # buffers handed out for reuse so far
        weakref.finalize(self, _close_all, self._free)

    def take(self) -> list[int]:
        """One idle buffer's fd to send with a job (the caller closes it once sent), or none."""
        with self._lock:
            if not self._free:
                return []
            self.lent += 1
            return [self._free.popleft()]

    def give_back(self, fd: int) -> None:
        """Called when the last view of a buffer is gone: keep its fd for lending, or close it."""
        with self._lock:
            if len(self._free) < self.limit:
                self._free.append(fd)
                return
        os.close(fd)

    def drain(self) -> None:
        """Close the idle buffers (their memory goes back to the system); lending goes on."""
        with self._lock:
            free = list(self._free)
            self._free.clear()
        for fd in free:
            os.close(fd)


def _close_all(fds: collections.deque[int]) -> None:
    while fds:
        os.close(fds.pop())


def rebuild(header: Any, fds: list[int], arrays_as_tensors: bool = False,
            recycler: Recycler | None = None) -> Any:
    """Parent side: the tensors and arrays of ``header`` over mappings of ``fds`` (which are
    closed here). ``arrays_as_tensors``: arrays come back as tensors over the same memory
    (``torch.from_numpy``), as ``default_collate`` would have made them. With ``recycler``,
    an array buffer goes back to it once the last view of it is gone."""
    import torch

    storages: dict[int, torch.UntypedStorage] = {}
    buffers: dict[int, mmap.mmap] = {}
    try:
        def tensor(x: _TensorRef) -> torch.Tensor:
            storage = storages.get(x.storage)
            if storage is None:
                storage = torch.UntypedStorage._new_shared_fd_cpu(  # type: ignore[attr-defined]
                    fds[x.storage], x.nbytes)
                storages[x.storage] = storage
            return torch.empty(0, dtype=x.dtype).set_(storage, x.offset, x.shape, x.stride)

        def array(x: _ArrayRef) -> Any:
            if x.buffer < 0:
                out = np.empty(x.shape, np.dtype(x.dtype))
            else:
                buf = buffers.get(x.buffer)
                if buf is None:
                    buf = buffers[x.buffer] = mmap.mmap(fds[x.buffer], x.nbytes)
                    if recycler is not None:
                        weakref.finalize(buf, recycler.give_back, os.dup(fds[x.buffer]))
                out = np.ndarray(x.shape, np.dtype(x.dtype), buffer=buf, offset=x.offset)
            return torch.from_numpy(out) if arrays_as_tensors else out

        return map_leaves(map_leaves(header, _TensorRef, tensor), _ArrayRef, array)
    finally:
        for fd in fds:
            os.close(fd)
