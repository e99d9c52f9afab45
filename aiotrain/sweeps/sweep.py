"""Hyperparameter sweeps: grid, random and Bayesian search over ``Track.Sweep`` distributions.

``sweep = Track.Sweep.define(method="random", metric={"name": "val/loss", "goal": "minimize"},
parameters={"lr": LogUniform(1e-5, 1e-1), "layers": Choice([2, 4]), "dropout": 0.1},
project="mnist", seed=0)`` then ``result = Track.Sweep.agent(sweep, train, count=20)``.

Each trial is a run in the sweep's project, named ``{sweep.id}-{i}`` and tagged
``sweep:{sweep.id}``. The trial function receives its config (a dict, nested like
``parameters``), or ``(config, run)`` when it takes two arguments; it may be ``async def``.
Its objective is ``run.summary[metric name]``: the last value it logged under that name, or
what it returned (a number is stored under the metric name, a dict is merged into the
summary). A trial that raises is kept as a crashed run and the sweep goes on; only when every
trial fails does the agent raise. The methods are those of ``search.py``: grid visits the
cartesian product of ``Choice`` values, ``IntUniform`` ranges and fixed values in order
(``count`` limits it), random draws from ``random.Random(seed)`` and bayes asks Optuna's TPE
(the ``sweeps`` extra); the same seed gives the same trials. ``early_terminate`` (pruning)
needs trials that report scores while they train, which training jobs do: it is honoured by
``aiotrain sweep`` / ``SweepRunner`` (see ``aiotrain/sweeps/runner.py``), not by ``agent``.
Progress is saved after every trial to ``{root}/sweeps/{project}/{sweep_id}.json`` as a
``SweepRecord`` (``record.py``), the shape ``SweepRunner`` writes too; ``agent`` returns it.
"""

from __future__ import annotations

import inspect
import math
import secrets
import string
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from ..runtime import to_io
from ..tracking.run import Run
from ..tracking.status import outcome
from ..tracking.store import check_name, get_dir, get_mode
from .record import SweepRecord, TrialRecord, record_path, write_record
from .search import Search
from .space import (
    Choice,
    Distribution,
    IntUniform,
    LogUniform,
    Normal,
    Uniform,
    flatten,
    grid_axes,
    parse_parameter,
    spec,
    unflatten,
)

__all__ = ["Choice", "Distribution", "IntUniform", "LogUniform", "Normal", "Sweep", "SweepResult", "Uniform"]

METHODS = ("grid", "random", "bayes")
GOALS = ("minimize", "maximize")

SweepResult = SweepRecord
"""What ``Sweep.agent`` returns: the sweep's record (the name of earlier releases)."""


@dataclass
class Sweep:
    """A search definition; make one with ``Sweep.define`` and run it with ``Sweep.agent``."""

    id: str
    method: str
    metric: dict[str, str]
    parameters: dict[str, object]  # a Distribution, or a fixed value, by (dotted) key
    project: str = "sweeps"
    seed: int = 0
    early_terminate: dict[str, object] | None = None

    @classmethod
    def define(cls, method: str, metric: Mapping[str, str], parameters: Mapping[str, object],
               project: str = "sweeps", seed: int = 0,
               early_terminate: Mapping[str, object] | None = None, id: str | None = None) -> Sweep:
        """Check and record a sweep (nothing runs yet). ``early_terminate``:
        ``{"type": "median" | "hyperband", ...options}`` (see ``search.make_pruner``)."""
        if method not in METHODS:
            raise ValueError(f"sweep method must be one of {METHODS}, got {method!r}")
        metric = dict(metric)
        if not isinstance(metric.get("name"), str) or not metric["name"]:
            raise ValueError(f"sweep metric needs a 'name', got {metric!r}")
        metric.setdefault("goal", "minimize")
        if metric["goal"] not in GOALS:
            raise ValueError(f"sweep metric goal must be one of {GOALS}, got {metric['goal']!r}")
        if not isinstance(parameters, Mapping) or not parameters:
            raise ValueError("sweep parameters must be a non-empty mapping")
        sweep = cls(check_name("sweep id", id) if id else _sweep_id(), method, metric, dict(parameters),
                    check_name("project", project), seed, dict(early_terminate) if early_terminate else None)
        if method == "grid":
            grid_axes(sweep.parameters)  # fail now on a continuous distribution
        if method == "bayes" or early_terminate:
            sweep.search()  # fail now without Optuna, or on a space or pruner it cannot take
        return sweep

    @classmethod
    def from_record(cls, record: SweepRecord) -> Sweep:
        """The definition a record holds (its parameters read back from their text form)."""
        params = {k: parse_parameter(v) for k, v in record.parameters.items()}
        return cls.define(record.method, record.metric, unflatten(params), project=record.project,
                          seed=record.seed, early_terminate=record.early_terminate, id=record.id)

    def search(self) -> Search:
        """A fresh search backend for this sweep (``search.make_search``)."""
        from .search import make_search

        goal = "minimize" if self.metric["goal"] == "minimize" else "maximize"
        return make_search(self.parameters, self.method, goal, self.seed, self.early_terminate)

    def configs(self, count: int | None = None) -> Iterator[dict[str, Any]]:
        """The trial configs of a grid or random sweep in order: the grid (up to ``count``) or
        ``count`` random draws (bayes proposals depend on results: use ``search()``)."""
        from .search import GridSearch, RandomSearch

        search: Search
        if self.method == "grid":
            search = GridSearch(self.parameters)
        elif self.method == "random":
            if count is None:
                raise ValueError("random search needs count=")
            search = RandomSearch(self.parameters, self.seed)
        else:
            raise ValueError("bayes proposals depend on results; use sweep.search() ask/tell")
        for _ in range(count) if count is not None else iter(int, 1):
            params = search.ask()
            if params is None:
                return
            yield unflatten(params)

    def new_record(self, **fields: Any) -> SweepRecord:
        """A record of this definition (parameters in their text form) and no trials yet;
        ``fields`` are the other ``SweepRecord`` fields (how a runner runs the trials)."""
        return SweepRecord(id=self.id, method=self.method, metric=dict(self.metric), seed=self.seed,
                           project=self.project, early_terminate=self.early_terminate,
                           parameters={k: spec(v) for k, v in flatten(self.parameters).items()},
                           **fields)

    @staticmethod
    def agent(sweep: Sweep, function: Callable[..., object], count: int | None = None) -> SweepRecord:
        """Run the trials one after another; async trial functions get an event loop of their own
        (inside a running loop, ``await Sweep.aagent(...)`` instead)."""
        if inspect.iscoroutinefunction(function):
            from ..runtime import run as run_loop

            return run_loop(Sweep.aagent(sweep, function, count))
        record, search = _start(sweep, count)
        errors: list[BaseException] = []
        for trial in _proposals(record, search, count):
            run = _trial_run(sweep, trial)
            error = None
            try:
                _returned(run, sweep, function(*_args(function, trial.config, run)))
            except Exception as exc:  # a failed trial is recorded; the sweep goes on
                error = exc
            except BaseException as exc:  # Ctrl-C stops the sweep, the run is kept, interrupted
                run.finish(*outcome(exc))
                raise
            run.finish(*outcome(error))
            _told(search, record, trial, run, error, errors)
            _save(record)
        _end(record)
        _save(record)
        return _checked(record, errors)

    @staticmethod
    async def aagent(sweep: Sweep, function: Callable[..., object], count: int | None = None) -> SweepRecord:
        """``agent`` from a coroutine: sync trials run inline, async ones are awaited."""
        record, search = _start(sweep, count)
        errors: list[BaseException] = []
        for trial in _proposals(record, search, count):
            run = _trial_run(sweep, trial)
            error = None
            try:
                value = function(*_args(function, trial.config, run))
                _returned(run, sweep, await value if inspect.isawaitable(value) else value)
            except Exception as exc:
                error = exc
            except BaseException as exc:  # cancellation stops the sweep, the run is kept, interrupted
                await run.afinish(*outcome(exc))
                raise
            await run.afinish(*outcome(error))
            _told(search, record, trial, run, error, errors)
            await to_io(_save, record)
        _end(record)
        await to_io(_save, record)
        return _checked(record, errors)


def _start(sweep: Sweep, count: int | None) -> tuple[SweepRecord, Search]:
    if sweep.early_terminate:
        raise ValueError("early_terminate needs trials that report while they train: run the sweep "
                         "with `aiotrain sweep` or aiotrain.sweeps.SweepRunner")
    if count is None and sweep.method != "grid":
        raise ValueError(f"{sweep.method} search needs count=")
    return sweep.new_record(trials_wanted=count), sweep.search()


def _proposals(record: SweepRecord, search: Search, count: int | None) -> Iterator[TrialRecord]:
    """The trials in order, each added to the record as it starts."""
    while count is None or len(record.trials) < count:
        params = search.ask()
        if params is None:
            return
        n = len(record.trials)
        trial = TrialRecord(number=n, params=params, config=unflatten(params),
                            name=f"{record.id}-{n}", started_at=time.time())
        record.trials.append(trial)
        yield trial


def _told(search: Search, record: SweepRecord, trial: TrialRecord, run: Run,
          error: BaseException | None, errors: list[BaseException]) -> None:
    """One trial ended: its objective is ``run.summary[metric name]``."""
    _, message = outcome(error)
    value = run.summary.get(record.metric["name"])
    number = (float(value) if isinstance(value, int | float) and not isinstance(value, bool)
              and math.isfinite(value) else None)
    ended = "finished" if error is None and number is not None else "crashed"
    if error is None and number is None:
        message = f"no finite {record.metric['name']!r} (got {value!r})"
    trial.status, trial.error, trial.run_id, trial.run_dir = ended, message, run.id, str(run.dir)
    trial.value = number
    trial.finished_at = time.time()
    if error is not None:
        errors.append(error)
    record.touch()
    search.tell(trial.number, trial.value, ended)


def _end(record: SweepRecord) -> None:
    """Every trial ran: the sweep finished, or crashed when every trial did."""
    failed = bool(record.trials) and all(t.status == "crashed" for t in record.trials)
    record.status = "crashed" if failed else "finished"
    record.touch()


def _checked(record: SweepRecord, errors: list[BaseException]) -> SweepRecord:
    """The record, or RuntimeError when every trial failed (a bug in the trial function, usually)."""
    if record.status == "crashed":
        raise RuntimeError(f"every trial of sweep {record.id} failed; last: "
                           f"{record.trials[-1].error}") from (errors[-1] if errors else None)
    return record


def _trial_run(sweep: Sweep, trial: TrialRecord) -> Run:
    return Run(sweep.project, name=trial.name, config=trial.config, tags=(f"sweep:{sweep.id}",))


def _returned(run: Run, sweep: Sweep, value: object) -> None:
    """A trial's return value: a number is the objective, a dict is merged into the summary."""
    if isinstance(value, Mapping):
        run.summary.update(value)
    elif isinstance(value, int | float) and not isinstance(value, bool):
        run.summary[sweep.metric["name"]] = value


def _args(function: Callable[..., object], config: dict[str, Any], run: Run) -> tuple[object, ...]:
    try:
        params = inspect.signature(function).parameters.values()
    except (TypeError, ValueError):
        return (config,)
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return (config, run) if len(positional) >= 2 else (config,)


def _save(record: SweepRecord) -> None:
    if get_mode() == "disabled":
        return
    write_record(record_path(get_dir(), record.project, record.id), record)


def _sweep_id() -> str:
    return "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))


