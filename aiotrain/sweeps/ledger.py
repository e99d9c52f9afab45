"""Where a sweep's trials come from and where what they did is kept: the ``Ledger`` seam.

``SweepRunner`` runs trials; a ledger hands them out (``claim``), hears what they do
(``trial_started``, ``scored``, ``trial_ended``) and keeps the sweep's ``SweepRecord``, from
``begin`` to ``end``. Two ledgers:

- ``LocalLedger`` (this module), the default: the search backend lives in this process and the
  record is a JSON file, ``{root}/sweeps/{project}/{sweep_id}.json``, rewritten atomically at
  every change; ``--resume`` continues it after anything up to kill -9.
- ``StudyLedger`` (``study.py``, ``--storage URL --study NAME``): an Optuna study in shared
  storage is the source of truth, so any number of sweep processes on any machines cooperate.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import msgspec

from ..files import atomic_write
from ..job.identity import ResumeError, find_run
from ..runtime import to_io
from ..tracking.reader import list_runs
from ..tracking.status import set_run_status
from .record import ENDED, SweepRecord, TrialRecord, record_path
from .search import Search
from .space import unflatten
from .sweep import Sweep

__all__ = ["Claim", "Ledger", "LocalLedger", "Resume"]

Resume = bool | str
"""How a trial's job starts: fresh (False), or continuing the run with that id."""

Claim = tuple[TrialRecord, Resume]


class Ledger(Protocol):
    """What the runner asks of a sweep's bookkeeping (see the module docstring)."""

    @property
    def record(self) -> SweepRecord:
        """The sweep as it stands (what ``on_update`` and ``SweepRunner.run`` give out)."""

    async def begin(self) -> None:
        """Get ready to hand out trials (and settle what a stopped sweep left running)."""

    async def claim(self) -> Claim | None:
        """The next trial to run and how its job starts, or None when the sweep is done."""

    async def trial_started(self, trial: TrialRecord) -> None:
        """The trial's job has its run: ``trial.run_id`` and folders are set."""

    async def scored(self, trial: TrialRecord, step: int, value: float) -> bool:
        """The trial scored ``value`` at ``step`` (already in ``trial.intermediate``); True: prune."""

    async def trial_ended(self, trial: TrialRecord) -> None:
        """The trial ended: its status, value and error are set."""

    async def end(self, status: str) -> None:
        """The sweep (this process's part of it) ended with ``status``."""


class LocalLedger:
    """The search backend in this process, the record in a JSON file (module docstring).

    ``record`` is a new record for a new sweep, or the stored one to continue (``aresume``):
    then ``begin`` settles each trial it shows running from its job's ``run.sdn``: a job that
    had finished makes the trial finished (never trained again), a job that failed or crashed
    makes it crashed, an interrupted job continues from its last checkpoint in the same tracked
    run, and a trial whose job had not begun (or had no checkpoint) starts over with a ``note``.
    """

    def __init__(self, sweep: Sweep, record: SweepRecord, root: Path, project: str,
                 trials: int | None, resuming: bool,
                 on_update: Callable[[SweepRecord], None] | None = None) -> None:
        self.sweep, self._record, self.root, self.project = sweep, record, root, project
        self.trials, self.resuming, self.on_update = trials, resuming, on_update
        self._path = record_path(root, sweep.project, sweep.id)
        self._search: Search | None = None
        self._redo: list[Claim] = []
        self._lock = asyncio.Lock()  # the search backend: one call at a time
        self._save_lock = asyncio.Lock()  # record writes land in order

    @property
    def record(self) -> SweepRecord:
        return self._record

    async def begin(self) -> None:
        self._search = await to_io(self.sweep.search)  # Optuna's import takes a while
        if self.resuming:
            await self._restore()
        self._record.status = "running"
        await self._save()

    async def claim(self) -> Claim | None:
        record, search = self._record, self._searcher()
        async with self._lock:
            if self._redo:
                return self._redo.pop(0)
            if self.trials is not None and len(record.trials) >= self.trials:
                return None
            params = await to_io(search.ask)
            if params is None:  # the grid is done
                return None
            n = len(record.trials)
            trial = TrialRecord(number=n, params=params, config=unflatten(params),
                                name=f"{self.sweep.id}-{n}", started_at=time.time(),
                                checkpoint_dir=str(self._checkpoint_root(n)))
            record.trials.append(trial)
        await self._save()
        return trial, False

    async def trial_started(self, trial: TrialRecord) -> None:
        await self._save()

    async def scored(self, trial: TrialRecord, step: int, value: float) -> bool:
        async with self._lock:
            prune = await to_io(self._searcher().report, trial.number, step, value)
        if prune:  # final from now on: never run again, whatever stops this process
            trial.status = "pruned"
        await self._save()
        return prune

    async def trial_ended(self, trial: TrialRecord) -> None:
        async with self._lock:
            await to_io(self._searcher().tell, trial.number, trial.value, trial.status)
        await self._save()

    async def end(self, status: str) -> None:
        self._record.status = status
        await self._save()

    # continuing a stopped sweep ------------------------------------------------------------
    async def _restore(self) -> None:
        """Settle the trials a stopped sweep left running, replay the record into the search,
        and queue what must run again."""
        record, search = self._record, self._searcher()
        left = [t for t in record.trials if t.status not in ENDED]
        how = {t.number: await to_io(self._settle, t) for t in left}
        await to_io(search.restore, record.trials)
        for run_dir in await to_io(_stale_runs, self.root, self.project, self.sweep.id):
            await to_io(set_run_status, run_dir, "interrupted", "the sweep process was stopped")
        for t in left:
            resume = how[t.number]
            if t.status in ENDED or resume is None:
                continue
            t.status = "running"
            await to_io(search.resume_trial, t.number, t.params, t.intermediate)
            self._redo.append((t, resume))

    def _settle(self, trial: TrialRecord) -> Resume | None:
        """How a trial left running continues, from its job's ``run.sdn`` (I/O thread): None
        when that job had ended (the trial's status is set from it), its run id to continue it,
        or False to start over."""
        try:
            identity = find_run(self._checkpoint_root(trial.number), trial.run_id, None)
        except ResumeError:
            trial.intermediate, trial.note = [], "restarted: the sweep stopped before its run began"
            return False
        rec = identity.record
        trial.run_id, trial.checkpoint_dir = identity.id, str(identity.dir)
        trial.run_dir = rec.get("run_dir") or trial.run_dir
        status = rec.get("status")
        if status == "finished":  # its last report is its score
            last = trial.intermediate[-1][1] if trial.intermediate else None
            trial.conclude(self.sweep.metric["name"], last)
            trial.finished_at = float(rec.get("updated_at") or time.time())
            return None
        if status in ("failed", "crashed"):
            trial.status, trial.error = "crashed", str(rec.get("error") or f"its job {status}")
            return None
        return identity.id  # interrupted, or running when its process died

    def _checkpoint_root(self, number: int) -> Path:
        """Where trial ``number``'s job keeps its checkpoints (the same on resume)."""
        return self.root / "checkpoints" / self.project / f"{self.sweep.id}-{number}"

    def _searcher(self) -> Search:
        assert self._search is not None  # made by begin() before any trial
        return self._search

    async def _save(self) -> None:
        record = self._record
        record.touch()
        data = msgspec.json.encode(record)  # on the loop: the record changes only here
        async with self._save_lock:
            await to_io(atomic_write, self._path, data)
        if self.on_update is not None:
            self.on_update(record)


def _stale_runs(root: Path, project: str, sweep_id: str) -> list[Path]:
    """The sweep's tracked runs that still say "running" though their process is gone."""
    tag = f"sweep:{sweep_id}"
    return [r.dir for r in list_runs(project, root)
            if tag in r.tags and r.metadata.get("status") == "running" and r.status != "running"]
