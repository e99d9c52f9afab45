"""AsyncLoader: batches fetched as tasks on the event loop, delivered in sampler order.

Items of a map-style dataset are fetched concurrently (``aget`` coroutines as tasks, sync
``__getitem__`` calls on threads, or one ``__getitems__`` call per batch), at most
``concurrency`` at a time, and assembled into batches that come out in sampler order even though
items finish out of order. With ``workers=N`` the CPU stage (sync reads, ``transform``, collate)
runs in N worker processes and the batch comes back through shared memory (see ``stage`` and
``transport``). At most ``prefetch`` batches are started but not yet consumed, which bounds
memory; once every batch of an epoch is started, the next epoch's first batches start too, within
the same bound, so an epoch boundary costs no fetch latency. The same ordered stream serves
``async for`` on the loop and, without a loop crossing per batch, the Engine's compute thread
(``stream``: the stream, its prefetch budget, the base shared with ``AsyncLoader.wrap``).

Sync dataset code that never returns cannot stop a cancellation: sync reads run on abandonable
daemon threads (``runtime.submit_abandonable``), so a cancelled stream reports the item still running,
discards its result when it comes, and completes at once; in worker processes, the workers are
killed.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import logging
import math
import weakref
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import torch
from torch.utils.data import default_collate

from ..protocols import EpochAware
from ..runtime import (
    DataWorkerPool,
    WorkerDied,
    WorkerInitError,
    submit_abandonable,
    to_io,
)
from ..values import check_int
from .batch import pin_batch
from .remote.order import ResumableOrder
from .stage import BatchJob, CpuStage, Rng
from .stream import Budget, Stream, StreamClosed, StreamingLoader, WrappedLoader, sized_len
from .transport import FileItemSource, Recycler, file_slots, is_file_item, rebuild

log = logging.getLogger(__name__)

ABANDON_GRACE_S = 0.2  # how long a cancelled stream waits for a sync read before abandoning it
DROP_GRACE_S = 2.0  # how long a dropped early start waits for its worker calls before stopping them

__all__ = ["AsyncLoader", "DatasetError", "StreamClosed", "sized_len"]


class DatasetError(RuntimeError):
    """A dataset item failed to load; ``index`` says which, ``__cause__`` holds the original."""

    def __init__(self, index: Any, exc: BaseException) -> None:
        super().__init__(f"loading dataset item {index} failed: {type(exc).__name__}: {exc}")
        self.index = index


class AsyncLoader(StreamingLoader):
    """Prefetching, order-preserving batch loader for map-style datasets (docs/data.md).

    ``dataset`` has ``__len__`` and ``async def aget(i)``, or ``__getitems__(indices)`` (one call
    per batch, returned as the batch, not collated), or sync ``__getitem__``. Epoch ``e``'s order
    is a function of ``(seed, e)`` when shuffling; with ``sampler`` it is the sampler's order
    (its ``set_epoch`` is called with the epoch, so DistributedSampler shards and reshuffles).
    With ``device`` set, batches are moved there by the consumer (pinned, non-blocking on CUDA).

    The CPU stage: ``transform(item, generator)`` is applied to every item before collation;
    ``generator`` is a ``torch.Generator`` (``rng="numpy"``: a ``numpy.random.Generator``) seeded
    from ``(seed, epoch, index)`` only, so random augmentation drawn from it is the same whatever
    the worker count and across a resume. With ``transform`` set, items are fetched one by one
    (``__getitems__`` is not used). ``workers=N`` runs the stage (sync ``__getitem__`` reads of
    datasets without ``aget``, the transform, ``collate_fn``) in N worker processes, started when
    the loader is opened (or on first use) and reused across epochs; batches come back through
    shared memory; a dataset with ``aget_ref`` (``RemoteDataset``) gives them references to
    items in files it holds open instead of the items, and they read the items themselves
    (``transport.FileItem``). The workers are forked (``worker_start="fork"``), or with
    ``worker_start="spawn"`` fresh interpreters that import only what the dataset and transform
    need: a transform that works in numpy (with ``rng="numpy"``) never loads torch there, so each
    worker costs tens of MB, not the trainer's memory; the batch's arrays become tensors here
    without a copy. Spawned workers get the dataset, transform, collate_fn and worker_init by
    pickling (define them at module level). ``workers=0`` runs the stage on threads of this
    process. ``worker_init()`` runs once in each worker as it starts (load a tokenizer there, open
    a connection); if it raises, the first batch raises ``WorkerInitError`` with its message.
    Opening the loader (``async with loader:`` or ``await loader.astart()``) starts the workers
    ahead of the first batch without waiting for them, so ``worker_init`` overlaps whatever this
    process does meanwhile (building the model). Close the loader (``await loader.aclose()``,
    leaving ``async with``, or ``close()``) to stop the workers; a cancelled stream stops them too.

    ``skip_errors=K``: up to K items per epoch that fail (fetch or transform) are left out of
    their batch, counted in ``skipped`` and logged with index and error; the next failure is a
    ``DatasetError``. A batch whose every item failed is an error. The default, 0, fails on the
    first bad item.

    Example::

        >>> import asyncio
        >>> from aiotrain import AsyncLoader, Engine
        >>> data = [(float(i), i % 2) for i in range(10)]   # any map-style dataset
        >>> loader = AsyncLoader(data, batch_size=4)
        >>> len(loader)
        3
        >>> async def one_epoch():
        ...     return [y.tolist() async for x, y in loader]
        >>> asyncio.run(one_epoch())
        [[0, 1, 0, 1], [0, 1, 0, 1], [0, 1]]
        >>> trainer = Engine(lambda engine, batch: batch[0].sum().item())
        >>> trainer.run(loader, max_epochs=2).output   # the last batch: 8.0 + 9.0
        17.0
    """

    def __init__(self, dataset: Any, batch_size: int = 1, *, shuffle: bool = False, seed: int = 0,
                 drop_last: bool = False, collate_fn: Callable[[list[Any]], Any] | None = None,
                 concurrency: int = 32, prefetch: int = 4, device: Any = None,
                 pin_memory: bool | None = None, sampler: Iterable[int] | None = None,
                 transform: Callable[[Any, Any], Any] | None = None,
                 workers: int = 0, skip_errors: int = 0,
                 worker_init: Callable[[], Any] | None = None, rng: Rng = "torch",
                 worker_start: str = "fork") -> None:
        super().__init__()
        for name, value in (("batch_size", batch_size), ("concurrency", concurrency),
                            ("prefetch", prefetch)):
            check_int(name, value)
        for name, value in (("workers", workers), ("skip_errors", skip_errors)):
            check_int(name, value, minimum=0)
        if sampler is not None and shuffle:
            raise ValueError("sampler and shuffle=True are mutually exclusive (the sampler orders)")
        if not hasattr(dataset, "__len__"):
            raise TypeError(f"dataset must be map-style with __len__, got {type(dataset).__name__}; "
                            "use AsyncLoader.wrap() for iterables")
        if not any(hasattr(dataset, a) for a in ("aget", "__getitems__", "__getitem__")):
            raise TypeError(f"dataset {type(dataset).__name__} has no aget, __getitems__ or __getitem__")
        if rng not in ("torch", "numpy"):
            raise ValueError(f"rng must be 'torch' or 'numpy' (the generator a transform gets), "
                             f"got {rng!r}")
        if worker_start not in ("fork", "spawn"):
            raise ValueError(f"worker_start must be 'fork' or 'spawn', got {worker_start!r}")
        if transform is not None and not callable(transform):
            raise TypeError(f"transform must be callable as transform(item, generator), got "
                            f"{type(transform).__name__}")
        self.dataset, self.batch_size, self.shuffle, self.seed = dataset, batch_size, shuffle, seed
        self.drop_last, self.concurrency, self.prefetch = drop_last, concurrency, prefetch
        self.collate_fn = collate_fn or default_collate
        self.sampler = sampler
        self.device = torch.device(device) if device is not None else None
        on_cuda = self.device is not None and self.device.type == "cuda"
        self.pin_memory = on_cuda if pin_memory is None else bool(pin_memory and on_cuda)
        self.transform, self.workers, self.skip_errors = transform, workers, skip_errors
        self.skipped: list[tuple[int, int, str]] = []  # (epoch, index, error) of skipped items
        self.rng, self.worker_start = rng, worker_start
        # workers collate numpy arrays without torch; they become tensors here, in place
        self._arrays_as_tensors = collate_fn is None
        self._stage = CpuStage(dataset, transform, collate_fn, seed, worker_init, rng)
        # the workers read the items themselves: the loop fetches references (aget_ref)
        self._by_ref = bool(workers) and isinstance(dataset, FileItemSource)
        self._recycler = Recycler(prefetch)  # idle batch buffers, lent back to the workers
        self._pool: DataWorkerPool | None = None
        self._pool_finalizer: weakref.finalize[..., Any] | None = None

    def __len__(self) -> int:
        n = len(self.sampler) if self.sampler is not None else len(self.dataset)  # type: ignore[arg-type]
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def order(self, epoch: int) -> list[int]:
        """The item indices of epoch ``epoch``, in the order they are served."""
        if self.sampler is not None:
            if isinstance(self.sampler, EpochAware):
                self.sampler.set_epoch(epoch)
            return [int(i) for i in self.sampler]
        n = len(self.dataset)
        if not self.shuffle:
            return list(range(n))
        mixed = np.random.SeedSequence([self.seed & 0xFFFFFFFF, epoch]).generate_state(1)[0]
        gen = torch.Generator().manual_seed(int(mixed))
        return torch.randperm(n, generator=gen).tolist()

    def state_dict(self) -> dict[str, Any]:
        """The consumer's position; with a ``ResumableOrder`` sampler (``RemoteDataset.sampler``)
        also where the whole job is in the epoch, so a resume may change the world size."""
        sd: dict[str, Any] = dict(super().state_dict())
        if isinstance(self.sampler, ResumableOrder):
            sd["order"] = self.sampler.state_at(self._epoch, self._position * self.batch_size)
        return sd

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        super().load_state_dict(sd)
        if isinstance(self.sampler, ResumableOrder) and "order" in sd:
            self._position = self.sampler.resume(sd["order"], self._position, self.batch_size)

    # lifecycle ----------------------------------------------------------------------------------
    def _worker_pool(self) -> DataWorkerPool:
        pool = self._pool
        if pool is not None and pool.loop is not None and pool.loop is not asyncio.get_running_loop():
            pool.close()  # a previous event loop's pool (run_sync runs a loop per call)
            pool = None
        if pool is None:
            pool = DataWorkerPool(self.workers, self._stage.handle,
                                  initializer=self._stage.init_worker, start=self.worker_start)
            if self._pool_finalizer is not None:
                self._pool_finalizer.detach()
            self._pool_finalizer = weakref.finalize(self, pool.close)
            self._pool = pool
        return pool

    @property
    def worker_pids(self) -> list[int]:
        """Process ids of the live worker processes (empty with ``workers=0`` or when stopped)."""
        return [] if self._pool is None else self._pool.pids

    async def astart(self) -> AsyncLoader:
        """Start the worker processes now (they also start with the first stream) and return at
        once: their ``worker_init`` runs while this process goes on. ``async with`` calls it.
        No-op with ``workers=0``."""
        if self.workers:
            await self._worker_pool().astart()
        return self

    async def aclose(self) -> None:
        """Stop the worker processes and drop the next epoch's early start. The loader can be
        used again (workers start afresh)."""
        await self.adrop_prefetch()
        if self._pool is not None:
            await self._pool.aclose()
        self._recycler.drain()

    def close(self) -> None:
        """``aclose`` for synchronous code (``TrainJob`` resources): kills the workers at once."""
        early, self._early = self._early, None
        if early is not None:
            early[1].interrupt()
            if early[1].task is not None:
                early[1].task.cancel()
        if self._pool is not None:
            self._pool.close()
        self._recycler.drain()

    async def __aenter__(self) -> AsyncLoader:
        return await self.astart()

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # producing ----------------------------------------------------------------------------------
    def _new_budget(self) -> Budget:
        return Budget(self.prefetch, self.concurrency)

    async def _produce(self, stream: Stream, epoch: int, start: int) -> None:
        order = await to_io(self.order, epoch)
        bs = self.batch_size
        batches = [order[i:i + bs] for i in range(0, len(order), bs)]
        if self.drop_last and batches and len(batches[-1]) < bs:
            batches.pop()
        todo = batches[start:]
        stream.finish(len(todo))
        sem = stream.budget.fetches
        tasks: set[asyncio.Task[None]] = set()
        cancelled = False
        # each batch counts its failed items against skip_errors after the batch before it, so
        # which items are skipped, and which one is past the budget, does not depend on timing
        prev: asyncio.Future[None] | None = None
        try:
            for seq, indices in enumerate(todo):
                await stream.wait_room()
                gate: asyncio.Future[None] = asyncio.get_running_loop().create_future()
                task = asyncio.create_task(
                    self._assemble(stream, seq, epoch, indices, sem, _Turn(prev, gate)))
                prev = gate
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            self._start_early(stream, epoch + 1)  # every batch started: the next epoch may begin
            while tasks:
                await asyncio.wait(list(tasks))
        except asyncio.CancelledError:
            cancelled = not stream.complete  # stopped mid-epoch, not merely after its last batch
            raise
        finally:
            pending = [task for task in tasks if not task.done()]
            if pending and stream.dropped and self._pool is not None:
                # let the worker calls in flight end, so the workers stay for the next run
                await asyncio.wait(pending, timeout=DROP_GRACE_S)
                pending = [task for task in pending if not task.done()]
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)
            if (pending or cancelled and not stream.dropped) and self._pool is not None:
                await self._pool.aclose()  # calls in flight may never return: stop the workers

    async def _assemble(self, stream: Stream, seq: int, epoch: int, indices: list[int],
                        sem: asyncio.Semaphore, turn: _Turn) -> None:
        try:
            batch = await self._batch(epoch, indices, sem, turn)
            if self.pin_memory:
                batch = await to_io(pin_batch, batch)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            stream.put(seq, False, exc)
        else:
            stream.put(seq, True, batch)
        finally:
            turn.done()

    async def _batch(self, epoch: int, indices: list[int], sem: asyncio.Semaphore,
                     turn: _Turn) -> Any:
        ds = self.dataset
        if self.transform is None and hasattr(ds, "__getitems__"):
            job = BatchJob(epoch, indices, None, getitems=True)
            async with sem:
                return (await self._run_stage(job, what=indices))[0]
        tolerate = self.skip_errors > 0
        failures: list[tuple[int, BaseException]] = []
        if hasattr(ds, "aget") or self.workers == 0:
            fetched = await asyncio.gather(*(self._fetch(i, sem) for i in indices))
            if self.workers:
                fetched = await _within_files(fetched)
            kept = [(i, v) for i, (ok, v) in zip(indices, fetched, strict=True) if ok]
            failures = [(i, v) for i, (ok, v) in zip(indices, fetched, strict=True) if not ok]
            if failures and not tolerate:
                await turn.wait()
                self._account(epoch, failures)
            if self.workers == 0 and self.transform is None:
                batch = await to_io(self.collate_fn, [v for _, v in kept]) if kept else None
                await turn.wait()
                self._account(epoch, failures)
                return _whole(batch, indices)
            job = BatchJob(epoch, [i for i, _ in kept], [v for _, v in kept], tolerate)
        else:  # a sync dataset read in the worker processes
            job = BatchJob(epoch, indices, None, tolerate)
        batch, more = await self._run_stage(job, what=indices) if job.indices else (None, [])
        await turn.wait()
        self._account(epoch, failures + more)
        return _whole(batch, indices)

    async def _run_stage(self, job: BatchJob, what: Any) -> tuple[Any, list[tuple[int, BaseException]]]:
        """The CPU stage of one batch, in a worker process or on an abandonable thread."""
        if self.workers == 0:
            try:
                processed: tuple[Any, list[tuple[int, BaseException]]]
                processed = await _abandonable(self._stage.process, job, what=what)
                return processed
            except Exception as exc:
                raise DatasetError(what, exc) from exc
        pool = self._worker_pool()
        await pool.astart()  # a worker that cannot be started is not an item's error: raised as it is
        slots, files = file_slots(job.items or [])
        if files:  # items the worker reads itself from these files
            job.files, job.nfiles = slots, len(files)
        try:
            (header, failures), fds = await pool.call(job, self._recycler.take() + files)
        except WorkerDied as exc:
            index = exc.note if exc.note in job.indices else what
            raise DatasetError(index, exc) from exc
        except WorkerInitError:
            raise  # no item's fault: the message names what worker_init failed on
        except Exception as exc:
            raise DatasetError(what, exc) from exc
        as_tensors = self._arrays_as_tensors and not job.getitems  # __getitems__ is not collated
        return rebuild(header, fds, as_tensors, self._recycler), failures

    async def _fetch(self, index: int, sem: asyncio.Semaphore) -> tuple[bool, Any]:
        """``(True, item)`` or ``(False, error)``: one item, on the loop or a thread."""
        async with sem:
            try:
                if self._by_ref:
                    return True, await self.dataset.aget_ref(index)  # the worker reads it
                if hasattr(self.dataset, "aget"):
                    return True, await self.dataset.aget(index)
                return True, await _abandonable(self.dataset.__getitem__, index, what=index)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                return False, exc

    def _account(self, epoch: int, failures: list[tuple[int, BaseException]]) -> None:
        """Count failed items against ``skip_errors`` (per epoch); raise past the budget."""
        for index, exc in failures:
            used = sum(1 for e, _, _ in self.skipped if e == epoch)
            if used >= self.skip_errors:
                if self.skip_errors:
                    exc.add_note(f"skip_errors={self.skip_errors} items were already skipped in "
                                 f"epoch {epoch}; raise skip_errors to tolerate more")
                raise DatasetError(index, exc) from exc
            text = f"{type(exc).__name__}: {exc}"
            self.skipped.append((epoch, index, text))
            log.warning("skipped dataset item %s in epoch %s (%d of skip_errors=%d): %s",
                        index, epoch, used + 1, self.skip_errors, text)

    @staticmethod
    def wrap(source: Any, prefetch: int = 4) -> WrappedLoader:
        """Adapt any iterable, async iterable or torch DataLoader into a prefetching async iterable
        with the same stream protocol (ordering, bounded prefetch, engine fast path)."""
        return WrappedLoader(source, prefetch)


class _Turn:
    """A batch's place in the accounting order: wait for the batch before it, then let the next
    one go (when done, whatever happened)."""

    def __init__(self, before: asyncio.Future[None] | None, mine: asyncio.Future[None]) -> None:
        self.before, self.mine = before, mine

    async def wait(self) -> None:
        if self.before is not None:
            await asyncio.shield(self.before)

    def done(self) -> None:
        if not self.mine.done():
            self.mine.set_result(None)


MAX_JOB_FILES = 32  # distinct files whose items one worker job reads itself (fds per message)


async def _within_files(fetched: list[tuple[bool, object]]) -> list[tuple[bool, object]]:
    """Fetched items, with ``FileItem``s beyond ``MAX_JOB_FILES`` distinct files read here (on
    an I/O thread), so one job never carries more descriptors than a message can."""
    files: set[int] = set()
    out = []
    for ok, value in fetched:
        if ok and is_file_item(value):
            fd = value.fileno()
            if fd not in files and len(files) >= MAX_JOB_FILES:
                try:
                    value = await to_io(value.load, fd)
                except Exception as exc:
                    ok, value = False, exc
            else:
                files.add(fd)
        out.append((ok, value))
    return out


def _whole(batch: Any, indices: list[int]) -> Any:
    if batch is None:
        raise DatasetError(indices, RuntimeError("every item of this batch failed and was skipped; "
                                                 "a batch cannot be empty"))
    return batch


async def _abandonable(fn: Callable[..., Any], *args: Any, what: Any) -> Any:
    """Run sync dataset code on a daemon thread. Cancelled, the caller returns at once: the call,
    if still running (a read that hangs), is reported and abandoned, its result discarded."""
    fut: cf.Future[Any] = submit_abandonable(fn, *args)
    try:
        return await asyncio.wrap_future(fut)
    except asyncio.CancelledError:
        if not fut.done():  # a short grace, so a call about to finish is not reported
            await asyncio.wait([asyncio.wrap_future(fut)], timeout=ABANDON_GRACE_S)
        if not fut.done():
            log.warning("dataset item %s: sync read still running at cancellation; abandoned "
                        "(its result will be discarded)", what)
            fut.add_done_callback(_discard)
        raise


def _discard(fut: cf.Future[Any]) -> None:
    if not fut.cancelled():
        fut.exception()  # retrieved, so nothing is reported as never retrieved
