"""Hyperparameter sweeps: grid and random search over ``Track.Sweep`` distributions.

``sweep = Track.Sweep.define(method="random", metric={"name": "val/loss", "goal": "minimize"},
parameters={"lr": LogUniform(1e-5, 1e-1), "layers": Choice([2, 4]), "dropout": 0.1},
project="mnist", seed=0)`` then ``result = Track.Sweep.agent(sweep, train, count=20)``.

Each trial is a run in the sweep's project, named ``{sweep.id}-{i}`` and tagged
``sweep:{sweep.id}``. The trial function receives its config (a dict, nested like
``parameters``), or ``(config, run)`` when it takes two arguments; it may be ``async def``.
Its objective is ``run.summary[metric name]``: the last value it logged under that name, or
what it returned (a number is stored under the metric name, a dict is merged into the
summary). A trial that raises is kept as a crashed run and the sweep goes on; only when every
trial fails does the agent raise. Grid search visits the cartesian product of ``Choice``
values, ``IntUniform`` ranges and fixed values in order (``count`` limits it); random search
draws ``count`` configs from a ``random.Random(seed)``, so the same seed gives the same trials.
Progress is saved after every trial to ``{root}/sweeps/{project}/{sweep_id}.json``.
"""

from __future__ import annotations

import abc
import inspect
import itertools
import math
import random
import secrets
import string
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..runtime import to_io
from .run import Run, outcome
from .store import check_name, flatten, get_dir, get_mode, write_json

__all__ = ["Choice", "IntUniform", "LogUniform", "Normal", "Sweep", "SweepResult", "Uniform"]


class Distribution(abc.ABC):
    """A parameter's search space; ``sample(rng)`` draws one value."""

    @abc.abstractmethod
    def sample(self, rng: random.Random) -> Any:
        """One value drawn with ``rng``."""

    def grid(self) -> list[Any]:
        raise ValueError(f"grid search needs Choice, IntUniform or fixed values, not {self!r}")


def _number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return value


@dataclass(frozen=True)
class Uniform(Distribution):
    """A float uniformly in [low, high]."""

    low: float
    high: float

    def __post_init__(self) -> None:
        if not _number("low", self.low) < _number("high", self.high):
            raise ValueError(f"Uniform needs low < high, got {self.low}, {self.high}")

    def sample(self, rng: random.Random) -> float:
        return rng.uniform(self.low, self.high)


@dataclass(frozen=True)
class LogUniform(Distribution):
    """A float whose logarithm is uniform in [log low, log high] (learning rates)."""

    low: float
    high: float

    def __post_init__(self) -> None:
        if not 0 < _number("low", self.low) < _number("high", self.high):
            raise ValueError(f"LogUniform needs 0 < low < high, got {self.low}, {self.high}")

    def sample(self, rng: random.Random) -> float:
        return math.exp(rng.uniform(math.log(self.low), math.log(self.high)))


@dataclass(frozen=True)
class IntUniform(Distribution):
    """An integer uniformly in [low, high], both included."""

    low: int
    high: int

    def __post_init__(self) -> None:
        for name in ("low", "high"):
            if isinstance(getattr(self, name), bool) or not isinstance(getattr(self, name), int):
                raise ValueError(f"IntUniform {name} must be an int, got {getattr(self, name)!r}")
        if self.low > self.high:
            raise ValueError(f"IntUniform needs low <= high, got {self.low}, {self.high}")

    def sample(self, rng: random.Random) -> int:
        return rng.randint(self.low, self.high)

    def grid(self) -> list[Any]:
        return list(range(self.low, self.high + 1))


@dataclass(frozen=True)
class Normal(Distribution):
    """A float from a normal distribution N(mu, sigma)."""

    mu: float = 0.0
    sigma: float = 1.0

    def __post_init__(self) -> None:
        _number("mu", self.mu)
        if not _number("sigma", self.sigma) > 0:
            raise ValueError(f"Normal needs sigma > 0, got {self.sigma}")

    def sample(self, rng: random.Random) -> float:
        return rng.gauss(self.mu, self.sigma)


@dataclass(frozen=True, init=False)
class Choice(Distribution):
    """One of ``values``, uniformly."""

    values: tuple[Any, ...]

    def __init__(self, values: Any) -> None:
        values = tuple(values)
        if not values:
            raise ValueError("Choice needs at least one value")
        object.__setattr__(self, "values", values)

    def sample(self, rng: random.Random) -> Any:
        return rng.choice(self.values)

    def grid(self) -> list[Any]:
        return list(self.values)


_METHODS = ("grid", "random")
_GOALS = ("minimize", "maximize")


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

    @classmethod
    def define(cls, method: str, metric: Mapping[str, str], parameters: Mapping[str, Any],
               project: str = "sweeps", seed: int = 0) -> Sweep:
        """Check and record a sweep (nothing runs yet)."""
        if method not in _METHODS:
            raise ValueError(f"sweep method must be one of {_METHODS}, got {method!r}")
        metric = dict(metric)
        if not isinstance(metric.get("name"), str) or not metric["name"]:
            raise ValueError(f"sweep metric needs a 'name', got {metric!r}")
        metric.setdefault("goal", "minimize")
        if metric["goal"] not in _GOALS:
            raise ValueError(f"sweep metric goal must be one of {_GOALS}, got {metric['goal']!r}")
        if not isinstance(parameters, Mapping) or not parameters:
            raise ValueError("sweep parameters must be a non-empty mapping")
        sweep = cls(_sweep_id(), method, metric, dict(parameters), check_name("project", project), seed)
        if method == "grid":
            _grid_axes(sweep.parameters)  # fail now on a continuous distribution
        return sweep

    def configs(self, count: int | None = None) -> Iterator[dict[str, Any]]:
        """The trial configs in order: the grid (up to ``count``) or ``count`` random draws."""
        if self.method == "grid":
            keys, axes = _grid_axes(self.parameters)
            combos = itertools.product(*axes)
            for values in itertools.islice(combos, count):
                yield _unflatten(dict(zip(keys, values, strict=True)))
            return
        if count is None:
            raise ValueError("random search needs count=")
        rng = random.Random(self.seed)
        flat = flatten(self.parameters)
        for _ in range(count):
            yield _unflatten({k: v.sample(rng) if isinstance(v, Distribution) else v for k, v in flat.items()})

    @staticmethod
    def agent(sweep: Sweep, function: Callable[..., Any], count: int | None = None) -> SweepResult:
        """Run the trials one after another; async trial functions get an event loop of their own
        (inside a running loop, ``await Sweep.aagent(...)`` instead)."""
        if inspect.iscoroutinefunction(function):
            from ..runtime import run as run_loop

            return run_loop(Sweep.aagent(sweep, function, count))
        result = SweepResult(sweep.id, sweep.metric)
        for i, config in enumerate(sweep.configs(count)):
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
            result.add(run, config, error)
            _save(sweep, result)
        return result.checked()

    @staticmethod
    async def aagent(sweep: Sweep, function: Callable[..., Any], count: int | None = None) -> SweepResult:
        """``agent`` from a coroutine: sync trials run inline, async ones are awaited."""
        result = SweepResult(sweep.id, sweep.metric)
        for i, config in enumerate(sweep.configs(count)):
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
            result.add(run, config, error)
            await to_io(_save, sweep, result)
        return result.checked()


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
    definition = {"id": sweep.id, "method": sweep.method, "metric": sweep.metric, "seed": sweep.seed,
                  "parameters": {k: repr(v) for k, v in flatten(sweep.parameters).items()}}
    write_json(get_dir() / "sweeps" / sweep.project / f"{sweep.id}.json", {**definition, **result.to_dict()})


def _sweep_id() -> str:
    return "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))


def _unflatten(flat: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for dotted, value in flat.items():
        *parents, leaf = dotted.split(".")
        node = out
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return out


def _grid_axes(params: Mapping[str, Any]) -> tuple[list[str], list[list[Any]]]:
    flat = flatten(params)
    axes = []
    for key, value in flat.items():
        try:
            axes.append(value.grid() if isinstance(value, Distribution) else [value])
        except ValueError as exc:
            raise ValueError(f"parameter {key!r}: {exc}") from None
    return list(flat), axes
