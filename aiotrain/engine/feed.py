"""The engine's data feed: where the driver gets its batches, and which batch is next.

Two kinds of source, told apart by typed protocols: a ``StreamSource`` (AsyncLoader and wrapped
iterables) fills a ``BatchStream`` on the loop that the compute thread takes from without a loop
crossing per batch; any other iterable (a list, a torch DataLoader) is read on the compute thread.
The feed, not the source's prefetch position, counts the data epoch and position: that is what
exact resume restarts from.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Iterator
from typing import Any, Protocol, TypeGuard, TypeVar, runtime_checkable

from ..data.loader import AsyncLoader, StreamClosed
from ..protocols import EpochAware
from .bridge import Cancelled

__all__ = ["BatchStream", "Feed", "StreamEnd", "StreamSource"]


class StreamEnd(Exception):
    """The data source has no more batches for this pass."""


@runtime_checkable
class BatchStream(Protocol):
    """One ordered pass over a source's batches, filled on the loop."""

    def next_blocking(self) -> Any:
        """The next batch, waiting off the loop; StopIteration at the end, StreamClosed once
        interrupted."""

    def interrupt(self) -> None:
        """Wake a waiting consumer with StreamClosed (cancellation)."""

    async def aclose(self) -> None:
        """Stop filling and drop what was prefetched."""


@runtime_checkable
class StreamSource(Protocol):
    """A source that streams: AsyncLoader, ``AsyncLoader.wrap(...)``."""

    async def open_stream(self, epoch: int, start: int = 0) -> BatchStream:
        """Start a pass over epoch ``epoch`` from batch ``start`` (on the loop)."""

    async def adrop_prefetch(self) -> None:
        """Drop batches prefetched beyond the open streams (the next epoch's early start)."""


@runtime_checkable
class AsyncSource(Protocol):
    """Any async iterable (``async for batch in source``)."""

    def __aiter__(self) -> object: ...


T = TypeVar("T")


class Crossing(Protocol):
    """Runs a coroutine on the loop from the compute thread and waits for its result."""

    def __call__(self, awaitable: Awaitable[T], /) -> T: ...


#: What the feed reads: a streaming source, or any iterable read on the compute thread.
Source = StreamSource | Iterable[Any]


class NoData:
    """``run(data=None, epoch_length=n)``: ``n`` batches of None per pass, as Ignite."""

    def __init__(self, epoch_length: int) -> None:
        self.epoch_length = epoch_length

    def __iter__(self) -> Iterator[None]:
        return iter([None] * self.epoch_length)


def is_stream_source(data: object) -> TypeGuard[StreamSource]:
    """True for a StreamSource (its class defines ``open_stream``: a mock's attribute is not one)."""
    return isinstance(data, StreamSource) and callable(getattr(type(data), "open_stream", None))


def as_source(data: object) -> Source:
    """A source the feed can read: async iterables are wrapped into a stream."""
    if is_stream_source(data) or isinstance(data, Iterable):
        return data
    if isinstance(data, AsyncSource):
        return AsyncLoader.wrap(data)
    raise TypeError(f"data must be iterable or async iterable, got {type(data).__name__}")


class Feed:
    """Batches for the driver (compute thread). ``cross`` runs a coroutine on the loop and waits;
    ``epoch``/``pos`` are the data epoch and the batches taken in it."""

    def __init__(self, source: object, cross: Crossing, epoch: int, pos: int,
                 cancelled: Callable[[], bool], held: Iterator[Any] | None = None) -> None:
        self._cross, self._cancelled = cross, cancelled
        self.epoch, self.pos = epoch, pos
        self.origin = source
        self.source = as_source(source)
        self.stream: BatchStream | None = None
        self.it: Iterator[Any] | None = held  # an interrupted run's iterator, continued as is
        self._opened = held is not None

    def _open(self) -> None:
        source = self.source
        if is_stream_source(source):
            self.stream = self._cross(source.open_stream(self.epoch, self.pos))
        elif isinstance(source, Iterable):
            for target in (source, getattr(source, "sampler", None)):
                if isinstance(target, EpochAware):
                    target.set_epoch(self.epoch)
                    break
            self.it = iter(source)
            for _ in range(self.pos):  # an opaque iterable can only be skipped by reading it
                next(self.it)
        self._opened = True

    def next(self) -> Any:
        """The next batch; StreamEnd at the end of the pass."""
        if not self._opened:
            self._open()
        try:
            if self.stream is not None:
                batch = self.stream.next_blocking()
            else:
                assert self.it is not None  # _open set one of the two
                batch = next(self.it)
        except StopIteration:
            raise StreamEnd from None
        except StreamClosed:
            if self._cancelled():
                raise Cancelled from None
            raise
        self.pos += 1
        return batch

    def unget(self) -> None:
        """The last batch was taken but its step never ran: a resume takes it again."""
        self.pos -= 1

    def restart(self, source: object = None) -> None:
        """Start the next pass over the data (the next data epoch, from its first batch); over
        ``source`` when a handler put a new one in ``state.dataloader``, as Ignite allows."""
        self._close_stream()
        self.epoch += 1
        self.pos = 0
        if source is not None and source is not self.origin:
            self.origin, self.source = source, as_source(source)

    def replace(self, source: Iterable[Any]) -> None:
        """``engine.set_data``: read ``source`` from its first batch from now on."""
        self._close_stream()
        self.origin, self.source = source, as_source(source)
        self.pos = 0

    def _close_stream(self) -> None:
        old, self.stream, self.it, self._opened = self.stream, None, None, False
        if old is not None:
            self._cross(old.aclose())

    def interrupt(self) -> None:
        """Called on the loop at cancellation: wake a driver waiting for a batch."""
        if self.stream is not None:
            self.stream.interrupt()

    async def aclose(self) -> None:
        """The run ended: close the stream and drop the source's early start of an epoch that
        this run will not take, so no producer task outlives the run."""
        if self.stream is not None:
            await self.stream.aclose()
        if is_stream_source(self.source):
            await self.source.adrop_prefetch()
