"""What a remote dataset reports: bytes moved, requests in flight, cache hits, time waiting on data.

One ``TransferStats`` per dataset, updated on the event loop by the source and the shard cache,
and read as ordinary metrics (``metrics()``: ``data/bytes_per_s`` and the rest), which a
TrackingHandler or ``attach_data_metrics`` logs to the run, so the dashboard charts them like any
other metric. Time waiting on data is measured where it is felt: between the engine asking for a
batch and getting it (``GET_BATCH_STARTED`` to ``GET_BATCH_COMPLETED``), or around ``anext`` by
a hand-written loop (``waiting()``).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

__all__ = ["DataMetrics", "TransferStats", "attach_data_metrics"]


@dataclass
class TransferStats:
    """Counters of one dataset's transfers and cache; ``metrics()`` turns them into rates."""

    bytes: int = 0  # payload bytes received from the store
    requests: int = 0  # requests answered (any outcome)
    retries: int = 0  # tries that failed transiently and were tried again
    in_flight: int = 0  # requests started and not yet answered
    hits: int = 0  # items served from the cache (memory or disk)
    misses: int = 0  # items that waited for a download or a range read
    wait_s: float = 0.0  # time the consumer spent waiting for data
    _mark: tuple[float, int, int, int, float] = field(default_factory=lambda: (time.monotonic(), 0, 0, 0, 0.0))

    def request_started(self) -> None:
        self.in_flight += 1

    def request_done(self, nbytes: int) -> None:
        self.in_flight -= 1
        self.requests += 1
        self.bytes += nbytes

    @contextlib.contextmanager
    def waiting(self) -> Iterator[None]:
        """Count the time inside the block as time waiting on data."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.wait_s += time.perf_counter() - start

    def hit_rate(self) -> float:
        """Share of items served from the cache (1.0 before any item)."""
        total = self.hits + self.misses
        return self.hits / total if total else 1.0

    def metrics(self, prefix: str = "data/") -> dict[str, float]:
        """Rates since the previous call: bytes/s, requests/s, the cache hit rate and the share
        of wall time spent waiting on data; plus requests in flight now and the totals."""
        now = time.monotonic()
        t0, bytes0, hits0, misses0, wait0 = self._mark
        span = max(now - t0, 1e-9)
        hits, misses = self.hits - hits0, self.misses - misses0
        self._mark = (now, self.bytes, self.hits, self.misses, self.wait_s)
        return {
            f"{prefix}bytes_per_s": (self.bytes - bytes0) / span,
            f"{prefix}requests_in_flight": float(self.in_flight),
            f"{prefix}cache_hit_rate": hits / (hits + misses) if hits + misses else 1.0,
            f"{prefix}wait_share": min((self.wait_s - wait0) / span, 1.0),
            f"{prefix}wait_s": self.wait_s,
            f"{prefix}bytes": float(self.bytes),
            f"{prefix}retries": float(self.retries),
        }


def attach_data_metrics(engine: Any, stats: TransferStats, run: Any = None, every: int = 50) -> None:
    """Measure the engine's time waiting on data into ``stats`` and log ``stats.metrics()`` to
    ``run`` (a tracking Run, or anything with ``log(metrics, step)``; None: measure only) every
    ``every`` iterations. The handlers are sync: they run on the compute thread and cost a clock
    read each."""
    from ...events import Events

    started: list[float] = [0.0]

    def batch_started() -> None:
        started[0] = time.perf_counter()

    def batch_completed() -> None:
        stats.wait_s += time.perf_counter() - started[0]

    def log_metrics(eng: Any) -> None:
        if run is not None:
            run.log(stats.metrics(), step=eng.state.iteration)

    engine.add_event_handler(Events.GET_BATCH_STARTED, batch_started)
    engine.add_event_handler(Events.GET_BATCH_COMPLETED, batch_completed)
    engine.add_event_handler(Events.ITERATION_COMPLETED(every=every), log_metrics)


class DataMetrics:
    """A TrainJob part (``Task(handlers=[DataMetrics(dataset.stats)])``): the data figures of
    ``attach_data_metrics``, logged to the job's tracked run every ``every`` iterations."""

    def __init__(self, stats: TransferStats, every: int = 50) -> None:
        self.stats, self.every = stats, every

    def attach(self, ctx: Any) -> None:
        attach_data_metrics(ctx.trainer, self.stats, ctx.run, self.every)
