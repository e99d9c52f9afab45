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
with its checkpoints in ``{root}/checkpoints/{project}/{sweep_id}-{n}``. Where trials come from
and where what they do is kept is the ledger's business (``ledger.py``): by default a record
file, ``{root}/sweeps/{project}/{sweep_id}.json``, updated at every change (a trial starts, its
job's run exists: its run id and folders are recorded then, not at the end; it reports; it
ends), which ``SweepRunner.aresume(sweep_id)`` continues after anything up to kill -9; with
``storage=URL, study=NAME`` an Optuna study in shared storage (``study.py``), which any number
of runners on any machines share.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ..config import Conf, Config, ConfigError
from ..config.overrides import apply_overrides
from ..job import ProcessJob, TrainJob, run_evaluated
from ..job.identity import ResumeError
from ..job.protocol import Job
from ..job.settings import RUNTIME_KEYS, load_settings
from ..job.train_job import JobResult
from ..owner import current_owner, owner_alive, owner_of
from ..runtime import to_io
from ..tracking.status import set_run_status
from .ledger import Ledger, LocalLedger, Resume
from .parallel import idle_threads_yield
from .record import SweepRecord, TrialRecord, find_record, read_record
from .space import flatten, unflatten
from .sweep import Sweep

__all__ = ["SweepRunner", "find_record"]


class SweepRunner:
    """Runs ``trials`` trials of ``sweep`` over the config at ``config`` (see the module docstring).

    ``overrides`` are fixed ``key=value`` changes to the config; ``parallel`` trials run at once
    (each in its own worker process; ``isolate=False`` runs them in this process, one at a
    time); ``on_update(record)`` is called on the loop after every change of the record (the
    CLI's live table). ``storage`` (an Optuna storage URL) and ``study`` share the sweep with
    other runners (``study.py``; ``retries`` and ``heartbeat_timeout`` are its options).
    """

    def __init__(self, sweep: Sweep, config: str | os.PathLike[str], overrides: Sequence[str] = (), *,
                 trials: int | None = None, parallel: int = 1, isolate: bool = True,
                 on_update: Callable[[SweepRecord], None] | None = None,
                 storage: str | None = None, study: str | None = None, retries: int = 1,
                 heartbeat_timeout: float = 60.0) -> None:
        if parallel < 1:
            raise ValueError(f"parallel must be >= 1, got {parallel}")
        if parallel > 1 and not isolate:
            raise ValueError("trials in one process share torch's RNG: run parallel trials "
                             "isolated (the default), or one at a time in-process")
        if trials is None and sweep.method != "grid":
            raise ValueError(f"{sweep.method} search needs a number of trials")
        if trials is not None and trials < 1:
            raise ValueError(f"trials must be >= 1, got {trials}")
        if (storage is None) != (study is None):
            raise ValueError("a shared sweep needs both a storage URL and a study name")
        idle_threads_yield(parallel)
        self.sweep = sweep
        self.config = str(Path(config).resolve())
        self.overrides = list(overrides)
        self.trials, self.parallel, self.isolate = trials, parallel, isolate
        self.on_update = on_update
        self.storage, self.study, self.retries = storage, study, retries
        self.heartbeat_timeout = heartbeat_timeout
        self.metric_key = sweep.metric["name"].removeprefix("val/")
        self.root = Path()
        self._project = sweep.project
        self._tags: list[str] = []
        self._stored: SweepRecord | None = None  # the record aresume continues
        self._ledger: Ledger | None = None

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
        runner._stored = record
        return runner

    @property
    def record(self) -> SweepRecord:
        """The sweep's record (exists once ``run`` has started)."""
        if self._ledger is None:
            raise RuntimeError("the sweep has no record yet: await runner.run() first")
        return self._ledger.record

    @property
    def best(self) -> TrialRecord | None:
        """The finished trial with the best value (None while there is none)."""
        return self._ledger.record.best if self._ledger is not None else None

    async def run(self) -> SweepRecord:
        """Run (or continue, or join) the sweep; returns its record. Cancelling stops the trials
        in flight (each flushes its checkpoints) and records them ``interrupted``."""
        ledger = self._ledger = await to_io(self._prepare)
        await ledger.begin()
        try:
            async with asyncio.TaskGroup() as group:
                for _ in range(self.parallel):
                    group.create_task(self._worker(ledger))
        except BaseException as exc:
            status = "interrupted" if isinstance(exc, asyncio.CancelledError) else "crashed"
            await asyncio.shield(ledger.end(status))
            raise
        await ledger.end("finished")
        return ledger.record

    # setting up ----------------------------------------------------------------------------
    def _prepare(self) -> Ledger:
        """Read and check the base config, then make the ledger (blocking file work: runs in the
        I/O executor)."""
        settings, _ = load_settings(self._config({}))
        raw = self._base()
        for key in flatten(self.sweep.parameters):
            if not Conf.has_path(raw, key):
                raise ConfigError(f"sweep parameter {key!r} is not a key of {self.config} "
                                  "(add it to the config, or check its spelling)", full_key=key)
        tr = settings.tracking
        self.root = Path(tr.dir or os.environ.get("AIOTRAIN_DIR", ".aiotrain")).resolve()
        self._project, self._tags = tr.project, list(tr.tags)
        fields: dict[str, Any] = dict(config=self.config, overrides=self.overrides, root=str(self.root),
                                      trials_wanted=self.trials, parallel=self.parallel,
                                      isolate=self.isolate, owner=current_owner())
        if self.storage is not None and self.study is not None:
            from .study import StudyLedger

            return StudyLedger(self.sweep, self.storage, self.study, self.root, tr.project,
                               self.trials, fields, retries=self.retries,
                               heartbeat_timeout=self.heartbeat_timeout, on_update=self.on_update)
        record = self._stored
        if record is None:
            self.sweep.project = tr.project
            record = self.sweep.new_record(**fields)
        else:
            record.owner = fields["owner"]
        return LocalLedger(self.sweep, record, self.root, tr.project, self.trials,
                           resuming=self._stored is not None, on_update=self.on_update)

    def _base(self) -> Config:
        """The config file with the fixed overrides, held to the rule ``aiotrain train`` keeps:
        an override changes a key the file sets, to a value of its kind (a misspelled key is an
        error, never a sweep that silently ignores it)."""
        return apply_overrides(Conf.load_sdn(self.config), self.overrides, source=self.config,
                               free=RUNTIME_KEYS)

    def _config(self, params: Mapping[str, object], extra: Mapping[str, object] | None = None) -> Config:
        cfg = Conf.merge(self._base(), unflatten(params), extra or {})
        return Conf.resolve(cfg)

    def _trial_config(self, trial: TrialRecord) -> Config:
        sweep_id = self.study or self.sweep.id
        return self._config(trial.params, {
            "tracking": {"name": trial.name, "tags": [*self._tags, f"sweep:{sweep_id}",
                                                      f"trial:{trial.number}"]},
            "checkpoint": {"dir": str(self._checkpoint_root(trial))}})

    def _checkpoint_root(self, trial: TrialRecord) -> Path:
        """Where the trial's job keeps its run folder (the same when it continues)."""
        return self.root / "checkpoints" / self._project / str(trial.name)

    # running trials ------------------------------------------------------------------------
    async def _worker(self, ledger: Ledger) -> None:
        while (claimed := await ledger.claim()) is not None:
            await self._run_trial(ledger, *claimed)

    async def _run_trial(self, ledger: Ledger, trial: TrialRecord, resume: Resume) -> None:
        try:
            cfg = await to_io(self._trial_config, trial)
            try:
                result, pruned = await self._attempt(ledger, cfg, trial, resume)
            except ResumeError as exc:  # nothing resumable was left (killed before its first
                if resume is False:  # checkpoint): the trial starts over, nothing else is lost
                    raise
                trial.intermediate, trial.note = [], f"restarted: {exc}"
                result, pruned = await self._attempt(ledger, cfg, trial, False)
        except asyncio.CancelledError:
            trial.status = "interrupted"
            raise
        except Exception as exc:  # a failed trial is recorded; the sweep goes on
            trial.status, trial.error = "crashed", _one_line(exc)
        else:
            trial.run_dir = result.run_dir or trial.run_dir
            trial.checkpoint_dir = result.checkpoint_dir or trial.checkpoint_dir
            trial.run_id = result.run_id or trial.run_id
            last = trial.intermediate[-1][1] if trial.intermediate else None
            trial.conclude(self.sweep.metric["name"], result.metrics.get(self.metric_key, last),
                           pruned=pruned, exit_code=result.exit_code)
            if pruned and result.run_dir:
                await to_io(set_run_status, result.run_dir, "pruned")
        trial.finished_at = time.time()
        await ledger.trial_ended(trial)

    async def _attempt(self, ledger: Ledger, cfg: Config, trial: TrialRecord,
                       resume: Resume) -> tuple[JobResult, bool]:
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
            return await ledger.scored(trial, epoch, value)

        started = asyncio.create_task(self._started(ledger, job, trial))
        try:
            return await run_evaluated(job, on_evaluation)
        finally:
            started.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await started

    @staticmethod
    async def _started(ledger: Ledger, job: Job, trial: TrialRecord) -> None:
        await job.ready.wait()
        if job.identity is not None:
            trial.run_id, trial.checkpoint_dir = job.identity.id, str(job.identity.dir)
        trial.run_dir = job.run_dir
        await ledger.trial_started(trial)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


def _quiet(line: str) -> None:
    """Trial progress lines are not shown: the sweep's table is."""
