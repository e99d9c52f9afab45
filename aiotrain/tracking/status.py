"""A run's status: how a run that ended is marked, and rewriting a stored run's status.

A run ends ``finished``, ``interrupted`` (a cancellation or Ctrl-C: normal control flow, as
TrainJob marks them) or ``crashed`` (with the error); a sweep marks a trial its pruner stopped
``pruned`` after the fact, and a killed process's run is marked ``interrupted`` by whoever
finds it left ``running``.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from .store import read_sdn, write_sdn

__all__ = ["outcome", "set_run_status"]


def outcome(exc: BaseException | None) -> tuple[str, str | None]:
    """How a run that ended with ``exc`` is marked: finished, interrupted (a cancellation or
    Ctrl-C: normal control flow) or crashed, and the error to keep."""
    if exc is None:
        return "finished", None
    text = str(exc).strip()
    error = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    if isinstance(exc, asyncio.CancelledError | KeyboardInterrupt):
        return "interrupted", error
    return "crashed", error


def set_run_status(run_dir: str | os.PathLike[str], status: str, error: str | None = None) -> None:
    """Rewrite a stored run's status (atomically): ``pruned`` for a sweep trial stopped by its
    pruner, ``interrupted`` for a run that a killed process left ``running``."""
    path = Path(run_dir) / "metadata.sdn"
    meta = read_sdn(path)
    meta["status"] = status
    if error is not None:
        meta["error"] = error
    write_sdn(path, meta)
