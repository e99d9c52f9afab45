"""A sweep shared by many processes and machines: an Optuna study in shared storage is its ledger.

``aiotrain sweep CFG key=SPEC ... --storage URL --study NAME --trials N``, started on as many
machines as you like, runs one sweep together. The storage is Optuna's: an RDB URL
(``sqlite:///path.db`` on one machine, ``postgresql+psycopg://user@host/db`` for many; any URL
Optuna's ``RDBStorage`` takes) or ``journal:///path.log`` (Optuna's ``JournalStorage`` over a
file on a shared file system). The study is the source of truth; no local record is written.

- **One sweep.** The first process stores the sweep's definition (method, metric, parameters,
  seed, pruning) in the study; a process whose command defines another sweep is refused.
- **``--trials N`` counts for the whole study.** Trial numbers come from the storage, so trial
  ``n`` is within the budget when at most N trials numbered up to ``n`` hold a place in it
  (every trial does, except those lost with their worker and those asked past the budget,
  which are never run: a race between two processes that ask at once ends there, exactly).
- **No trial runs twice.** Grid and random proposals go by position: trial ``n`` gets proposal
  ``k``, ``k`` counting the trials before it that are neither retries nor surplus; bayes is Optuna's TPE
  (``constant_liar``, so running trials are not proposed again; each process's sampler is
  seeded from ``--seed`` and its process id); retries are Optuna's waiting trials, which one
  process takes each.
- **A worker killed with kill -9 loses no trial.** Each process records, per running trial,
  its owner (pid, start time and host: ``aiotrain/owner.py``) and a heartbeat every sixth of
  ``heartbeat_timeout``. Before taking a trial a process fails every running trial whose owner
  is dead (same host: at once, pid-reuse-safe) or whose heartbeat is older than
  ``heartbeat_timeout`` (another host), marks it lost with the reason, and, up to ``retries``
  times per trial, queues a retry with the same parameters (Optuna's
  ``RetryFailedTrialCallback``); with ``retries=0`` the sweep moves on to a new trial instead.
  A process stopped with Ctrl-C hands its trials back the same way.
- **Everyone learns from everyone.** Reports and results go to the study, so the pruner and the
  bayes sampler of every process see every process's trials.
- **Done is done for all.** A process with nothing left to take waits while other processes'
  trials run (one of them may still be lost and need a retry), then returns the study's whole
  record: every process ends with the same table.

A trial is tracked as run ``{study}-{n}`` tagged ``sweep:{study}``, with its checkpoints under
the process's own tracking root; what the record needs of it (run id, folders, error, note) is
kept in the trial's user attributes.
"""

from __future__ import annotations

import asyncio
import math
import os
import socket
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from ..owner import current_owner, owner_alive
from ..runtime import to_io
from ..tracking.store import check_name
from .ledger import Claim
from .record import SweepRecord, TrialRecord
from .search import (
    GridSearch,
    RandomSearch,
    make_pruner,
    optuna_distribution,
    optuna_module,
    suggest,
)
from .space import Distribution, Params, flatten, unflatten
from .sweep import Sweep

if TYPE_CHECKING:
    from optuna import Study, Trial
    from optuna.distributions import BaseDistribution
    from optuna.samplers import BaseSampler
    from optuna.storages import BaseStorage
    from optuna.trial import FrozenTrial

__all__ = ["StudyLedger", "open_storage", "stored_sweep"]

DEFINITION = "aiotrain:sweep"  # study user attribute: the sweep's definition
INFO = "aiotrain:trial"  # trial user attribute: name, run id, folders, error, note, times
OWNER = "aiotrain:owner"  # trial system attribute: the process running it
BEAT = "aiotrain:heartbeat"  # trial system attribute: when its owner last said it was alive
LOST = "aiotrain:lost"  # trial system attribute: why it was failed for its owner
SURPLUS = "aiotrain:surplus"  # trial system attribute: asked past the budget, never run
RETRY = "failed_trial"  # Optuna's mark of a retry: the number of the trial it retries
_DEFINED = ("method", "metric", "parameters", "early_terminate", "seed")
_WAIT = "wait"  # nothing to take now, but others' trials still run
_SCHEMA_TRIES = 5


def open_storage(url: str) -> BaseStorage:
    """The Optuna storage at ``url`` (see the module docstring); ValueError in one line when
    it cannot be opened. Blocking: call it off the event loop."""
    optuna_module()  # (the extra's one-line error when it is missing)
    from optuna.storages import RDBStorage

    try:
        if url.startswith("journal://"):
            from optuna.storages.journal import JournalFileBackend, JournalStorage

            path = url.removeprefix("journal://")
            if not path.startswith("/"):
                raise ValueError("write journal:///absolute/path.log")
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            return JournalStorage(JournalFileBackend(path))
        # SQLite: writers wait for each other (its default 5 s is short on a busy machine)
        kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else None
        tries = 0
        while True:
            try:
                return RDBStorage(url, engine_kwargs=kwargs)
            except Exception as exc:  # processes that start together race to create the schema
                tries += 1  # (optuna/optuna#1092): whoever loses finds it made on the next try
                if tries == _SCHEMA_TRIES or "sqlalchemy" not in type(exc).__module__:
                    raise
                time.sleep(0.2 * tries)
    except ModuleNotFoundError as exc:
        raise ValueError(f"--storage {url}: needs the {exc.name!r} package (for postgresql: "
                         "pip install 'psycopg[binary]' and write postgresql+psycopg://...)") from None
    except Exception as exc:  # SQLAlchemy and Optuna raise many kinds: one line either way
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ValueError(f"--storage {url}: cannot open it ({first})") from None


def stored_sweep(storage: str, study: str) -> Sweep:
    """The sweep a study in ``storage`` runs (what a process that joins it without parameters
    runs); ValueError when there is no such study or it holds no sweep yet."""
    optuna = optuna_module()
    try:
        loaded = optuna.load_study(study_name=study, storage=open_storage(storage))
    except KeyError:
        raise ValueError(f"no study {study!r} in {storage}: give the key=SPEC parameters to "
                         "start it") from None
    stored = loaded.user_attrs.get(DEFINITION)
    if stored is None:
        raise ValueError(f"study {study!r} in {storage} holds no aiotrain sweep")
    return Sweep.from_record(SweepRecord(id=study, **stored))


class StudyLedger:
    """The ``Ledger`` of a shared sweep (see the module docstring).

    ``fields`` are the record's runner fields (config, overrides, owner, ...); ``trials`` is
    the study's budget as this process sees it (None: the whole grid).
    """

    def __init__(self, sweep: Sweep, storage: str, study: str, root: Path, project: str,
                 trials: int | None, fields: Mapping[str, Any], *, retries: int = 1,
                 heartbeat_timeout: float = 60.0,
                 on_update: Callable[[SweepRecord], None] | None = None) -> None:
        if retries < 0:
            raise ValueError(f"retries must be >= 0, got {retries}")
        if not heartbeat_timeout > 0:
            raise ValueError(f"heartbeat_timeout must be > 0 seconds, got {heartbeat_timeout!r}")
        self.sweep, self.url, self.name = sweep, storage, check_name("study", study)
        self.root, self.project, self.trials = root, project, trials
        self.retries, self.timeout, self.on_update = retries, heartbeat_timeout, on_update
        self._record = sweep.new_record(**{**fields, "storage": storage, "study": study})
        self._record.id = self.name
        flat = flatten(sweep.parameters)
        self._fixed = {k: v for k, v in flat.items() if not isinstance(v, Distribution)}
        self._space = {k: v for k, v in flat.items() if isinstance(v, Distribution)}
        self._proposals: list[Params] = []
        self._next: GridSearch | None = None  # grid or random proposals, in order
        self._pending: Params = {}  # the proposal the trial being asked gets
        self._mine: dict[int, Trial] = {}  # the optuna Trials this process runs, by number
        self._lock = asyncio.Lock()  # one storage conversation at a time
        self._beats: asyncio.Task[None] | None = None

    # opened by ``begin`` (off the loop: Optuna's storage blocks)
    _storage: BaseStorage
    _study: Study
    _optuna: ModuleType

    @property
    def record(self) -> SweepRecord:
        return self._record

    # the Ledger ----------------------------------------------------------------------------
    async def begin(self) -> None:
        async with self._lock:
            await to_io(self._open)
            await self._refresh()
        self._beats = asyncio.get_running_loop().create_task(self._heartbeats(),
                                                             name=f"aiotrain-sweep-{self.name}")

    async def claim(self) -> Claim | None:
        while True:
            async with self._lock:
                claimed = await to_io(self._claim)
                await self._refresh()
            if claimed != _WAIT:
                return claimed if isinstance(claimed, tuple) else None
            await asyncio.sleep(self.timeout / 6)

    async def trial_started(self, trial: TrialRecord) -> None:
        async with self._lock:
            await to_io(self._keep_info, trial)
            await self._refresh()

    async def scored(self, trial: TrialRecord, step: int, value: float) -> bool:
        async with self._lock:
            prune = await to_io(self._report, trial, step, value)
            await self._refresh()
        return prune

    async def trial_ended(self, trial: TrialRecord) -> None:
        async with self._lock:
            await to_io(self._tell, trial)
            await self._refresh()

    async def end(self, status: str) -> None:
        if self._beats is not None:
            self._beats.cancel()
        async with self._lock:
            for trial in list(self._mine):  # cancelled: hand what this process ran back
                await to_io(self._give_back, trial, f"its worker on {socket.gethostname()} "
                                                    f"was stopped ({status})")
            await self._refresh()
        self._record.status = status
        if self.on_update is not None:
            self.on_update(self._record)

    # opening ---------------------------------------------------------------------------------
    def _open(self) -> None:
        optuna = self._optuna = optuna_module()
        self._storage = open_storage(self.url)
        definition = {k: getattr(self._record, k) for k in _DEFINED}
        sweep = self.sweep
        if sweep.method == "bayes":  # processes must not propose the same points
            seed = (sweep.seed * 1_000_003 + os.getpid()) % 2**32
            sampler = optuna.samplers.TPESampler(seed=seed, constant_liar=True)
        else:
            sampler = _proposal_sampler(self._proposed)
            self._next = (GridSearch(sweep.parameters) if sweep.method == "grid"
                          else RandomSearch(sweep.parameters, sweep.seed))
        for key, dist in self._space.items():
            optuna_distribution(key, dist)  # fail now on a space Optuna cannot store
        goal = "minimize" if sweep.metric["goal"] == "minimize" else "maximize"
        self._study = optuna.create_study(study_name=self.name, storage=self._storage,
                                          load_if_exists=True, direction=goal, sampler=sampler,
                                          pruner=make_pruner(sweep.early_terminate))
        stored = self._study.user_attrs.get(DEFINITION)
        if stored is None:
            self._study.set_user_attr(DEFINITION, definition)
            stored = self._study.user_attrs[DEFINITION]  # two first processes: one wins
        if stored != definition:
            differ = [k for k in _DEFINED if stored.get(k) != definition[k]]
            shown = "; ".join(f"{k} {stored.get(k)!r} there, {definition[k]!r} here" for k in differ)
            raise ValueError(f"study {self.name!r} runs another sweep (its {', '.join(differ)} "
                             f"differ: {shown}); run the same sweep, or name another study")

    # claiming --------------------------------------------------------------------------------
    def _claim(self) -> Claim | str | None:
        """Fail the lost trials, then take a waiting retry or a new trial within the budget;
        ``_WAIT`` while only other processes' trials are left running."""
        TrialState = self._optuna.trial.TrialState
        self._fail_lost()
        trials = self._study.get_trials(deepcopy=False)
        waiting = any(t.state == TrialState.WAITING for t in trials)
        if not waiting and (self._places(trials, None) >= self._budget() or self._exhausted(trials)):
            others = [t for t in trials if t.state == TrialState.RUNNING and t.number not in self._mine]
            return _WAIT if others else None
        trial = self._study.ask()  # a waiting retry first, else a new trial
        retry = self._storage.get_trial(trial._trial_id).system_attrs.get(RETRY)
        n = trial.number
        if retry is None:
            trials = self._study.get_trials(deepcopy=False)
            proposal = self._proposal(_proposed_before(trials, n))
            if self._places(trials, n) > self._budget() or proposal is None:
                self._storage.set_trial_system_attr(trial._trial_id, SURPLUS, True)
                self._study.tell(trial, state=TrialState.FAIL)
                return _WAIT
            self._pending = proposal
        params = {**self._fixed, **{key: suggest(trial, key, optuna_distribution(key, dist))
                                    for key, dist in self._space.items()}}
        params = {key: params[key] for key in flatten(self.sweep.parameters)}
        now = time.time()
        self._storage.set_trial_system_attr(trial._trial_id, OWNER, current_owner())
        self._storage.set_trial_system_attr(trial._trial_id, BEAT, now)
        record = TrialRecord(number=n, params=params, config=unflatten(params),
                             name=f"{self.name}-{n}", started_at=now,
                             checkpoint_dir=str(self.root / "checkpoints" / self.project / f"{self.name}-{n}"),
                             note=f"retry of trial {retry}" if retry is not None else None)
        self._mine[n] = trial
        self._keep_info(record)
        return record, False

    def _budget(self) -> float:
        """The study's trials: ``--trials``, else the whole grid."""
        if self.trials is not None:
            return self.trials
        return GridSearch(self.sweep.parameters).size if self.sweep.method == "grid" else math.inf

    def _places(self, trials: list[FrozenTrial], upto: int | None) -> int:
        """Trials (numbered up to ``upto``) that hold a place in the budget: all but the lost
        and the surplus."""
        return sum(1 for t in trials if (upto is None or t.number <= upto) and not _lost(t, self._optuna)
                   and SURPLUS not in t.system_attrs)

    def _exhausted(self, trials: list[FrozenTrial]) -> bool:
        """Grid or random proposals have run out for the next new trial."""
        return self._proposal(_proposed_before(trials, None)) is None

    def _proposal(self, k: int) -> Params | None:
        """Grid or random proposal ``k`` (bayes: an empty proposal, the sampler decides)."""
        if self._next is None:
            return {}
        while len(self._proposals) <= k:
            params = self._next.ask()
            if params is None:
                return None
            self._proposals.append(params)
        return self._proposals[k]

    def _proposed(self, number: int, key: str) -> object:
        """The value the proposal sampler gives trial ``number`` for ``key``."""
        return self._pending[key]

    def _fail_lost(self) -> None:
        """Fail every running trial whose owner is gone, and queue its retry (module doc)."""
        TrialState = self._optuna.trial.TrialState
        now = time.time()
        for t in self._study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if t.number in self._mine:
                continue
            owner = t.system_attrs.get(OWNER) or {}
            beat = t.system_attrs.get(BEAT)
            if beat is None:  # between ask and its owner's first word: judge by its start
                beat = t.datetime_start.timestamp() if t.datetime_start else now
            where = f"pid {owner.get('pid')} on {owner.get('host')}"
            if owner_alive(owner) is False:
                self._fail_lost_trial(t, f"its worker ({where}) died")
            elif now - beat > self.timeout:
                self._fail_lost_trial(t, f"its worker ({where}) sent no heartbeat for "
                                         f"{now - beat:.0f} s")

    def _give_back(self, number: int, why: str) -> None:
        """This process stops running trial ``number``: it is lost (``why``) and retried."""
        trial = self._mine.pop(number)
        self._fail_lost_trial(self._storage.get_trial(trial._trial_id), why)

    def _fail_lost_trial(self, trial: FrozenTrial, why: str) -> None:
        """Mark a running trial (a FrozenTrial) lost and failed; the process that fails it
        queues its retry, once."""
        optuna = self._optuna
        try:
            self._storage.set_trial_system_attr(trial._trial_id, LOST, why)
            if not self._storage.set_trial_state_values(trial._trial_id, optuna.trial.TrialState.FAIL):
                return
        except optuna.exceptions.UpdateFinishedTrialError:
            return  # another process failed it first, or it ended after all
        lost = self._storage.get_trial(trial._trial_id)
        already = any(lost.number in t.system_attrs.get("retry_history", ())
                      for t in self._study.get_trials(deepcopy=False) if RETRY in t.system_attrs)
        if self.retries and not already:
            optuna.storages.RetryFailedTrialCallback(max_retry=self.retries)(self._study, lost)

    # reports and outcomes ----------------------------------------------------------------------
    def _report(self, trial: TrialRecord, step: int, value: float) -> bool:
        mine = self._mine.get(trial.number)
        if mine is None:
            return True
        try:
            mine.report(value, step)
            prune = bool(mine.should_prune())
        except self._optuna.exceptions.UpdateFinishedTrialError:
            self._mine.pop(trial.number, None)  # failed as lost by another process: stop it
            trial.note = "stopped: another worker took it as lost (no heartbeat in time)"
            return True
        if prune:
            trial.status = "pruned"
        return prune

    def _tell(self, trial: TrialRecord) -> None:
        TrialState = self._optuna.trial.TrialState
        mine = self._mine.pop(trial.number, None)
        if mine is None:
            return
        try:
            self._keep_info(trial)
            if trial.status == "finished" and trial.value is not None and math.isfinite(trial.value):
                self._study.tell(mine, trial.value)
            elif trial.status == "pruned":
                self._study.tell(mine, state=TrialState.PRUNED)
            else:
                self._study.tell(mine, state=TrialState.FAIL)
        except self._optuna.exceptions.UpdateFinishedTrialError:
            pass  # taken as lost by another process meanwhile: its retry runs elsewhere

    def _keep_info(self, trial: TrialRecord) -> None:
        mine = self._mine.get(trial.number)
        if mine is None:
            return
        info = {"name": trial.name, "run_id": trial.run_id, "run_dir": trial.run_dir,
                "checkpoint_dir": trial.checkpoint_dir, "error": trial.error, "note": trial.note,
                "started_at": trial.started_at, "finished_at": trial.finished_at,
                "host": socket.gethostname()}
        try:
            self._storage.set_trial_user_attr(mine._trial_id, INFO, info)
        except self._optuna.exceptions.UpdateFinishedTrialError:
            pass

    async def _heartbeats(self) -> None:
        """Every sixth of the timeout: this process's running trials are alive."""
        while True:
            await asyncio.sleep(self.timeout / 6)
            async with self._lock:
                await to_io(self._beat)

    def _beat(self) -> None:
        now = time.time()
        for trial in list(self._mine.values()):
            try:
                self._storage.set_trial_system_attr(trial._trial_id, BEAT, now)
            except self._optuna.exceptions.UpdateFinishedTrialError:
                pass  # taken as lost: its report or tell will say so

    # the record ------------------------------------------------------------------------------
    async def _refresh(self) -> None:
        """The record rebuilt from the study (what ``on_update`` shows)."""
        self._record.trials = await to_io(self._trials)
        self._record.touch()
        if self.on_update is not None:
            self.on_update(self._record)

    def _trials(self) -> list[TrialRecord]:
        TrialState = self._optuna.trial.TrialState
        status = {TrialState.RUNNING: "running", TrialState.COMPLETE: "finished",
                  TrialState.PRUNED: "pruned", TrialState.FAIL: "crashed"}
        out = []
        for t in self._study.get_trials(deepcopy=False):
            if t.state not in status or SURPLUS in t.system_attrs:
                continue  # a queued retry, or a trial past the budget
            info = t.user_attrs.get(INFO) or {}
            params = {**self._fixed, **t.params}
            params = {k: params[k] for k in flatten(self.sweep.parameters) if k in params}
            scores = sorted(t.intermediate_values.items())
            error = info.get("error")
            if _lost(t, self._optuna):
                error = f"lost: {t.system_attrs[LOST]}"
            value = t.value if t.state == TrialState.COMPLETE else None
            if t.state == TrialState.PRUNED and scores:
                value = scores[-1][1]
            out.append(TrialRecord(
                number=t.number, params=params, config=unflatten(params), status=status[t.state],
                value=value, intermediate=[(int(s), float(v)) for s, v in scores],
                name=info.get("name"), run_id=info.get("run_id"), run_dir=info.get("run_dir"),
                checkpoint_dir=info.get("checkpoint_dir"), error=error, note=info.get("note"),
                started_at=info.get("started_at"), finished_at=info.get("finished_at")))
        return out


def _proposed_before(trials: list[FrozenTrial], number: int | None) -> int:
    """How many proposals the trials before ``number`` (all: None) used: every trial but the
    retries (which rerun a proposal) and the surplus (never run)."""
    return sum(1 for t in trials if (number is None or t.number < number)
               and RETRY not in t.system_attrs and SURPLUS not in t.system_attrs)


def _lost(trial: FrozenTrial, optuna: ModuleType) -> bool:
    """A trial failed because its worker was gone (not because it failed)."""
    return trial.state == optuna.trial.TrialState.FAIL and LOST in trial.system_attrs


def _proposal_sampler(value: Callable[[int, str], object]) -> BaseSampler:
    """An Optuna sampler that gives each parameter the value ``value(trial number, name)``:
    how grid and random proposals, chosen by position, reach the study."""

    from optuna.samplers import BaseSampler  # imported by the caller already: optuna_module()

    class ProposalSampler(BaseSampler):
        def infer_relative_search_space(self, study: Study, trial: FrozenTrial
                                        ) -> dict[str, BaseDistribution]:
            return {}

        def sample_relative(self, study: Study, trial: FrozenTrial,
                            search_space: dict[str, BaseDistribution]) -> dict[str, object]:
            return {}

        def sample_independent(self, study: Study, trial: FrozenTrial, name: str,
                               distribution: BaseDistribution) -> object:
            return value(trial.number, name)

    sampler: BaseSampler = ProposalSampler()
    return sampler
