"""The ordered batch stream that every aiotrain loader serves, and the loaders built on it.

A ``Stream`` is one pass over an epoch's batches: producers on the loop ``put`` them in any
order, consumers take them in order, on the loop (``await anext()``) or from the Engine's compute
thread (``next_blocking()``) without a loop crossing per batch. A ``Budget`` bounds the batches
started and not yet consumed (``prefetch``), shared by an epoch and the next epoch's early start.
``StreamingLoader`` is the base that opens streams, starts the next epoch early, and keeps the
consumer's position (``state_dict``); ``AsyncLoader`` (``loader``) fills its streams from a
map-style dataset, ``WrappedLoader`` (``AsyncLoader.wrap``) from any iterable.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any

import torch

from ..protocols import EpochAware
from ..runtime import LoopPortal, to_io
from ..values import check_int
from .batch import move_batch

__all__ = ["Budget", "Stream", "StreamClosed", "StreamingLoader", "WrappedLoader", "sized_len"]


class StreamClosed(RuntimeError):
    """The stream was closed (the run was cancelled) while a consumer waited for a batch."""


class Budget:
    """Batch slots shared by an epoch's stream and the next epoch's early start: ``prefetch``
    batches at most are started and not yet consumed, across both."""

    def __init__(self, limit: int, concurrency: int = 1) -> None:
        self.limit, self.used = limit, 0
        self._room = asyncio.Event()
        self.fetches = asyncio.Semaphore(concurrency)  # items in flight, across both epochs

    async def claim(self) -> None:
        """Wait for a free slot and take it."""
        while self.used >= self.limit:
            self._room.clear()
            await self._room.wait()
        self.used += 1

    def give(self, n: int = 1) -> None:
        """Free ``n`` slots (batches consumed, or dropped with their stream)."""
        self.used -= n
        self._room.set()


class Stream:
    """One pass over a sequence of batches: filled on the loop, in order, bounded.

    Producers ``put(seq, ...)`` in any order; consumers take ``seq`` 0, 1, 2, ... either on the
    loop (``await anext()``) or from another thread (``next_blocking()``).
    """

    def __init__(self, portal: LoopPortal, budget: Budget,
                 on_consume: Callable[[], None], finalize: Callable[[Any], Any]) -> None:
        self._portal = portal
        self.budget = budget
        self.on_consume = on_consume
        self._finalize = finalize
        self._cond = threading.Condition()
        self._ready: dict[int, tuple[bool, Any]] = {}
        self._next = 0
        self._total: int | None = None
        self._error: BaseException | None = None
        self._closed = False
        # closed because nobody will read it (an early start no run takes), not by a cancelled
        # run: its worker calls get a grace to finish, and the workers are kept
        self.dropped = False
        self._arrived = asyncio.Event()
        self.outstanding = 0  # batches started and not yet consumed (loop-side count)
        self.task: asyncio.Task[None] | None = None
        self.on_close: Callable[[Stream], Any] | None = None  # async hook (the loader's)

    # producer side (loop) -------------------------------------------------------------------
    async def wait_room(self) -> None:
        """Wait until fewer than ``prefetch`` batches are started and unconsumed; take a slot."""
        await self.budget.claim()
        self.outstanding += 1

    @property
    def complete(self) -> bool:
        """Every batch of this stream was handed to the consumer."""
        return self._total is not None and self._next >= self._total and self._error is None

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
        if self.outstanding > 0:
            self.outstanding -= 1
            self.budget.give()
        self.on_consume()

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
        self._portal.notify(self._consumed)
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
        if self.outstanding:
            self.budget.give(self.outstanding)
            self.outstanding = 0
        hook, self.on_close = self.on_close, None
        if hook is not None:
            await hook(self)


class StreamingLoader(abc.ABC):
    """What AsyncLoader and wrapped iterables share: streams, epochs, position, state."""

    prefetch: int
    device: torch.device | None

    def __init__(self) -> None:
        self._epoch = 0
        self._position = 0
        self._early: tuple[int, Stream] | None = None  # the next epoch, started early

    @abc.abstractmethod
    async def _produce(self, stream: Stream, epoch: int, start: int) -> None:
        """Fill ``stream`` with epoch ``epoch``'s batches from batch ``start``, in order."""

    def _finalize(self, batch: Any) -> Any:
        return move_batch(batch, self.device) if self.device is not None else batch

    async def open_stream(self, epoch: int, start: int = 0) -> Stream:
        """Start filling a stream with epoch ``epoch``'s batches from batch ``start`` (loop only).

        When that epoch was already started early (the previous stream was consumed to its end),
        its stream is handed over with the batches it has prefetched."""
        early, self._early = self._early, None
        if early is not None:
            if early[0] == epoch and start == 0 and early[1].task is not None \
                    and early[1].task.get_loop() is asyncio.get_running_loop():
                self._epoch, self._position = epoch, start
                return early[1]
            early[1].dropped = True
            await early[1].aclose()
        self._epoch, self._position = epoch, start
        return self._start_stream(epoch, start, self._new_budget())

    def _new_budget(self) -> Budget:
        return Budget(self.prefetch)

    def _start_stream(self, epoch: int, start: int, budget: Budget) -> Stream:
        stream = Stream(LoopPortal(), budget, self._advance, self._finalize)
        stream.on_close = self._stream_closed
        stream.task = asyncio.create_task(self._run_producer(stream, epoch, start))
        return stream

    def _start_early(self, current: Stream, epoch: int) -> None:
        """Start epoch ``epoch`` (the one after ``current``'s) within ``current``'s budget."""
        if self._early is None:
            self._early = (epoch, self._start_stream(epoch, 0, current.budget))

    async def adrop_prefetch(self) -> None:
        """Stop the next epoch's early start, if any (a run that ends needs no next epoch; a
        later pass starts afresh)."""
        early, self._early = self._early, None
        if early is not None:
            early[1].dropped = True
            await early[1].aclose()

    async def _stream_closed(self, stream: Stream) -> None:
        """A stream closed before its end takes the early-started next epoch with it."""
        if not stream.complete and self._early is not None and self._early[1].budget is stream.budget:
            early, self._early = self._early[1], None
            await early.aclose()

    async def _run_producer(self, stream: Stream, epoch: int, start: int) -> None:
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
        stream = await self.open_stream(self._epoch, self._position)
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


class WrappedLoader(StreamingLoader):
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

    async def _produce(self, stream: Stream, epoch: int, start: int) -> None:
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
