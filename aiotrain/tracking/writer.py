"""The metrics writer: an in-memory queue of records that the I/O executor appends to metrics.jsonl.

``Run.log`` only appends a dict to a deque (thread-safe, no lock) and, at most once a second
or when a few thousand records wait, submits a drain to the shared I/O executor
(``aiotrain.runtime.submit_io``). The drain takes everything queued at its start, encodes it
with msgspec as JSON lines and appends it to the file; drains are serialized by a lock, so a
``flush()`` that drains after a ``log`` call has returned sees that record. Only ``flush`` and
``close`` fsync: periodic drains hand the bytes to the OS, which keeps them through a process
crash (``os._exit``, a segfault) but not through a power loss.

No thread or timer is created here. Periodic flushing piggy-backs on ``log`` calls, and a run
used inside a running event loop adds a task that kicks a drain every second. In a purely
synchronous script, records logged just before the script stops logging stay in memory until
the next ``log``, ``flush()``, ``finish()`` or interpreter exit (an ``atexit`` hook finishes open
runs), so a hard crash there loses at most what was logged since the last drain.
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec

from ..runtime import submit_io
from .store import encode_nonfinite

__all__ = ["MetricsWriter"]

_NONFINITE_STR = {math.inf: "inf", -math.inf: "-inf"}


class MetricsWriter:
    """Appends queued records to ``path`` as JSON lines from the I/O executor.

    ``before_first_write`` runs once, in the writer, before the file is opened (the run creates
    its folder and metadata there, so a run that only logs never does disk work on the caller).
    """

    FLUSH_INTERVAL_S = 1.0
    FLUSH_RECORDS = 4096

    def __init__(self, path: Path, before_first_write: Callable[[], None] | None = None) -> None:
        self.path = path
        self.queue: deque[dict[str, Any]] = deque()
        self.last_kick = time.time()
        self.error: BaseException | None = None
        self._before = before_first_write
        self._lock = threading.Lock()
        self._file: Any = None
        self._inflight = False
        self._encoder = msgspec.json.Encoder()

    def kick(self, now: float) -> None:
        """Submit a background drain unless one is already queued (callable from any thread)."""
        self.last_kick = now
        if self._inflight:
            return
        self._inflight = True
        try:
            submit_io(self._background_drain)
        except RuntimeError:  # the executor is gone (interpreter exit): the final flush writes
            self._inflight = False

    def _background_drain(self) -> None:
        self._inflight = False
        try:
            self.drain(durable=False)
        except BaseException as exc:  # kept and raised by the next flush(): nobody awaits this
            self.error = exc

    def drain(self, durable: bool) -> int:
        """Write everything queued now; fsync when ``durable``. Returns the records written."""
        with self._lock:
            n = len(self.queue)
            records = [self.queue.popleft() for _ in range(n)]
            if self._file is None:
                if not records and not durable:
                    return 0
                self._open()
            if records:
                self._file.write(self._encoder.encode_lines([_encode(r) for r in records]))
            self._file.flush()
            if durable:
                os.fsync(self._file.fileno())
            return n

    def open(self) -> None:
        """Create the file (and run ``before_first_write``) now instead of at the first drain."""
        with self._lock:
            if self._file is None:
                self._open()

    def check(self) -> None:
        """Raise (once) the error a background drain hit, e.g. a full disk."""
        err, self.error = self.error, None
        if err is not None:
            raise OSError(f"writing {self.path} failed: {err}") from err

    def close(self) -> None:
        """Drain durably and close the file."""
        self.drain(durable=True)
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None

    def _open(self) -> None:
        if self._before is not None:
            self._before()
            self._before = None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        _drop_torn_tail(self.path)
        self._file = open(self.path, "ab")  # noqa: SIM115 - kept open for the run's lifetime


def _encode(record: dict[str, Any]) -> dict[str, Any]:
    """Make ``record`` JSON-safe in place: non-finite floats become "nan" / "inf" / "-inf"."""
    for key, value in record.items():
        cls = value.__class__
        if cls is float:
            if value != value:
                record[key] = "nan"
            elif value in _NONFINITE_STR:
                record[key] = _NONFINITE_STR[value]
        elif cls is dict or cls is list:
            record[key] = encode_nonfinite(value)
    return record


def _drop_torn_tail(path: Path) -> None:
    """Cut a torn last line left by a crash, so appended lines start on a line of their own."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return
    if size == 0:
        return
    with open(path, "r+b") as f:
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return
        chunk = 1 << 16
        end = size
        while end > 0:
            start = max(0, end - chunk)
            f.seek(start)
            cut = f.read(end - start).rfind(b"\n")
            if cut >= 0:
                f.truncate(start + cut + 1)
                return
            end = start
        f.truncate(0)
