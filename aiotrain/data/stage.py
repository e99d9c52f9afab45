"""The CPU stage of AsyncLoader: per-item transform with its own generator, then collation.

One batch of work: for each item (fetched on the loop, or read here with a sync ``__getitem__``)
call ``transform(item, generator)``, where the generator is seeded from (loader seed, epoch,
item index) and nothing else; then collate the samples. Because no state is carried from one
item to the next, the result does not depend on which process ran the item, in what order, or
how many workers there are, and a resumed run draws exactly what the original drew.

The stage runs in ``DataWorkerPool`` processes (``handle``) or, with ``workers=0``, on a thread
of the parent (``process``): same code, same results. Nothing here imports torch unless the
work needs it (a torch generator, torch's ``default_collate``, tensors to share), so a spawned
worker whose transform works in numpy never loads torch.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from ..runtime import WorkerContext, portable_error
from .transport import lend, share, shared_empty

__all__ = ["BatchJob", "CpuStage", "Rng", "item_generator", "item_seed", "numpy_collate"]

Rng = Literal["torch", "numpy"]


def item_seed(seed: int, epoch: int, index: int) -> int:
    """The 63-bit seed of item ``index`` in epoch ``epoch`` of a loader seeded ``seed``."""
    words = np.random.SeedSequence([seed & 0xFFFFFFFFFFFFFFFF, epoch, index]).generate_state(2)
    return int((int(words[0]) << 32 | int(words[1])) & 0x7FFFFFFFFFFFFFFF)


def item_generator(seed: int, epoch: int, index: int, rng: Rng = "torch") -> Any:
    """A fresh generator for one item's random augmentation (see ``item_seed``): a CPU
    ``torch.Generator``, or with ``rng="numpy"`` a ``numpy.random.Generator`` (PCG64)."""
    if rng == "numpy":
        return np.random.Generator(np.random.PCG64(item_seed(seed, epoch, index)))
    import torch

    return torch.Generator().manual_seed(item_seed(seed, epoch, index))


def numpy_collate(samples: list[Any]) -> Any:
    """Collate without torch: numpy arrays and numbers are stacked into arrays, containers are
    collated field by field, anything else is returned as a list. The parent turns the arrays
    into tensors without copying them, so the batch is what ``default_collate`` would build.
    Samples holding tensors (the transform imported torch) go to ``default_collate``."""
    if "torch" in sys.modules:
        import torch

        if _holds(samples[0], torch.Tensor):
            from torch.utils.data import default_collate

            return default_collate(samples)
    first = samples[0]
    if isinstance(first, np.ndarray | np.number | bool | int | float) and \
            not isinstance(first, np.str_ | np.bytes_):
        arrays = [np.asarray(s) for s in samples]
        out = shared_empty((len(arrays), *arrays[0].shape), np.result_type(*arrays))
        return np.stack(arrays, out=out)  # straight into the memory the parent will map
    if isinstance(first, dict):
        return type(first)({k: numpy_collate([s[k] for s in samples]) for k in first})
    if isinstance(first, tuple | list) and not isinstance(first, str):
        columns = [numpy_collate(list(c)) for c in zip(*samples, strict=True)]
        return type(first)(*columns) if hasattr(first, "_fields") else columns
    return list(samples)


def _holds(obj: Any, kind: type) -> bool:
    if isinstance(obj, kind):
        return True
    if isinstance(obj, dict):
        return any(_holds(v, kind) for v in obj.values())
    if isinstance(obj, list | tuple):
        return any(_holds(v, kind) for v in obj)
    return False


@dataclass
class BatchJob:
    """One batch for the stage: its epoch, item indices, and the items fetched on the loop
    (``None``: read them here; ``getitems``: one ``__getitems__`` call, returned as the batch).
    ``tolerate``: report failing items and go on, instead of stopping at the first. ``files``:
    per item, the slot of its file among the job's last ``nfiles`` descriptors (the item is a
    ``transport.FileItem``, read here), or -1."""

    epoch: int
    indices: list[int]
    items: list[Any] | None
    tolerate: bool = False
    getitems: bool = False
    files: list[int] | None = None
    nfiles: int = 0


Failure = tuple[int, BaseException]


class CpuStage:
    """Fetch (sync datasets), transform and collate one batch; see the module docstring.
    ``collate_fn=None``: torch's ``default_collate`` in this process, ``numpy_collate`` in a worker
    process (arrays stacked into reusable shared buffers; tensors still go to ``default_collate``)."""

    def __init__(self, dataset: Any, transform: Callable[[Any, Any], Any] | None,
                 collate_fn: Callable[[list[Any]], Any] | None, seed: int,
                 worker_init: Callable[[], Any] | None = None, rng: Rng = "torch") -> None:
        self.dataset, self.transform, self.collate_fn, self.seed = dataset, transform, collate_fn, seed
        self.worker_init, self.rng = worker_init, rng
        self.in_worker = False  # set in a worker process: collate with numpy_collate

    def _collate(self, samples: list[Any]) -> Any:
        if self.collate_fn is not None:
            return self.collate_fn(samples)
        if self.in_worker:
            return numpy_collate(samples)
        from torch.utils.data import default_collate

        return default_collate(samples)

    def process(self, job: BatchJob, note: Callable[[int], None] | None = None,
                files: Sequence[int] = ()) -> tuple[Any, list[Failure]]:
        """``(batch, failures)``; batch is None when no item survived (or the first failed and
        ``job.tolerate`` is off). A collate error propagates. ``files``: the descriptors of the
        job's ``FileItem``s (see ``BatchJob``)."""
        if job.getitems:
            return self.dataset.__getitems__(job.indices), []
        fetch = job.items is None
        items: Sequence[Any] = job.indices if fetch else job.items  # type: ignore[assignment]
        slots = job.files or [-1] * len(items)
        samples: list[Any] = []
        failures: list[tuple[int, BaseException]] = []
        for index, item, slot in zip(job.indices, items, slots, strict=True):
            if note is not None:
                note(index)
            try:
                if fetch:
                    item = self.dataset[index]
                elif slot >= 0:
                    item = item.load(files[slot])
                if self.transform is not None:
                    item = self.transform(item, item_generator(self.seed, job.epoch, index, self.rng))
            except Exception as exc:
                failures.append((index, exc))
                if not job.tolerate:
                    return None, failures
                continue
            samples.append(item)
        return (self._collate(samples) if samples else None), failures

    # worker process side ----------------------------------------------------------------------
    def init_worker(self, ctx: WorkerContext) -> None:
        """Runs once in each worker. Forked (torch inherited): one intra-op thread (the workers
        are the parallelism), and torch's worker info, so ``default_collate`` builds its output
        in shared memory. Spawned (``ctx.spawned``): nothing is imported here. Either way
        batches are collated with ``numpy_collate`` unless a ``collate_fn`` was given."""
        self.in_worker = True
        if not ctx.spawned:
            import torch
            from torch.utils.data._utils import worker as torch_worker

            torch.set_num_threads(1)
            torch_worker._worker_info = torch_worker.WorkerInfo(
                id=ctx.index, num_workers=ctx.workers, seed=self.seed, dataset=self.dataset)
        if self.worker_init is not None:
            self.worker_init()

    def handle(self, job: BatchJob, ctx: WorkerContext) -> tuple[Any, list[int]]:
        """The worker handler: process (into the buffers lent with the job, if any, reading its
        ``FileItem``s from the descriptors sent after them), then share the batch's arrays
        (header, fds)."""
        received = ctx.take_received()
        split = len(received) - job.nfiles
        files = received[split:]
        for fd in lend(received[:split]):
            os.close(fd)
        try:
            batch, failures = self.process(job, ctx.note, files)
        finally:
            for fd in files:
                os.close(fd)
        header, fds = share(batch)
        return (header, [(i, portable_error(e)) for i, e in failures]), fds
