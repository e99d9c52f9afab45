"""SweepRunner: a sweep's trials as training jobs of one config, K at a time, pruned, crash-safe.

``SweepRunner(sweep, "train.sdn", overrides, trials=20, parallel=4)`` then ``await runner.run()``
(``aiotrain sweep`` is a thin shell around it). Each trial is the config with the trial's
parameters merged in (before interpolation, so ``${model.dim}`` sees them), run as a ``Job``:
in a job worker process of its own by default (``ProcessJob``: a trial's result never depends on
what runs beside it), or in this process with ``isolate=False`` (``TrainJob``; one trial at a
time then, since trials in one process share torch's RNG). After every evaluation the trial's
score goes to the search backend; when its pruner says so the trial is ``pruned`` from that
moment (it is never run again), its job stops after that epoch, its run is marked ``pruned``
and its checkpoints are kept.

Trial ``n`` is tracked as run ``{sweep_id}-{n}`` tagged ``sweep:{sweep_id}`` and ``trial:{n}``,
with its checkpoints in ``{root}/checkpoints/{project}/{sweep_id}-{n}``. The sweep's record
(``record.py``), ``{root}/sweeps/{project}/{sweep_id}.json``, is rewritten atomically at every
change: a trial starts, its job's run exists (its run id and folders are recorded then, not at
the end), it reports, it ends.

``SweepRunner.aresume(sweep_id)`` continues from that record after anything up to kill -9:
finished, pruned and crashed trials are kept as they are and replayed into the search. A trial
the record still shows running is settled from its job's own record (``run.sdn``): a job that
had finished makes the trial finished (never trained again), a job that failed or crashed makes
it crashed, and an interrupted job continues from its last checkpoint, in the same tracked run.
A trial whose job had not started, or had no checkpoint yet, starts over; its row says so in
``note``, not as an error.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import msgspec

from ..config import Conf, Config, ConfigError
from ..files import atomic_write
from ..job import ProcessJob, TrainJob, run_evaluated
from ..job.identity import ResumeError, find_run
from ..job.protocol import Job
from ..job.settings import load_settings
from ..job.train_job import JobResult
from ..owner import current_owner, owner_alive, owner_of
from ..runtime import to_io
from ..tracking.reader import list_runs
from ..tracking.run import set_run_status
from .record import ENDED, SweepRecord, TrialRecord, find_record, read_record, record_path
from .search import Search
from .space import flatten, unflatten
from .sweep import Sweep

__all__ = ["SweepRunner", "find_record"]

Resume = bool | str  # how a trial's job starts: fresh (False), or continuing that run id


class SweepRunner:
    """Runs ``trials`` trials of ``sweep`` over the config at ``config`` (see the module docstring).

    ``overrides`` are fixed ``key=value`` changes to the config; ``parallel`` trials run at once
    (each in its own worker process; ``isolate=False`` runs them in this process, one at a
    time); ``on_update(record)`` is called on the loop after every change of the record (the
    CLI's live table).
    """

    def __init__(self, sweep: Sweep, config: str | os.PathLike[str], overrides: Sequence[str] = (), *,
                 trials: int | None = None, parallel: int = 1, isolate: bool = True,
                 on_update: Callable[[SweepRecord], None] | None = None) -> None:
        if parallel < 1:
            raise ValueError(f"parallel must be >= 1, got {parallel}")
        if parallel > 1 and not isolate:
            raise ValueError("trials in one process share torch's RNG: run parallel trials "
                             "isolated (the default), or one at a time in-process")
        if trials is None and sweep.method != "grid":
            raise ValueError(f"{sweep.method} search needs a number of trials")
        if trials is not None and trials < 1:
            raise ValueError(f"trials must be >= 1, got {trials}")
        self.sweep = sweep
        self.config = str(Path(config).resolve())
        self.overrides = list(overrides)
        self.trials, self.parallel, self.isolate = trials, parallel, isolate
        self.on_update = on_update
        self.metric_key = sweep.metric["name"].removeprefix("val/")
        self.root = Path()
        self._record: SweepRecord | None = None
        self._path = Path()
        self._project = sweep.project
        self._tags: list[str] = []
        self._search: Search | None = None
        self._redo: list[tuple[TrialRecord, Resume]] = []
        self._lock = asyncio.Lock()  # the search backend: one call at a time
        self._save_lock = asyncio.Lock()  # record writes land in order

    @classmethod
    async def aresume(cls, sweep_id: str, root: str | os.PathLike[str], *, parallel: int | None = None,
                      on_update: Callable[[SweepRecord], None] | None = None) -> SweepRunner:
        """A runner that continues the sweep recorded as ``sweep_id`` under the tracking ``root``."""
        path = await to_io(find_record, sweep_id, root)
        record = await to_io(read_record, path)
        owner = owner_of(record.owner or {})
        if owner.get("pid") != os.getpid() and owner_alive(owner):
            raise RuntimeError(f"sweep {sweep_id} is still running (pid {owner['pid']}); "
                               "stop it before resuming")
        if record.config is None:
            raise ValueError(f"sweep {sweep_id} ran plain trial functions (Sweep.agent): it has "
                             "no training config to resume")
        sweep = Sweep.from_record(record)
        runner = cls(sweep, record.config, record.overrides, trials=record.trials_wanted,
                     parallel=parallel or record.parallel, isolate=record.isolate, on_update=on_update)
        runner._record = record
        return runner

    @property
    def record(self) -> SweepRecord:
        """The sweep's record (exists once ``run`` has started, or after ``aresume``)."""
        if self._record is None:
            raise RuntimeError("the sweep has no record yet: await runner.run() first")
        return self._record

    @property
    def best(self) -> TrialRecord | None:
        """The finished trial with the best value (None while there is none)."""
        return self._record.best if self._record is not None else None

    async def run(self) -> SweepRecord:
        """Run (or continue) the sweep; returns the final record. Cancelling stops the trials in
        flight (each flushes its checkpoints) and records them ``interrupted``."""
        resuming = self._record is not None
        await to_io(self._prepare)
        self._search = await to_io(self.sweep.search)  # Optuna's import takes a while
        if resuming:
            await self._restore()
        record = self.record
        record.status, record.owner = "running", current_owner()
        await self._save()
        try:
            async with asyncio.TaskGroup() as group:
                for _ in range(self.parallel):
                    group.create_task(self._worker())
        except BaseException as exc:
            record.status = "interrupted" if isinstance(exc, asyncio.CancelledError) else "crashed"
            await asyncio.shield(self._save())
            raise
        record.status = "finished"
        await self._save()
        return record

    # setting up ----------------------------------------------------------------------------
    def _prepare(self) -> None:
        """Read and check the base config (blocking file work: runs in the I/O executor)."""
        settings, _ = load_settings(self._config({}))
        raw = Conf.merge(Conf.load_sdn(self.config), Conf.from_cli_dotlist(self.overrides))
        for key in flatten(self.sweep.parameters):
            if not Conf.has_path(raw, key):
                raise ConfigError(f"sweep parameter {key!r} is not a key of {self.config} "
                                  "(add it to the config, or check its spelling)", full_key=key)
        tr = settings.tracking
        self.root = Path(tr.dir or os.environ.get("AIOTRAIN_DIR", ".aiotrain")).resolve()
        self._project, self._tags = tr.project, list(tr.tags)
        if self._record is None:
            self.sweep.project = tr.project
            self._record = self.sweep.new_record(
                config=self.config, overrides=self.overrides, root=str(self.root),
                trials_wanted=self.trials, parallel=self.parallel, isolate=self.isolate)
        self._path = record_path(self.root, self.sweep.project, self.sweep.id)

    async def _restore(self) -> None:
        """Settle the trials a stopped sweep left running, replay the record into the search,
        and queue what must run again."""
        record, search = self.record, self._searcher()
        left = [t for t in record.trials if t.status not in ENDED]
        how = {t.number: await to_io(self._settle, t) for t in left}
        await to_io(search.restore, record.trials)
        for run_dir in await to_io(_stale_runs, self.root, self._project, self.sweep.id):
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
        if status == "finished":
            self._ended(trial, None, False)
            trial.finished_at = float(rec.get("updated_at") or time.time())
            return None
        if status in ("failed", "crashed"):
            trial.status, trial.error = "crashed", str(rec.get("error") or f"its job {status}")
            return None
        return identity.id  # interrupted, or running when its process died

    def _config(self, params: dict[str, Any], extra: dict[str, Any] | None = None) -> Config:
        cfg = Conf.merge(Conf.load_sdn(self.config), Conf.from_cli_dotlist(self.overrides),
                         unflatten(params), extra or {})
        return Conf.resolve(cfg)

    def _trial_config(self, trial: TrialRecord) -> Config:
        return self._config(trial.params, {
            "tracking": {"name": trial.name, "tags": [*self._tags, f"sweep:{self.sweep.id}",
                                                      f"trial:{trial.number}"]},
            "checkpoint": {"dir": str(self._checkpoint_root(trial.number))}})

    def _checkpoint_root(self, number: int) -> Path:
        """Where trial ``number``'s job keeps its checkpoints (the same on resume)."""
        return self.root / "checkpoints" / self._project / f"{self.sweep.id}-{number}"

    def _searcher(self) -> Search:
        assert self._search is not None  # made by run() before any trial
        return self._search

    # running trials ------------------------------------------------------------------------
    async def _worker(self) -> None:
        while (claimed := await self._claim()) is not None:
            await self._run_trial(*claimed)

    async def _claim(self) -> tuple[TrialRecord, Resume] | None:
        record = self.record
        async with self._lock:
            if self._redo:
                return self._redo.pop(0)
            if self.trials is not None and len(record.trials) >= self.trials:
                return None
            params = await to_io(self._searcher().ask)
            if params is None:  # the grid is done
                return None
            n = len(record.trials)
            trial = TrialRecord(number=n, params=params, config=unflatten(params),
                                name=f"{self.sweep.id}-{n}", started_at=time.time(),
                                checkpoint_dir=str(self._checkpoint_root(n)))
            record.trials.append(trial)
        await self._save()
        return trial, False

    async def _run_trial(self, trial: TrialRecord, resume: Resume) -> None:
        try:
            cfg = await to_io(self._trial_config, trial)
            try:
                result, pruned = await self._attempt(cfg, trial, resume)
            except ResumeError as exc:  # nothing resumable was left (killed before its first
                if resume is False:  # checkpoint): the trial starts over, nothing else is lost
                    raise
                trial.intermediate, trial.note = [], f"restarted: {exc}"
                result, pruned = await self._attempt(cfg, trial, False)
        except asyncio.CancelledError:
            trial.status = "interrupted"
            raise
        except Exception as exc:  # a failed trial is recorded; the sweep goes on
            trial.status, trial.error = "crashed", _one_line(exc)
        else:
            trial.run_dir = result.run_dir or trial.run_dir
            trial.checkpoint_dir = result.checkpoint_dir or trial.checkpoint_dir
            trial.run_id = result.run_id or trial.run_id
            self._ended(trial, result, pruned)
            if pruned and result.run_dir:
                await to_io(set_run_status, result.run_dir, "pruned")
        trial.finished_at = time.time()
        async with self._lock:
            await to_io(self._searcher().tell, trial.number, trial.value, trial.status)
        await self._save()

    async def _attempt(self, cfg: Config, trial: TrialRecord, resume: Resume) -> tuple[JobResult, bool]:
        """One run of the trial's job; its run id and folders are recorded once it exists."""
        kind: Callable[..., Job] = ProcessJob if self.isolate else TrainJob
        job = kind(cfg, resume=resume, progress=False, echo=_quiet)

        async def on_evaluation(epoch: int, metrics: dict[str, Any]) -> bool:
            if self.metric_key not in metrics:
                raise ValueError(f"sweep metric {self.sweep.metric['name']!r} is not an evaluated "
                                 f"metric; the task evaluates {sorted(metrics)}")
            value = float(metrics[self.metric_key])
            # a trial resumed from a checkpoint older than its last report redoes that epoch
            trial.intermediate = [e for e in trial.intermediate if e[0] < epoch] + [(epoch, value)]
            async with self._lock:
                prune = await to_io(self._searcher().report, trial.number, epoch, value)
            if prune:  # final from now on: never run again, whatever stops this process
                trial.status = "pruned"
            await self._save()
            return prune

        started = asyncio.create_task(self._started(job, trial))
        try:
            return await run_evaluated(job, on_evaluation)
        finally:
            started.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await started

    async def _started(self, job: Job, trial: TrialRecord) -> None:
        await job.ready.wait()
        if job.identity is not None:
            trial.run_id, trial.checkpoint_dir = job.identity.id, str(job.identity.dir)
        trial.run_dir = job.run_dir
        await self._save()

    def _ended(self, trial: TrialRecord, result: JobResult | None, pruned: bool) -> None:
        """A trial's job ended (``result`` None: it had ended while the sweep was stopped)."""
        last = trial.intermediate[-1][1] if trial.intermediate else None
        value = result.metrics.get(self.metric_key, last) if result is not None else last
        if result is not None and result.exit_code != 0:
            trial.status, trial.error = "crashed", (f"the job exited with status {result.exit_code} "
                                                    "(validation errors)")
        elif value is None:
            trial.status, trial.error = "crashed", (f"no {self.sweep.metric['name']!r} was evaluated "
                                                    "(does the task have a val_loader and metrics?)")
        else:
            trial.status, trial.value = ("pruned" if pruned else "finished"), float(value)

    # the record ----------------------------------------------------------------------------
    async def _save(self) -> None:
        record = self.record
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


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


def _quiet(line: str) -> None:
    """Trial progress lines are not shown: the sweep's table is."""
