"""To daemon threads: for work that may never return and may be abandoned.

Nobody joins these threads, so a hung call is simply left behind (daemon: interpreter exit does
not wait for it) and its caller moves on: a validation check bounded by a timeout
(``spawn_daemon``), a sync dataset read that a cancelled stream stops waiting for
(``submit_abandonable``, on reusable threads: a thread start costs ~100 us of CPU, too much per
item). The reusable pool is created on first use.
"""

from __future__ import annotations

import concurrent.futures as cf
import functools
import itertools
import queue
import threading
from collections.abc import Callable
from typing import TypeVar, TypeVarTuple, Unpack

from .waiting import settle

__all__ = ["spawn_daemon", "submit_abandonable"]

T = TypeVar("T")
Args = TypeVarTuple("Args")

_ids = itertools.count(1)
_Item = Callable[[], None]  # a call and the future it settles, bound together


def spawn_daemon(fn: Callable[..., T], /, *args: object, name: str = "aiotrain-daemon",
                 **kwargs: object) -> cf.Future[T]:
    """Run ``fn`` on a daemon thread nobody joins; for work that may hang and be abandoned.

    The validator uses it to bound a check by a timeout: if the check never returns, its thread
    is left behind (daemon, so interpreter exit does not wait for it) and the caller moves on.
    """
    fut: cf.Future[T] = cf.Future()
    threading.Thread(target=settle, args=(fut, functools.partial(fn, *args, **kwargs)),
                     name=f"{name}-{next(_ids)}", daemon=True).start()
    return fut


class _DaemonPool:
    """Reusable daemon threads for calls that may never return (sync dataset code).

    A thread that finishes takes the next call; one idle for ``IDLE_S`` exits. Invariant, under
    the lock: threads waiting on the queue == ``idle`` + calls queued.
    """

    IDLE_S = 30.0

    def __init__(self, name: str) -> None:
        self.name = name
        self._queue: queue.SimpleQueue[_Item] = queue.SimpleQueue()
        self._idle = 0
        self._lock = threading.Lock()

    def submit(self, fn: Callable[[Unpack[Args]], T], /, *args: *Args) -> cf.Future[T]:
        fut: cf.Future[T] = cf.Future()
        item = functools.partial(settle, fut, functools.partial(fn, *args))
        with self._lock:
            if self._idle:
                self._idle -= 1
                self._queue.put(item)
                return fut
        threading.Thread(target=self._main, args=(item,), name=f"{self.name}-{next(_ids)}",
                         daemon=True).start()
        return fut

    def _main(self, item: _Item) -> None:
        while True:
            item()
            del item
            with self._lock:
                self._idle += 1
            while True:
                try:
                    item = self._queue.get(timeout=self.IDLE_S)
                    break
                except queue.Empty:
                    with self._lock:
                        if self._queue.empty() and self._idle:
                            self._idle -= 1
                            return


_abandonable: _DaemonPool | None = None
_abandonable_lock = threading.Lock()


def submit_abandonable(fn: Callable[[Unpack[Args]], T], /, *args: *Args) -> cf.Future[T]:
    """Run sync user code (a dataset's ``__getitem__``) on a reusable daemon thread that nobody
    joins: if it never returns, its caller may abandon it, and neither the I/O executor nor
    interpreter exit waits for it."""
    global _abandonable
    if _abandonable is None:
        with _abandonable_lock:
            if _abandonable is None:
                _abandonable = _DaemonPool("aiotrain-abandonable")
    return _abandonable.submit(fn, *args)
