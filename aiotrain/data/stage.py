"""The CPU stage of AsyncLoader: per-item transform with its own generator, then collation.

One batch of work: for each item (fetched on the loop, or read here with a sync ``__getitem__``)
call ``transform(item, generator)``, where the generator is seeded from (loader seed, epoch,
item index) and nothing else; then collate the samples. Because no state is carried from one
item to the next, the result does not depend on which process ran the item, in what order, or
how many workers there are, and a resumed run draws exactly what the original drew.

The stage runs in ``DataWorkerPool`` processes (``handle``) or, with ``workers=0``, on a thread
of the parent (``process``): same code, same results.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..runtime import WorkerContext, portable_error
from .transport import share

__all__ = ["BatchJob", "CpuStage", "item_generator", "item_seed"]


def item_seed(seed: int, epoch: int, index: int) -> int:
    """The 63-bit seed of item ``index`` in epoch ``epoch`` of a loader seeded ``seed``."""
    words = np.random.SeedSequence([seed & 0xFFFFFFFFFFFFFFFF, epoch, index]).generate_state(2)
    return int((int(words[0]) << 32 | int(words[1])) & 0x7FFFFFFFFFFFFFFF)


def item_generator(seed: int, epoch: int, index: int) -> torch.Generator:
    """A fresh CPU generator for one item's random augmentation (see ``item_seed``)."""
    return torch.Generator().manual_seed(item_seed(seed, epoch, index))


@dataclass
class BatchJob:
    """One batch for the stage: its epoch, item indices, and the items fetched on the loop
    (``None``: read them here; ``getitems``: one ``__getitems__`` call, returned as the batch).
    ``tolerate``: report failing items and go on, instead of stopping at the first."""

    epoch: int
    indices: list[int]
    items: list[Any] | None
    tolerate: bool = False
    getitems: bool = False


Failure = tuple[int, BaseException]


class CpuStage:
    """Fetch (sync datasets), transform and collate one batch; see the module docstring."""

    def __init__(self, dataset: Any, transform: Callable[[Any, torch.Generator], Any] | None,
                 collate_fn: Callable[[list[Any]], Any], seed: int,
                 worker_init: Callable[[], Any] | None = None) -> None:
        self.dataset, self.transform, self.collate_fn, self.seed = dataset, transform, collate_fn, seed
        self.worker_init = worker_init

    def process(self, job: BatchJob, note: Callable[[int], None] | None = None
                ) -> tuple[Any, list[Failure]]:
        """``(batch, failures)``; batch is None when no item survived (or the first failed and
        ``job.tolerate`` is off). A collate error propagates."""
        if job.getitems:
            return self.dataset.__getitems__(job.indices), []
        fetch = job.items is None
        items: Sequence[Any] = job.indices if fetch else job.items  # type: ignore[assignment]
        samples, failures = [], []
        for index, item in zip(job.indices, items, strict=True):
            if note is not None:
                note(index)
            try:
                if fetch:
                    item = self.dataset[index]
                if self.transform is not None:
                    item = self.transform(item, item_generator(self.seed, job.epoch, index))
            except Exception as exc:
                failures.append((index, exc))
                if not job.tolerate:
                    return None, failures
                continue
            samples.append(item)
        return (self.collate_fn(samples) if samples else None), failures

    # worker process side ----------------------------------------------------------------------
    def init_worker(self, ctx: WorkerContext) -> None:
        """Runs once in each worker: one intra-op thread (the workers are the parallelism), and
        torch's worker info, so ``default_collate`` builds its output in shared memory."""
        from torch.utils.data._utils import worker as torch_worker

        torch.set_num_threads(1)
        torch_worker._worker_info = torch_worker.WorkerInfo(
            id=ctx.index, num_workers=ctx.workers, seed=self.seed, dataset=self.dataset)
        if self.worker_init is not None:
            self.worker_init()

    def handle(self, job: BatchJob, ctx: WorkerContext) -> tuple[Any, list[int]]:
        """The worker handler: process, then share the batch's tensors (header, fds)."""
        batch, failures = self.process(job, ctx.note)
        header, fds = share(batch)
        return (header, [(i, portable_error(e)) for i, e in failures]), fds
