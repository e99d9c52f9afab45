"""Pacing: background writers give the GIL back at least every millisecond.

A thread running Python keeps the GIL until it blocks, or until another thread has waited
``sys.getswitchinterval()`` (5 ms by default) for it; a C call that does not release it (msgspec
encoding thousands of records, a numpy pass over them) keeps it throughout. A writer that
drained a big batch in one go therefore made the training thread, or the event loop, wait 5 ms
or more. Releasing the GIL around a short system call (a buffered file write) does not hand it
over either: the waiting thread must be woken and scheduled before the writer takes it back,
which a few microseconds rarely allow. So work that runs beside training (the tracking writer's
drains, the column cache's catch-up) is cut into bounded pieces, and between two pieces a
``Pacer`` sleeps briefly once the thread has held on for ``HOLD_S``: a sleep blocks, so a thread
waiting for the GIL takes it then.
"""

from __future__ import annotations

import time

__all__ = ["Pacer"]


class Pacer:
    """Call it between two bounded pieces of work: it sleeps ``PAUSE_S`` when ``HOLD_S`` or more
    went by since it was created or last slept. ``pauses`` counts its sleeps."""

    HOLD_S = 0.001
    PAUSE_S = 0.0002

    def __init__(self) -> None:
        self.pauses = 0
        self._since = time.perf_counter()

    def __call__(self) -> None:
        if time.perf_counter() - self._since >= self.HOLD_S:
            time.sleep(self.PAUSE_S)
            self.pauses += 1
            self._since = time.perf_counter()
