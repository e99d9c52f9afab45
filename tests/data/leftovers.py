"""What a data test checks it left behind: worker processes and shared-memory segments."""

from __future__ import annotations

import multiprocessing
import os
import time


def no_children_left() -> bool:
    """True once every child process has exited (waiting up to 5 s for the reaping)."""
    deadline = time.monotonic() + 5
    while multiprocessing.active_children() and time.monotonic() < deadline:
        time.sleep(0.01)
    return multiprocessing.active_children() == []


def shm_names() -> set[str]:
    """The named shared-memory segments now in /dev/shm."""
    return set(os.listdir("/dev/shm")) if os.path.isdir("/dev/shm") else set()
