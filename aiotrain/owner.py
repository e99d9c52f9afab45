"""Who owns a record, and whether that process still runs: the one liveness check.

A record that a live process keeps writing (a run's ``metadata.sdn``, a job's ``run.sdn``, a
sweep's record, a shared sweep's trial) stores its owner: ``{"pid", "started", "host"}``, where
``started`` is the process's create time. The owner is alive while *that* process runs: the pid
exists and has the same create time, so a pid reused by another process (after a wrap-around or a
reboot) is not mistaken for the owner. On another host a pid says nothing: ``owner_alive``
answers None (unknown) and the caller decides (a run on another machine reads as running; a
shared sweep waits for the trial's heartbeat instead).

Records written before owners carried a create time (a flat ``pid`` and ``system.hostname``)
are still read: for them the check falls back to "the pid exists".
"""

from __future__ import annotations

import functools
import os
import socket
from collections.abc import Mapping

import psutil

__all__ = ["current_owner", "owner_alive", "owner_of", "process_alive"]


# a create time read twice can differ by the boot time's rounding; a pid reused by another
# process within a second of the owner's own start is not a case that occurs
_SAME_START_S = 1.0


@functools.cache
def _started(pid: int) -> float:
    return psutil.Process(pid).create_time()


def current_owner() -> dict[str, int | float | str]:
    """This process as an owner: ``{"pid", "started", "host"}`` (plain data, for any record)."""
    pid = os.getpid()  # per call: a forked child is an owner of its own
    return {"pid": pid, "started": _started(pid), "host": socket.gethostname()}


def owner_of(record: Mapping[str, object]) -> dict[str, object]:
    """The owner a record names: its ``owner`` entry, or the flat ``pid`` and
    ``system.hostname`` of older records (no create time)."""
    owner = record.get("owner")
    if isinstance(owner, Mapping):
        return dict(owner)
    system = record.get("system")
    host = system.get("hostname") if isinstance(system, Mapping) else None
    return {"pid": record.get("pid"), "started": None, "host": host}


def owner_alive(owner: Mapping[str, object]) -> bool | None:
    """True while the owning process runs, False once it is gone (or its pid was reused),
    None when it cannot be known here (another host, or no pid recorded)."""
    pid = owner.get("pid")
    if isinstance(pid, bool) or not isinstance(pid, int) or pid <= 0:
        return None
    host = owner.get("host")
    if host is not None and host != socket.gethostname():
        return None
    try:
        created = psutil.Process(pid).create_time()
    except psutil.NoSuchProcess:
        return False
    except psutil.Error:  # exists, but not ours to inspect
        return True
    started = owner.get("started")
    if isinstance(started, int | float) and not isinstance(started, bool):
        return abs(created - started) < _SAME_START_S
    return True


def process_alive(record: Mapping[str, object]) -> bool:
    """Whether the process that wrote a "running" record may still run: alive, or unknown
    (another host). A dead owner, or a pid now used by another process, is False."""
    return owner_alive(owner_of(record)) is not False
