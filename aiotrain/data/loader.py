"""AsyncLoader: batches fetched as tasks on the event loop, delivered in sampler order.

Items of a map-style dataset are fetched concurrently (``aget`` coroutines as tasks, sync
``__getitem__`` calls in the I/O executor, or one ``__getitems__`` call per batch), at most
``concurrency`` at a time, and assembled into batches that come out in sampler order even though
items finish out of order. At most ``prefetch`` batches are started but not yet consumed, which
bounds memory. The same ordered stream serves ``async for`` on the loop and, without a loop
crossing per batch, the Engine's compute thread.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import math
import threading
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

import numpy as np
import torch
from torch.utils.data import default_collate

from ..protocols import EpochAware
from ..runtime import to_io
from ..values import check_int
from .batch import move_batch, pin_batch

__all__ = ["AsyncLoader", "DatasetError", "StreamClosed", "sized_len"]


class DatasetError(RuntimeError):
    """A dataset item failed to load; ``index`` says which, ``__cause__`` holds the original."""

    def __init__(self, index: Any, exc: BaseException) -> None:
        super().__init__(f"loading dataset item {index} failed: {type(exc).__name__}: {exc}")
        self.index = index


class StreamClosed(RuntimeError):
    """The stream was closed (the run was cancelled) while a consumer waited for a batch."""


class _Stream:
    """One pass over a sequence of batches: filled on the loop, in order, bounded.

    Producers ``put(seq, ...)`` in any order; consumers take ``seq`` 0, 1, 2, ... either on the
    loop (``await anext()``) or from another thread (``next_blocking()``).
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, prefetch: int,
                 on_consume: Callable[[], None], finalize: Callable[[Any], Any]) -> None:
        self._loop = loop
        self._prefetch = prefetch
        self._on_consume = on_consume
        self._finalize = finalize
        self._cond = threading.Condition()
        self._ready: dict[int, tuple[bool, Any]] = {}
        self._next = 0
        self._total: int | None = None
        self._error: BaseException | None = None
        self._closed = False
        self._arrived = asyncio.Event()
        self._room = asyncio.Event()
        self.outstanding = 0  # batches started and not yet consumed (loop-side count)
        self.task: asyncio.Task[None] | None = None

    # producer side (loop) -------------------------------------------------------------------
    async def wait_room(self) -> None:
        """Wait until fewer than ``prefetch`` batches are started and unconsumed; take a slot."""
        while self.outstanding >= self._prefetch:
            self._room.clear()
            await self._room.wait()
        self.outstanding += 1

    def put(self, seq: int, ok: bool, value: Any) -> None:
        with self._cond:
            self._ready[seq] = (ok, value)
            self._cond.notify_all()
        self._arrived.set()

    def fail(self, exc: BaseException) -> None:
        """The producer broke: consumers get ``exc`` once the batches before it are taken."""
        with self._cond:
            self._error = exc
            self._cond.notify_all()
        self._arrived.set()

    def finish(self, total: int) -> None:
        """The producer will put no more than ``total`` batches."""
        with self._cond:
            self._total = total
            self._cond.notify_all()
        self._arrived.set()

    def _consumed(self) -> None:
        self.outstanding -= 1
        self._room.set()
        self._on_consume()

    # consumer side --------------------------------------------------------------------------
    def _take(self) -> tuple[bool, Any] | None:
        """The next batch if it is ready (caller holds the lock); raise at the end or when closed."""
        item = self._ready.pop(self._next, None)
        if item is not None:
            self._next += 1
            return item
        if self._error is not None:
            raise self._error
        if self._total is not None and self._next >= self._total:
            raise StopIteration
        if self._closed:
            raise StreamClosed("the data stream was closed while waiting for a batch")
        return None

    def next_blocking(self) -> Any:
        """Take the next batch from a thread other than the loop's; StopIteration at the end."""
        with self._cond:
            while (item := self._take()) is None:
                self._cond.wait()
        self._loop.call_soon_threadsafe(self._consumed)
        return self._unwrap(item)

    async def anext(self) -> Any:
        """Take the next batch on the loop; StopAsyncIteration at the end."""
        while True:
            with self._cond:
                try:
                    item = self._take()
                except StopIteration:
                    raise StopAsyncIteration from None
            if item is not None:
                break
            self._arrived.clear()
            await self._arrived.wait()
        self._consumed()
        return self._unwrap(item)

    def _unwrap(self, item: tuple[bool, Any]) -> Any:
        ok, value = item
        if not ok:
            raise value
        return self._finalize(value)

    # shutdown -------------------------------------------------------------------------------
    def interrupt(self) -> None:
        """Wake any waiting consumer with StreamClosed (used at cancellation)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._arrived.set()

    async def aclose(self) -> None:
        """Stop the producer and its fetches, drop prefetched batches, wake consumers."""
        self.interrupt()
        if self.task is not None and not self.task.done():
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        self._ready.clear()


class _StreamingLoader(abc.ABC):
    """What AsyncLoader and wrapped iterables share: streams, epochs, position, state."""

    prefetch: int
    device: torch.device | None

    def __init__(self) -> None:
        self._epoch = 0
        self._position = 0

    @abc.abstractmethod
    async def _produce(self, stream: _Stream, epoch: int, start: int) -> None:
        """Fill ``stream`` with epoch ``epoch``'s batches from batch ``start``, in order."""

    def _finalize(self, batch: Any) -> Any:
        return move_batch(batch, self.device) if self.device is not None else batch

    async def _open_stream(self, epoch: int, start: int = 0) -> _Stream:
        """Start filling a stream with epoch ``epoch``'s batches from batch ``start`` (loop only)."""
        self._epoch, self._position = epoch, start
        stream = _Stream(asyncio.get_running_loop(), self.prefetch, self._advance, self._finalize)
        stream.task = asyncio.create_task(self._run_producer(stream, epoch, start))
        return stream

    async def _run_producer(self, stream: _Stream, epoch: int, start: int) -> None:
        try:
            await self._produce(stream, epoch, start)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a sampler or source that raised: the consumer sees it in order
            stream.fail(exc)

    def _advance(self) -> None:
        self._position += 1

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Any]:
        stream = await self._open_stream(self._epoch, self._position)
        try:
            while True:
                try:
                    batch = await stream.anext()
                except StopAsyncIteration:
                    break
                yield batch
            self._epoch, self._position = self._epoch + 1, 0
        finally:
            await stream.aclose()

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch whose order the next pass uses (0-based), from its first batch."""
        self._epoch, self._position = check_int("epoch", epoch, minimum=0), 0

    def state_dict(self) -> dict[str, int]:
        """The consumer's position (epoch, batches taken), not the prefetch position."""
        return {"epoch": self._epoch, "position": self._position}

    def load_state_dict(self, sd: dict[str, int]) -> None:
        """Resume the next pass at ``sd``'s position without fetching the skipped items."""
        try:
            epoch, position = int(sd["epoch"]), int(sd["position"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"loader state_dict needs integer 'epoch' and 'position': {sd!r}") from exc
        if epoch < 0 or position < 0:
            raise ValueError(f"loader state_dict has negative values: {sd!r}")
        self._epoch, self._position = epoch, position


class AsyncLoader(_StreamingLoader):
    """Prefetching, order-preserving batch loader for map-style datasets (docs/data.md).

    ``dataset`` has ``__len__`` and ``async def aget(i)``, or ``__getitems__(indices)`` (one call
    per batch, returned as the batch, not collated), or sync ``__getitem__``. Epoch ``e``'s order
    is a function of ``(seed, e)`` when shuffling; with ``sampler`` it is the sampler's order
    (its ``set_epoch`` is called with the epoch, so DistributedSampler shards and reshuffles).
    With ``device`` set, batches are moved there by the consumer (pinned, non-blocking on CUDA).
    """

    def __init__(self, dataset: Any, batch_size: int = 1, *, shuffle: bool = False, seed: int = 0,
                 drop_last: bool = False, collate_fn: Callable[[list[Any]], Any] | None = None,
                 concurrency: int = 32, prefetch: int = 4, device: Any = None,
                 pin_memory: bool | None = None, sampler: Iterable[int] | None = None) -> None:
        super().__init__()
        for name, value in (("batch_size", batch_size), ("concurrency", concurrency),
                            ("prefetch", prefetch)):
            check_int(name, value)
        if sampler is not None and shuffle:
            raise ValueError("sampler and shuffle=True are mutually exclusive (the sampler orders)")
        if not hasattr(dataset, "__len__"):
            raise TypeError(f"dataset must be map-style with __len__, got {type(dataset).__name__}; "
                            "use AsyncLoader.wrap() for iterables")
        if not any(hasattr(dataset, a) for a in ("aget", "__getitems__", "__getitem__")):
            raise TypeError(f"dataset {type(dataset).__name__} has no aget, __getitems__ or __getitem__")
        self.dataset, self.batch_size, self.shuffle, self.seed = dataset, batch_size, shuffle, seed
        self.drop_last, self.concurrency, self.prefetch = drop_last, concurrency, prefetch
        self.collate_fn = collate_fn or default_collate
        self.sampler = sampler
        self.device = torch.device(device) if device is not None else None
        on_cuda = self.device is not None and self.device.type == "cuda"
        self.pin_memory = on_cuda if pin_memory is None else bool(pin_memory and on_cuda)

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

    async def _produce(self, stream: _Stream, epoch: int, start: int) -> None:
        order = await to_io(self.order, epoch)
        bs = self.batch_size
        batches = [order[i:i + bs] for i in range(0, len(order), bs)]
        if self.drop_last and batches and len(batches[-1]) < bs:
            batches.pop()
        todo = batches[start:]
        stream.finish(len(todo))
        sem = asyncio.Semaphore(self.concurrency)
        tasks: set[asyncio.Task[None]] = set()
        try:
            for seq, indices in enumerate(todo):
                await stream.wait_room()
                task = asyncio.create_task(self._assemble(stream, seq, indices, sem))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            while tasks:
                await asyncio.wait(list(tasks))
        finally:
            for task in list(tasks):
                task.cancel()
            if tasks:
                await asyncio.gather(*tasks, return_exceptions=True)

    async def _assemble(self, stream: _Stream, seq: int, indices: list[int],
                        sem: asyncio.Semaphore) -> None:
        try:
            ds = self.dataset
            if hasattr(ds, "__getitems__"):
                async with sem:
                    batch = await to_io(_call_getitems, ds, indices)
            else:
                items = await asyncio.gather(*(self._fetch(i, sem) for i in indices))
                batch = await to_io(self.collate_fn, items)
            if self.pin_memory:
                batch = await to_io(pin_batch, batch)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            stream.put(seq, False, exc)
        else:
            stream.put(seq, True, batch)

    async def _fetch(self, index: int, sem: asyncio.Semaphore) -> Any:
        async with sem:
            try:
                if hasattr(self.dataset, "aget"):
                    return await self.dataset.aget(index)
                return await to_io(self.dataset.__getitem__, index)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                raise DatasetError(index, exc) from exc

    @staticmethod
    def wrap(source: Any, prefetch: int = 4) -> _WrappedLoader:
        """Adapt any iterable, async iterable or torch DataLoader into a prefetching async iterable
        with the same stream protocol (ordering, bounded prefetch, engine fast path)."""
        return _WrappedLoader(source, prefetch)


def _call_getitems(ds: Any, indices: list[int]) -> Any:
    try:
        return ds.__getitems__(indices)
    except Exception as exc:
        raise DatasetError(indices, exc) from exc


class _WrappedLoader(_StreamingLoader):
    """An iterable / async iterable read ``prefetch`` items ahead (AsyncLoader.wrap).

    Sync iterables are advanced in the I/O executor, so a slow ``next`` never blocks the loop.
    Resuming at a position reads and drops the skipped items: an opaque iterable cannot seek.
    """

    def __init__(self, source: Any, prefetch: int = 4) -> None:
        super().__init__()
        check_int("prefetch", prefetch)
        if not (hasattr(source, "__iter__") or hasattr(source, "__aiter__")):
            raise TypeError(f"AsyncLoader.wrap needs an iterable or async iterable, got "
                            f"{type(source).__name__}")
        self.source, self.prefetch, self.device = source, prefetch, None
        self.sampler = getattr(source, "sampler", None)

    def __len__(self) -> int:
        return len(self.source)  # TypeError for unsized sources, as len() of them would

    async def _produce(self, stream: _Stream, epoch: int, start: int) -> None:
        for target in (self.source, self.sampler):
            if isinstance(target, EpochAware):
                target.set_epoch(epoch)
                break
        n = 0
        async for item in self._items():
            if n >= start:
                await stream.wait_room()
                stream.put(n - start, True, item)
            n += 1
        stream.finish(max(n - start, 0))

    async def _items(self) -> AsyncIterator[Any]:
        if hasattr(self.source, "__aiter__"):
            async for item in self.source:
                yield item
            return
        end = object()
        it = await to_io(iter, self.source)
        while (item := await to_io(next, it, end)) is not end:
            yield item


def sized_len(obj: Any) -> int | None:
    """``len(obj)``, or None when ``obj`` has no length."""
    try:
        return len(obj)
    except TypeError:
        return None
