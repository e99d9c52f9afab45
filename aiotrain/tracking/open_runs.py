"""The runs this process has open: who may resume a run, live readers' drains, and the exit hook.

Every enabled ``Run`` is registered here from its creation to its finish. The registry
answers three questions: is a stored run still being written, here or by another live process
(a resume of it is refused: two writers would interleave their steps, and the second's summary
would hide the first's); which open run writes in a folder a live reader (the dashboard) wants
fresh; and which runs a script left open when the interpreter exits (they are finished then,
``crashed`` when an uncaught exception ended the program).
"""

from __future__ import annotations

import atexit
import os
import sys
import threading
from pathlib import Path
from typing import Protocol

from ..owner import owner_of, process_alive
from .reader import RunRecord
from .status import outcome

__all__ = ["LiveRunError", "OpenRun", "drain_open_run", "refuse_live", "register", "unregister"]


class LiveRunError(ValueError):
    """A resume refused because a live process is still writing that run (one line)."""


class OpenRun(Protocol):
    """What the registry needs of an open run (``Run`` is one)."""

    @property
    def id(self) -> str: ...

    @property
    def dir(self) -> Path: ...

    def drain_soon(self) -> None:
        """Queue a drain of the run's pending records on the I/O executor; never blocks."""

    def finish(self, status: str = "finished", error: str | None = None) -> None:
        """End the run (flush, summary, final metadata); idempotent."""


_open: set[OpenRun] = set()
_lock = threading.Lock()


def register(run: OpenRun) -> None:
    """``run`` is open: writing in ``run.dir`` until it finishes."""
    with _lock:
        _open.add(run)


def unregister(run: OpenRun) -> None:
    """``run`` finished (a run never registered is ignored)."""
    with _lock:
        _open.discard(run)


def drain_open_run(run_dir: Path) -> bool:
    """Ask a run of this process that writes in ``run_dir`` to drain its queues now, so a live
    reader of its files (the dashboard) sees new records without waiting for the periodic flush.
    Returns whether such a run is open. Never blocks: the drain is queued on the I/O executor."""
    with _lock:
        runs = [r for r in _open if r.dir == run_dir]
    for run in runs:
        run.drain_soon()
    return bool(runs)


def refuse_live(record: RunRecord) -> None:
    """LiveRunError (one line) when a live process is still writing the stored run ``record``."""
    meta = record.metadata
    if meta.get("status") != "running":
        return
    with _lock:
        here = any(r.dir.resolve() == record.dir.resolve() for r in _open)
    pid = owner_of(meta).get("pid")
    if here or (pid != os.getpid() and process_alive(meta)):
        where = "this process" if here or pid == os.getpid() else f"pid {pid}"
        raise LiveRunError(f"resume: run {record.id} is still being written by {where}; finish or "
                           "stop it before resuming it (or start a new run)")


@atexit.register
def _finish_open_runs() -> None:
    """Finish runs a script left open; crashed when an uncaught exception ended the program."""
    crashed = getattr(sys, "last_value", None)
    with _lock:
        runs = list(_open)
    for run in runs:
        try:
            run.finish(*outcome(crashed))
        except Exception as exc:  # at exit there is no caller left to raise to
            print(f"aiotrain: could not finish run {run.id}: {exc}", file=sys.stderr)
