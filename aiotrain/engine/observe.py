"""Observers: read-only Snapshots of an engine's events for the loop (an SSE client, a UI)."""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass

from ..events import EventFilter, EventKey
from ..values import as_number, number_or_value

__all__ = ["Observer", "Snapshot"]


@dataclass(frozen=True)
class Snapshot:
    """A read-only view of one event, for observers (``engine.observe``)."""

    event: str
    epoch: int
    iteration: int
    output: dict[str, float]
    metrics: dict[str, object]
    time: float

    def to_dict(self) -> dict[str, object]:
        return {"event": self.event, "epoch": self.epoch, "iteration": self.iteration,
                "output": self.output, "metrics": self.metrics, "time": self.time}


class Observer:
    """A bounded, drop-oldest queue of Snapshots read with ``async for`` on the loop it was
    created on (call it there)."""

    def __init__(self, maxsize: int) -> None:
        self.queue: deque[Snapshot] = deque(maxlen=maxsize)
        self.filters: dict[EventKey, EventFilter | None] = {}
        self._event = asyncio.Event()
        self._closed = False
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()

    def wants(self, engine: object, event: EventKey, count: int) -> bool:
        flt = self.filters.get(event)
        return flt is None or flt(engine, count)

    def push(self, snap: Snapshot) -> None:
        """Queue ``snap`` (on the observer's loop)."""
        self.queue.append(snap)
        self._event.set()

    def offer(self, snap: Snapshot) -> None:
        """Queue ``snap`` from any thread: directly on the loop's, else scheduled onto the loop."""
        if threading.get_ident() == self._loop_thread:
            self.push(snap)
        else:
            self._loop.call_soon_threadsafe(self.push, snap)

    def close(self) -> None:
        self._closed = True
        self._event.set()

    def __aiter__(self) -> Observer:
        return self

    async def __anext__(self) -> Snapshot:
        while not self.queue:
            if self._closed:
                self._closed = False  # the next run of the engine can be observed again
                raise StopAsyncIteration
            self._event.clear()
            await self._event.wait()
        return self.queue.popleft()


def scalars(output: object) -> dict[str, float]:
    """Numbers in a step output, for observers: a number, a 0-d tensor, or a dict of them."""
    items = output.items() if isinstance(output, dict) else [("output", output)]
    return {str(key): number for key, value in items if (number := as_number(value)) is not None}


def plain(metrics: Mapping[str, object]) -> dict[str, object]:
    """Metrics with one-element tensors as Python numbers."""
    return {k: number_or_value(v) for k, v in metrics.items()}
