"""The metrics writer: an in-memory queue of records that is appended to metrics.jsonl on time.

``Run.log`` only appends a dict to a deque (thread-safe, no lock). A record reaches the
operating system (so it survives the process being killed, SIGKILL included) at most
``flush_interval`` seconds after ``log`` returned: the loss window. The default is
``MetricsWriter.FLUSH_INTERVAL_S`` (1 s); ``Track.set_flush_interval`` or the
``AIOTRAIN_FLUSH_INTERVAL`` environment variable change it for new runs, and
``Track.run(..., flush_interval=...)`` for one run. With 0, every ``log`` call writes its
record before it returns (a few microseconds more per call, see the README's benchmark).

One background thread (created through ``aiotrain.runtime.spawn_daemon``, alive while some run
has records to write) wakes every half interval and drains every writer whose records wait,
so the window holds in plain scripts and in services alike, even when nothing else is logged.
A storm of records also drains early: ``FLUSH_RECORDS`` waiting records submit a drain to
the I/O executor, which bounds memory. A drain takes everything queued at its start, encodes
it with msgspec as JSON lines and appends it to the file, then appends the scalar values to the
file's binary column cache (``columns.py``, what the dashboard charts from); drains are serialized by a lock, so
a ``flush()`` that drains after a ``log`` call has returned sees that record. Only ``flush``
and ``close`` fsync: the window is about the process dying, not the machine losing power.

``rewind_history(path, records)`` cuts a history back to its first ``records`` records before a resumed
run appends to it (what its checkpoint covered); the records cut go to ``NAME.rewound.jsonl``
beside it first, so nothing logged is lost. The column cache needs no care: a cache past the
cut fails its check and is rebuilt when the writer opens the file.
"""

from __future__ import annotations

import math
import os
import threading
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec

from ..runtime import spawn_daemon, submit_io
from .columns import ColumnAppender, drop_torn_tail, hold_for_writing, let_go
from .store import encode_nonfinite

__all__ = ["MetricsWriter", "rewind_history"]

_NONFINITE_STR = {math.inf: "inf", -math.inf: "-inf"}


class MetricsWriter:
    """Appends queued records to ``path`` as JSON lines, within ``interval`` seconds of ``log``.

    ``before_first_write`` runs once, in the writer, before the file is opened (the run creates
    its folder and metadata there, so a run that only logs never does disk work on the caller).
    ``interval`` 0 writes each record on the caller as ``log`` queues it (``sync``).
    """

    FLUSH_INTERVAL_S = 1.0
    FLUSH_RECORDS = 4096
    CACHE_RECORDS = 1024

    def __init__(self, path: Path, before_first_write: Callable[[], None] | None = None,
                 interval: float | None = None) -> None:
        self.path = path
        self.interval = self.FLUSH_INTERVAL_S if interval is None else float(interval)
        self.sync = self.interval == 0
        self.queue: deque[dict[str, Any]] = deque()
        self.scheduled = False  # registered with the flusher thread
        self.error: BaseException | None = None
        self._before = before_first_write
        self._lock = threading.Lock()
        self._file: Any = None
        self._size = 0
        self._columns: ColumnAppender | None = None
        self._pending: list[dict[str, Any]] = []  # written to the jsonl, not yet to the cache
        self._pending_lines: list[bytes] = []
        self._pending_at = 0
        self._inflight = False
        self._encoder = msgspec.json.Encoder()

    def schedule(self) -> None:
        """Have the flusher thread drain this writer on time from now on."""
        if not self.sync:
            self.scheduled = True
            _flusher.add(self)

    def kick(self) -> None:
        """Submit a background drain unless one is already queued (callable from any thread)."""
        if self._inflight:
            return
        self._inflight = True
        try:
            submit_io(self._background_drain)
        except RuntimeError:  # the executor is gone (interpreter exit): the flusher or close writes
            self._inflight = False

    def _background_drain(self) -> None:
        self._inflight = False
        self.drain_quietly()

    def drain_quietly(self) -> None:
        """``drain`` for background callers: an error is kept for the next ``check``."""
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
                encoded = [_encode(r) for r in records]
                lines = self._encoder.encode_lines(encoded)
                try:
                    self._file.write(lines)
                    self._file.flush()  # the jsonl first: the cache never covers more than it holds
                except BaseException:
                    self._drop_cache()  # the jsonl's length is unknown now
                    raise
                self._cache(encoded, lines)
                self._size += len(lines)
            else:
                self._file.flush()
            if durable:
                self._append_cache()
                os.fsync(self._file.fileno())
                if self._columns is not None:
                    self._columns.sync()
            return n

    def _cache(self, records: list[dict[str, Any]], lines: bytes) -> None:
        """Queue written lines for the column cache, appended once ``CACHE_RECORDS`` wait (or
        at the next durable drain): a reader decodes the few lines past the cache's last mark,
        and a log call with ``interval`` 0 does not pay for a cache append each."""
        if self._columns is None:
            return
        if not self._pending:
            self._pending_at = self._size
        self._pending.extend(records)
        self._pending_lines.append(lines)
        if len(self._pending) >= self.CACHE_RECORDS:
            self._append_cache()

    def _append_cache(self) -> None:
        """Append the queued lines to the column cache; after a failure the cache stays behind
        (readers decode the jsonl past its last mark) until the file is next opened."""
        records, lines = self._pending, b"".join(self._pending_lines)
        self._pending, self._pending_lines = [], []
        if self._columns is None or not records:
            return
        try:
            self._columns.append(records, lines, self._pending_at)
        except (OSError, ValueError):
            self._drop_cache()

    def _drop_cache(self) -> None:
        self._pending, self._pending_lines = [], []
        if self._columns is not None:
            self._columns.close()
            self._columns = None

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
        if self.scheduled:
            _flusher.remove(self)
            self.scheduled = False
        self.drain(durable=True)
        with self._lock:
            if self._file is not None:
                let_go(self._file)
                self._file.close()
                self._file = None
            self._drop_cache()

    def _open(self) -> None:
        if self._before is not None:
            self._before()
            self._before = None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        drop_torn_tail(self.path)
        self._file = open(self.path, "ab")  # noqa: SIM115 - kept open for the run's lifetime
        self._size = os.fstat(self._file.fileno()).st_size
        if not hold_for_writing(self._file):  # a cache build (or another writer) holds it
            return
        try:
            self._columns = ColumnAppender.open(self.path)
        except (OSError, ValueError):  # the chart decodes the jsonl instead; the history is whole
            self._columns = None


def rewind_history(path: Path, records: int) -> tuple[int, set[str]]:
    """Keep the first ``records`` records of the history at ``path`` (which no writer has open)
    and move the rest to ``NAME.rewound.jsonl`` (appended and fsync'd before the cut, so a crash
    in between loses nothing). Returns how many records were moved and the keys they held."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return 0, set()
    cut, seen = 0, 0
    while seen < records and cut < len(data):
        end = data.find(b"\n", cut)
        if end < 0:  # a torn last line: not a record
            break
        if data[cut:end].strip():
            seen += 1
        cut = end + 1
    tail = data[cut:]
    lines = [line for line in tail.split(b"\n") if line.strip()]
    if not lines:
        return 0, set()
    keys: set[str] = set()
    for line in lines:
        try:
            keys.update(msgspec.json.decode(line))
        except msgspec.DecodeError:  # torn: moved as it is
            pass
    with open(path.with_suffix(".rewound.jsonl"), "ab") as f:
        f.write(tail if tail.endswith(b"\n") else tail + b"\n")
        f.flush()
        os.fsync(f.fileno())
    with open(path, "r+b") as f:
        f.truncate(cut)
        os.fsync(f.fileno())
    return len(lines), keys - {"step", "timestamp"}


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


class _Flusher:
    """The background thread that drains every scheduled writer at least every half interval.

    It runs while some writer is scheduled and returns when the last one closes, so a process
    that tracks nothing has no such thread; it is a daemon, so it never delays interpreter
    exit (the ``atexit`` hook finishes open runs).
    """

    MAX_SLEEP_S = 3600.0

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._writers: set[MetricsWriter] = set()
        self._wake = threading.Event()
        self._running = False

    def add(self, writer: MetricsWriter) -> None:
        with self._lock:
            self._writers.add(writer)
            if self._running:
                self._wake.set()  # its interval may be shorter than the current sleep
                return
            self._running = True
        spawn_daemon(self._main, name="aiotrain-track-flush")

    def remove(self, writer: MetricsWriter) -> None:
        with self._lock:
            self._writers.discard(writer)
            last = not self._writers
        if last:
            self._wake.set()

    def _main(self) -> None:
        while True:
            with self._lock:
                if not self._writers:
                    self._running = False
                    return
                period = min(w.interval for w in self._writers) / 2
            self._wake.wait(min(period, self.MAX_SLEEP_S))
            self._wake.clear()
            with self._lock:
                writers = list(self._writers)
            for writer in writers:
                if writer.queue:
                    writer.drain_quietly()


_flusher = _Flusher()
