"""SweepRunner: a sweep's trials as training jobs of one config, K at a time, pruned, crash-safe.

``SweepRunner(sweep, "train.sdn", overrides, trials=20, parallel=4)`` then ``await runner.run()``
(``aiotrain sweep`` is a thin shell around it). Each trial is the config with the trial's
parameters merged in (before interpolation, so ``${model.dim}`` sees them), run as a TrainJob:
in a job worker process of its own by default (``ProcessJob``: a trial's result never depends on
what runs beside it), or in this process with ``isolate=False`` (one trial at a time then,
since trials in one process share torch's RNG). After every evaluation the trial's score goes to
the search backend; when its pruner says so the trial stops at once, its run is marked
``pruned`` and its checkpoints are kept.

Trial ``n`` is tracked as run ``{sweep_id}-{n}`` tagged ``sweep:{sweep_id}`` and ``trial:{n}``,
with its checkpoints in ``{root}/checkpoints/{project}/{sweep_id}-{n}``. The sweep's record,
``{root}/sweeps/{project}/{sweep_id}.json``, is rewritten atomically at every change (a trial
starts, reports, ends): the definition, the base config and overrides, and per trial its
number, params, status (running, finished, pruned, crashed, interrupted), value, intermediate
scores, run and checkpoint folders. ``SweepRunner.aresume(sweep_id)`` continues from that record
after anything up to kill -9: finished, pruned and crashed trials are kept as they are (and
replayed into the search), trials that were running continue from their last checkpoint.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import msgspec

from ..config import Conf, Config, ConfigError
from ..files import atomic_write
from ..job import TrainJob, TrainSettings
from ..job.identity import ResumeError
from ..job.isolation import ProcessJob, run_evaluated
from ..owner import current_owner, owner_alive, owner_of
from ..runtime import to_io
from ..tracking.reader import list_runs
from ..tracking.run import set_run_status
from .space import flatten, parse_parameter, unflatten
from .sweep import Sweep, SweepResult

__all__ = ["SweepRunner", "find_record"]

_ENDED = ("finished", "pruned", "crashed")


class SweepRunner:
    """Runs ``trials`` trials of ``sweep`` over the config at ``config`` (see the module docstring).

    ``overrides`` are fixed ``key=value`` changes to the config; ``parallel`` trials run at once
    (each in its own worker process; ``isolate=False`` runs them in this process, one at a
    time); ``on_update(record)`` is called on the loop after every change of the record (the
    CLI's live table).
    """

    def __init__(self, sweep: Sweep, config: str | os.PathLike[str], overrides: Sequence[str] = (), *,
                 trials: int | None = None, parallel: int = 1, isolate: bool = True,
                 on_update: Callable[[dict[str, Any]], None] | None = None) -> None:
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
        self.record: dict[str, Any] = {}
        self.root = Path()
        self._path = Path()
        self._search: Any = None
        self._redo: list[dict[str, Any]] = []
        self._lock = asyncio.Lock()  # the search backend: one call at a time
        self._save_lock = asyncio.Lock()  # record writes land in order

    @classmethod
    async def aresume(cls, sweep_id: str, root: str | os.PathLike[str], *, parallel: int | None = None,
                     on_update: Callable[[dict[str, Any]], None] | None = None) -> SweepRunner:
        """A runner that continues the sweep recorded as ``sweep_id`` under the tracking ``root``."""
        path = await to_io(find_record, sweep_id, root)
        record = await to_io(_read, path)
        owner = owner_of(record)
        if owner.get("pid") != os.getpid() and owner_alive(owner):
            raise RuntimeError(f"sweep {sweep_id} is still running (pid {owner['pid']}); "
                               "stop it before resuming")
        params = {k: parse_parameter(v) for k, v in record["parameters"].items()}
        sweep = Sweep.define(record["method"], record["metric"], unflatten(params),
                             project=record["project"], seed=record["seed"],
                             early_terminate=record.get("early_terminate"), id=record["id"])
        runner = cls(sweep, record["config"], record["overrides"], trials=record["trials_wanted"],
                     parallel=parallel or record["parallel"], isolate=record["isolate"], on_update=on_update)
        runner.record = record
        return runner

    async def run(self) -> dict[str, Any]:
        """Run (or continue) the sweep; returns the final record. Cancelling stops the trials in
        flight (each flushes its checkpoints) and records them ``interrupted``."""
        resuming = bool(self.record)
        await to_io(self._prepare, resuming)
        self._search = await to_io(self.sweep.search)  # Optuna's import takes a while
        if resuming:
            await self._restore()
        self.record.update(status="running", owner=current_owner())
        await self._save()
        try:
            async with asyncio.TaskGroup() as group:
                for _ in range(self.parallel):
                    group.create_task(self._worker())
        except BaseException as exc:
            self.record["status"] = "interrupted" if isinstance(exc, asyncio.CancelledError) else "crashed"
            await asyncio.shield(self._save())
            raise
        self.record["status"] = "finished"
        await self._save()
        return self.record

    @property
    def best(self) -> dict[str, Any] | None:
        """The finished trial with the best value (None while there is none)."""
        return self.record.get("best")

    # setting up ----------------------------------------------------------------------------
    def _prepare(self, resuming: bool) -> None:
        """Read the base config (blocking file work: runs in the I/O executor)."""
        base = self._config({})
        settings = Conf.validate(TrainSettings, base, strict=False)
        raw = Conf.merge(Conf.load_sdn(self.config), Conf.from_cli_dotlist(self.overrides))
        for key in flatten(self.sweep.parameters):
            if not Conf.has_path(raw, key):
                raise ConfigError(f"sweep parameter {key!r} is not a key of {self.config} "
                                  "(add it to the config, or check its spelling)", full_key=key)
        tr = settings.tracking
        self.root = Path(tr.dir or os.environ.get("AIOTRAIN_DIR", ".aiotrain")).resolve()
        self._project, self._tags = tr.project, list(tr.tags)
        if self.sweep.project != tr.project and not resuming:
            self.sweep.project = tr.project
        self._path = self.root / "sweeps" / self.sweep.project / f"{self.sweep.id}.json"
        if not resuming:
            self.record = {**self.sweep.describe(), "config": self.config, "overrides": self.overrides,
                           "root": str(self.root), "trials_wanted": self.trials, "parallel": self.parallel,
                           "isolate": self.isolate, "status": "running", "created_at": time.time(),
                           "updated_at": time.time(), "trials": [], "best": None}

    async def _restore(self) -> None:
        trials = self.record["trials"]
        await to_io(self._search.restore, trials)
        left = [t for t in trials if t["status"] not in _ENDED]
        stale = await to_io(_stale_runs, self.root, self._project, self.sweep.id)
        for run_dir in stale:  # a killed sweep left these runs "running"
            await to_io(set_run_status, run_dir, "interrupted", "the sweep process was killed")
        for t in left:
            if hasattr(self._search, "resume_trial"):
                steps = [(int(s), float(v)) for s, v in t["intermediate"]]
                await to_io(self._search.resume_trial, t["number"], t["params"], steps)
            t["status"] = "running"
        self._redo = left

    def _config(self, params: dict[str, Any], extra: dict[str, Any] | None = None) -> Config:
        cfg = Conf.merge(Conf.load_sdn(self.config), Conf.from_cli_dotlist(self.overrides),
                         unflatten(params), extra or {})
        return Conf.resolve(cfg)

    def _trial_config(self, trial: dict[str, Any]) -> Config:
        name = f"{self.sweep.id}-{trial['number']}"
        return self._config(trial["params"], {
            "tracking": {"name": name, "tags": [*self._tags, f"sweep:{self.sweep.id}",
                                                f"trial:{trial['number']}"]},
            "checkpoint": {"dir": str(self._checkpoint_root(trial["number"]))}})

    def _checkpoint_root(self, number: int) -> Path:
        """Where trial ``number``'s job keeps its checkpoints (the same on resume)."""
        return self.root / "checkpoints" / self._project / f"{self.sweep.id}-{number}"

    # running trials ------------------------------------------------------------------------
    async def _worker(self) -> None:
        while (trial := await self._claim()) is not None:
            await self._run_trial(trial)

    async def _claim(self) -> dict[str, Any] | None:
        async with self._lock:
            if self._redo:
                trial = self._redo.pop(0)
                trial["resume"] = True
                return trial
            trials = self.record["trials"]
            if self.trials is not None and len(trials) >= self.trials:
                return None
            params = await to_io(self._search.ask)
            if params is None:  # the grid is done
                return None
            n = len(trials)
            trial = {"number": n, "params": params, "config": unflatten(params), "status": "running",
                     "value": None, "intermediate": [], "run_id": None, "run_dir": None,
                     "name": f"{self.sweep.id}-{n}", "error": None, "started_at": time.time(),
                     "finished_at": None, "checkpoint_dir": str(self._checkpoint_root(n))}
            trials.append(trial)
        await self._save()
        return trial

    async def _run_trial(self, trial: dict[str, Any]) -> None:
        n = trial["number"]
        resume = bool(trial.pop("resume", False))
        try:
            cfg = await to_io(self._trial_config, trial)
            kind = ProcessJob if self.isolate else TrainJob
            job = kind(cfg, resume=resume, progress=False, echo=_quiet)

            async def on_evaluation(epoch: int, metrics: dict[str, Any]) -> bool:
                if self.metric_key not in metrics:
                    raise ValueError(f"sweep metric {self.sweep.metric['name']!r} is not an evaluated "
                                     f"metric; the task evaluates {sorted(metrics)}")
                value = float(metrics[self.metric_key])
                # a trial resumed from a checkpoint older than its last report redoes that epoch
                trial["intermediate"] = [e for e in trial["intermediate"] if e[0] < epoch] + [[epoch, value]]
                async with self._lock:
                    prune = await to_io(self._search.report, n, epoch, value)
                await self._save()
                return prune

            try:
                result, pruned = await run_evaluated(job, on_evaluation)
            except ResumeError as exc:  # nothing resumable was left (killed before its first
                if not resume:  # checkpoint or record): the trial starts over, nothing else is lost
                    raise
                trial["error"] = f"restarted: {_one_line(exc)}"
                job = kind(cfg, resume=False, progress=False, echo=_quiet)
                result, pruned = await run_evaluated(job, on_evaluation)
        except asyncio.CancelledError:
            trial["status"] = "interrupted"
            raise
        except Exception as exc:  # a failed trial is recorded; the sweep goes on
            trial.update(status="crashed", error=_one_line(exc))
        else:
            trial["run_dir"] = result.run_dir
            trial["checkpoint_dir"] = str(result.checkpoint_dir or trial["checkpoint_dir"])
            trial["run_id"] = Path(result.run_dir).name if result.run_dir else None
            last = trial["intermediate"][-1][1] if trial["intermediate"] else None
            value = result.metrics.get(self.metric_key, last)
            if result.exit_code != 0:
                trial.update(status="crashed", error=f"the job exited with status {result.exit_code} "
                                                     "(validation errors)")
            elif value is None:
                trial.update(status="crashed", error=f"no {self.sweep.metric['name']!r} was evaluated "
                                                     "(does the task have a val_loader and metrics?)")
            else:
                trial.update(status="pruned" if pruned else "finished", value=float(value))
            if pruned and result.run_dir:
                await to_io(set_run_status, result.run_dir, "pruned")
        trial["finished_at"] = time.time()
        async with self._lock:
            await to_io(self._search.tell, n, trial["value"], trial["status"])
        await self._save()

    # the record ----------------------------------------------------------------------------
    async def _save(self) -> None:
        rec = self.record
        rec["updated_at"] = time.time()
        finished = [t for t in rec["trials"] if t["status"] == "finished"]
        rec["best"] = SweepResult(self.sweep.id, self.sweep.metric, finished).best
        data = msgspec.json.encode(rec)  # on the loop: the record changes only here
        async with self._save_lock:
            await to_io(atomic_write, self._path, data)
        if self.on_update is not None:
            self.on_update(rec)


def find_record(sweep_id: str, root: str | os.PathLike[str]) -> Path:
    """The record file of ``sweep_id`` under the tracking ``root`` (LookupError if none)."""
    found = sorted(Path(root).glob(f"sweeps/*/{sweep_id}.json"))
    if not found:
        raise LookupError(f"no sweep {sweep_id!r} under {Path(root) / 'sweeps'} "
                          "(give --dir, the tracking root the sweep wrote to)")
    return found[0]


def _read(path: Path) -> dict[str, Any]:
    try:
        return msgspec.json.decode(path.read_bytes())
    except msgspec.DecodeError as exc:
        raise ValueError(f"{path}: not a sweep record ({exc})") from None


def _stale_runs(root: Path, project: str, sweep_id: str) -> list[Path]:
    tag = f"sweep:{sweep_id}"
    return [r.dir for r in list_runs(project, root) if tag in r.tags and r.status == "running"]


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


def _quiet(line: str) -> None:
    """Trial progress lines are not shown: the sweep's table is."""
