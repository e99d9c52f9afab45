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
Progress is saved after every trial to ``{root}/sweeps/{project}/{sweep_id}.json``.
"""

from __future__ import annotations

import inspect
import math
import secrets
import string
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..runtime import to_io
from ..tracking.run import Run, outcome
from ..tracking.store import check_name, get_dir, get_mode, write_json
from .space import (
    Choice,
    Distribution,
    IntUniform,
    LogUniform,
    Normal,
    Uniform,
    flatten,
    grid_axes,
    spec,
    unflatten,
)

__all__ = ["Choice", "Distribution", "IntUniform", "LogUniform", "Normal", "Sweep", "SweepResult", "Uniform"]

METHODS = ("grid", "random", "bayes")
GOALS = ("minimize", "maximize")


@dataclass
class SweepResult:
    """What ``Sweep.agent`` ran: every trial (run id, config, value, status) and the best one."""

    sweep_id: str
    metric: dict[str, str]
    trials: list[dict[str, Any]] = field(default_factory=list)
    last_error: BaseException | None = field(default=None, repr=False, compare=False)

    def add(self, run: Run, config: dict[str, Any], error: BaseException | None) -> None:
        """Record one trial's outcome (its objective is ``run.summary[metric name]``)."""
        status, message = outcome(error)
        self.trials.append({"run_id": run.id, "config": config, "status": status, "error": message,
                            "value": run.summary.get(self.metric["name"])})
        self.last_error = error or self.last_error

    def checked(self) -> SweepResult:
        """Self, or RuntimeError when every trial failed (a bug in the trial function, usually)."""
        if self.trials and all(t["status"] == "crashed" for t in self.trials):
            raise RuntimeError(f"every trial of sweep {self.sweep_id} failed; last: "
                               f"{self.trials[-1]['error']}") from self.last_error
        return self

    @property
    def best(self) -> dict[str, Any] | None:
        """The finished trial with the best finite metric value (None when there is none)."""
        scored = [t for t in self.trials if isinstance(t["value"], int | float) and math.isfinite(t["value"])]
        if not scored:
            return None
        pick = min if self.metric["goal"] == "minimize" else max
        return pick(scored, key=lambda t: t["value"])

    def to_dict(self) -> dict[str, Any]:
        return {"sweep_id": self.sweep_id, "metric": self.metric, "trials": self.trials, "best": self.best}


@dataclass
class Sweep:
    """A search definition; make one with ``Sweep.define`` and run it with ``Sweep.agent``."""

    id: str
    method: str
    metric: dict[str, str]
    parameters: dict[str, Any]
    project: str = "sweeps"
    seed: int = 0
    early_terminate: dict[str, Any] | None = None

    @classmethod
    def define(cls, method: str, metric: Mapping[str, str], parameters: Mapping[str, Any],
               project: str = "sweeps", seed: int = 0,
               early_terminate: Mapping[str, Any] | None = None, id: str | None = None) -> Sweep:
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

    def search(self) -> Any:
        """A fresh search backend for this sweep (``search.make_search``)."""
        from .search import make_search

        goal = "minimize" if self.metric["goal"] == "minimize" else "maximize"
        return make_search(self.parameters, self.method, goal, self.seed, self.early_terminate)

    def configs(self, count: int | None = None) -> Iterator[dict[str, Any]]:
        """The trial configs of a grid or random sweep in order: the grid (up to ``count``) or
        ``count`` random draws (bayes proposals depend on results: use ``search()``)."""
        from .search import GridSearch, RandomSearch

        if self.method == "grid":
            search: Any = GridSearch(self.parameters)
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

    def describe(self) -> dict[str, Any]:
        """The definition as plain data (parameters in their text form): what a record stores."""
        return {"id": self.id, "method": self.method, "metric": self.metric, "seed": self.seed,
                "project": self.project, "early_terminate": self.early_terminate,
                "parameters": {k: spec(v) for k, v in flatten(self.parameters).items()}}

    @staticmethod
    def agent(sweep: Sweep, function: Callable[..., Any], count: int | None = None) -> SweepResult:
        """Run the trials one after another; async trial functions get an event loop of their own
        (inside a running loop, ``await Sweep.aagent(...)`` instead)."""
        if inspect.iscoroutinefunction(function):
            from ..runtime import run as run_loop

            return run_loop(Sweep.aagent(sweep, function, count))
        result, search = _start(sweep, count)
        for i, config in _proposals(search, count):
            run = _trial_run(sweep, i, config)
            error = None
            try:
                _returned(run, sweep, function(*_args(function, config, run)))
            except Exception as exc:  # a failed trial is recorded; the sweep goes on
                error = exc
            except BaseException as exc:  # Ctrl-C stops the sweep, the run is kept as crashed
                run.finish(*outcome(exc))
                raise
            run.finish(*outcome(error))
            _told(search, result, i, run, config, error)
            _save(sweep, result)
        return result.checked()

    @staticmethod
    async def aagent(sweep: Sweep, function: Callable[..., Any], count: int | None = None) -> SweepResult:
        """``agent`` from a coroutine: sync trials run inline, async ones are awaited."""
        result, search = _start(sweep, count)
        for i, config in _proposals(search, count):
            run = _trial_run(sweep, i, config)
            error = None
            try:
                value = function(*_args(function, config, run))
                _returned(run, sweep, await value if inspect.isawaitable(value) else value)
            except Exception as exc:
                error = exc
            except BaseException as exc:  # cancellation stops the sweep, the run is kept as crashed
                await run.afinish(*outcome(exc))
                raise
            await run.afinish(*outcome(error))
            _told(search, result, i, run, config, error)
            await to_io(_save, sweep, result)
        return result.checked()


def _start(sweep: Sweep, count: int | None) -> tuple[SweepResult, Any]:
    if sweep.early_terminate:
        raise ValueError("early_terminate needs trials that report while they train: run the sweep "
                         "with `aiotrain sweep` or aiotrain.sweeps.SweepRunner")
    if count is None and sweep.method != "grid":
        raise ValueError(f"{sweep.method} search needs count=")
    return SweepResult(sweep.id, sweep.metric), sweep.search()


def _proposals(search: Any, count: int | None) -> Iterator[tuple[int, dict[str, Any]]]:
    i = 0
    while count is None or i < count:
        params = search.ask()
        if params is None:
            return
        yield i, unflatten(params)
        i += 1


def _told(search: Any, result: SweepResult, i: int, run: Run, config: dict[str, Any],
          error: BaseException | None) -> None:
    result.add(run, config, error)
    value = result.trials[-1]["value"]
    finite = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    search.tell(i, value if finite else None, "finished" if error is None and finite else "crashed")


def _trial_run(sweep: Sweep, i: int, config: dict[str, Any]) -> Run:
    return Run(sweep.project, name=f"{sweep.id}-{i}", config=config, tags=(f"sweep:{sweep.id}",))


def _returned(run: Run, sweep: Sweep, value: Any) -> None:
    """A trial's return value: a number is the objective, a dict is merged into the summary."""
    if isinstance(value, Mapping):
        run.summary.update(value)
    elif isinstance(value, int | float) and not isinstance(value, bool):
        run.summary[sweep.metric["name"]] = value


def _args(function: Callable[..., Any], config: dict[str, Any], run: Run) -> tuple[Any, ...]:
    try:
        params = inspect.signature(function).parameters.values()
    except (TypeError, ValueError):
        return (config,)
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return (config, run) if len(positional) >= 2 else (config,)


def _save(sweep: Sweep, result: SweepResult) -> None:
    if get_mode() == "disabled":
        return
    write_json(get_dir() / "sweeps" / sweep.project / f"{sweep.id}.json",
               {**sweep.describe(), **result.to_dict()})


def _sweep_id() -> str:
    return "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))


