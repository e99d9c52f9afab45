"""What a data test checks it left behind: worker processes and shared-memory segments."""

from __future__ import annotations

import os
import time


def no_children_left() -> bool:
    """True once every child process has exited (waiting up to 5 s for the reaping)."""
    return child_processes() == []


# What a data path could leave in /dev/shm: torch's shared tensors, Python's shared_memory and
# its semaphores. Other programs' segments (PostgreSQL's, a browser's), which tests running beside
# this one (pytest -n) create and remove, are not counted.
_OURS = ("torch_", "psm_", "sem.mp-")


def shm_names() -> set[str]:
    """The named shared-memory segments a data path could have made, now in /dev/shm."""
    names = os.listdir("/dev/shm") if os.path.isdir("/dev/shm") else []
    return {name for name in names if name.startswith(_OURS)}


def child_processes() -> list:
    """This process's live children of any kind (the runtime forks and spawns its workers
    itself, so they are not multiprocessing's), waiting up to 5 s for them to be reaped.

    Not counted: multiprocessing's resource tracker, one per interpreter that lives until the
    interpreter exits by design; an earlier test in the same pytest worker (torch's ``mp.spawn``)
    starts it, and it is no worker anything left behind."""
    import psutil

    def kids() -> list:
        return [p for p in psutil.Process().children() if not _is_resource_tracker(p)]

    deadline = time.monotonic() + 5
    while (found := kids()) and time.monotonic() < deadline:
        time.sleep(0.01)
    return found


def _is_resource_tracker(proc: object) -> bool:
    import psutil

    try:
        return "multiprocessing.resource_tracker" in " ".join(proc.cmdline())  # type: ignore[attr-defined]
    except psutil.Error:
        return False
