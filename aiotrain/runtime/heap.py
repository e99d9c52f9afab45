"""The heap while models train: garbage collections that do not stall the loop.

CPython's cyclic collector runs on whichever thread allocates when a threshold trips, and holds
the GIL while it runs, so every thread waits, the loop's included. A generation-2 collection
walks every tracked object: after torch is imported that is hundreds of thousands of them, and
a pause of 100-200 ms on a 2-core machine. Nothing moves a collection off the GIL; what the
runtime does instead is leave the old generation nothing to walk while models train:

- when a run starts (``ComputeWorker.start``), everything alive is frozen (``gc.freeze``, a
  constant-time move): the imports, the model, the optimizer, the data. Collections never walk
  frozen objects, so a generation-2 collection during training walks only what training itself
  keeps alive (no collection runs first: that would be the very pause avoided, so garbage not
  yet collected at that moment waits for the unfreeze);
- when the last run of the process ends, the heap is unfrozen, so cycles that a finished job
  left behind are collected (the next full collection walks everything once, while nothing
  trains). A service that always has a job running keeps such cycles until it is idle.

The job server freezes its imports the same way before it forks, so a job process starts with
a frozen heap it shares copy-on-write.
"""

from __future__ import annotations

import gc
import threading

__all__ = ["run_ended", "run_started"]

_lock = threading.Lock()
_running = 0


def run_started() -> None:
    """A run begins: freeze everything alive."""
    global _running
    with _lock:
        _running += 1
        gc.freeze()


def run_ended() -> None:
    """A run ended: when it was the last, unfreeze, so what it left in cycles can be collected."""
    global _running
    with _lock:
        _running -= 1
        if _running == 0:
            gc.unfreeze()
