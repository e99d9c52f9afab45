"""Search backends for sweeps: grid, random and Bayesian (Optuna's TPE), with optional pruning.

Every backend has the same ask/tell shape (``Search``): ``ask()`` proposes the next trial's
parameters (flat, dotted keys) or None when there is nothing left (the grid is done), ``report``
gives a trial's intermediate score at a step and answers whether to prune it, ``tell`` records
how it ended. Grid and random search are plain Python (no Optuna needed): grid walks the
cartesian product in order, random draws from ``random.Random(seed)``, so the same seed gives
the same trials. ``bayes`` and the pruners (``median``, ``hyperband``) go through Optuna's
ask/tell interface (the ``sweeps`` extra): an Optuna study with ``TPESampler(seed=seed)``; with
a pruner and grid or random search, the study receives the grid / random proposals as enqueued
trials, so the pruner sees every trial. Bayesian proposals depend on the results told so far, so
a bayes sweep is reproducible from its seed when trials run one at a time (with K in parallel,
which results are known at each ask depends on timing).
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Iterator, Mapping, Sequence
from types import ModuleType
from typing import TYPE_CHECKING, Any, Protocol

from .record import TrialRecord
from .space import (
    Choice,
    Distribution,
    IntUniform,
    LogUniform,
    Normal,
    Params,
    Uniform,
    flatten,
    grid_axes,
)

if TYPE_CHECKING:
    from optuna import Study, Trial
    from optuna.distributions import BaseDistribution
    from optuna.pruners import BasePruner

__all__ = ["GridSearch", "OptunaSearch", "RandomSearch", "Search", "make_pruner", "make_search",
           "optuna_distribution", "optuna_module", "suggest"]

PRUNERS = ("median", "hyperband")
_STATES = ("finished", "pruned", "crashed")


class Search(Protocol):
    """What a sweep asks for its next trial and tells about the ones that ended."""

    def ask(self) -> Params | None:
        """The next trial's parameters (dotted keys), or None when the search is exhausted."""

    def report(self, number: int, step: int, value: float) -> bool:
        """Trial ``number`` scored ``value`` at ``step``; True means: prune it now."""

    def tell(self, number: int, value: float | None, state: str) -> None:
        """Trial ``number`` ended: ``state`` is finished, pruned or crashed."""

    def restore(self, trials: Sequence[TrialRecord]) -> None:
        """Replay the trials of an earlier, interrupted run of this sweep, so the next ``ask``
        continues after them (ended trials are told as they ended)."""

    def resume_trial(self, number: int, params: Mapping[str, object],
                     intermediate: Sequence[tuple[int, float]]) -> None:
        """Re-open trial ``number``, left running by a crash, with its parameters and reports,
        so its next ``report`` and ``tell`` are judged as if it had never stopped."""


class GridSearch:
    """The cartesian product of Choice values, IntUniform ranges and fixed values, in order."""

    def __init__(self, parameters: Mapping[str, object]) -> None:
        keys, axes = grid_axes(parameters)
        self._keys = keys
        self._combos: Iterator[tuple[object, ...]] = itertools.product(*axes)
        self.size = math.prod(len(a) for a in axes)

    def ask(self) -> Params | None:
        values = next(self._combos, None)
        return None if values is None else dict(zip(self._keys, values, strict=True))

    def report(self, number: int, step: int, value: float) -> bool:
        return False

    def tell(self, number: int, value: float | None, state: str) -> None:
        pass

    def restore(self, trials: Sequence[TrialRecord]) -> None:
        for _ in trials:  # proposals are a fixed sequence: skip the ones already made
            self.ask()

    def resume_trial(self, number: int, params: Mapping[str, object],
                     intermediate: Sequence[tuple[int, float]]) -> None:
        pass  # nothing judges reports here: the trial needs no state


class RandomSearch(GridSearch):
    """Independent draws from ``random.Random(seed)``: the same seed gives the same trials."""

    def __init__(self, parameters: Mapping[str, object], seed: int = 0) -> None:
        self._flat = flatten(parameters)
        self._rng = random.Random(seed)

    def ask(self) -> Params:
        return {k: v.sample(self._rng) if isinstance(v, Distribution) else v for k, v in self._flat.items()}


class OptunaSearch:
    """An Optuna study driven by ask/tell: TPE for ``bayes``, or grid / random proposals
    enqueued into it; an optional pruner (``median`` or ``hyperband``) judges reports."""

    def __init__(self, parameters: Mapping[str, object], method: str, goal: str, seed: int = 0,
                 early_terminate: Mapping[str, object] | None = None) -> None:
        optuna = optuna_module()
        self._optuna = optuna
        flat = flatten(parameters)
        self._keys = list(flat)
        self._fixed = {k: v for k, v in flat.items() if not isinstance(v, Distribution)}
        self._dists = {k: optuna_distribution(k, v) for k, v in flat.items() if isinstance(v, Distribution)}
        self._inner: GridSearch | None = None
        if method == "grid":
            self._inner = GridSearch(parameters)
        elif method == "random":
            self._inner = RandomSearch(parameters, seed)
        sampler = optuna.samplers.TPESampler(seed=seed)
        self._study: Study = optuna.create_study(direction=goal, sampler=sampler,
                                          pruner=make_pruner(early_terminate))
        self._trials: dict[int, Trial] = {}
        self._count = 0

    def ask(self) -> Params | None:
        if self._inner is not None:
            proposal = self._inner.ask()
            if proposal is None:
                return None
            self._study.enqueue_trial({k: v for k, v in proposal.items() if k in self._dists})
        trial = self._study.ask(self._dists)
        params = {**self._fixed, **trial.params}
        self._trials[self._count] = trial
        self._count += 1
        return {k: params[k] for k in self._keys}

    def report(self, number: int, step: int, value: float) -> bool:
        trial = self._trials[number]
        trial.report(float(value), int(step))
        return bool(trial.should_prune())

    def tell(self, number: int, value: float | None, state: str) -> None:
        TrialState = self._optuna.trial.TrialState
        trial = self._trials.pop(number)
        if state == "finished" and value is not None and math.isfinite(value):
            self._study.tell(trial, float(value))
        elif state == "pruned":
            self._study.tell(trial, state=TrialState.PRUNED)
        else:
            self._study.tell(trial, state=TrialState.FAIL)

    def restore(self, trials: Sequence[TrialRecord]) -> None:
        TrialState = self._optuna.trial.TrialState
        states = {"finished": TrialState.COMPLETE, "pruned": TrialState.PRUNED, "crashed": TrialState.FAIL}
        for t in trials:
            if self._inner is not None:
                self._inner.ask()
            self._count = max(self._count, t.number + 1)
            status = t.status
            if status not in states:
                continue  # a trial a crash left running is re-opened with resume_trial
            if status == "finished" and not _finite(t.value):
                status = "crashed"
            self._study.add_trial(self._optuna.trial.create_trial(
                state=states[status], value=t.value if status == "finished" else None,
                params={k: v for k, v in t.params.items() if k in self._dists},
                distributions=self._dists,
                intermediate_values={int(s): float(v) for s, v in t.intermediate}))

    def resume_trial(self, number: int, params: Mapping[str, object],
                     intermediate: Sequence[tuple[int, float]]) -> None:
        """Re-open trial ``number`` (left running by a crash) with its parameters and reports."""
        self._study.enqueue_trial({k: v for k, v in params.items() if k in self._dists})
        trial = self._study.ask(self._dists)
        for step, value in intermediate:
            trial.report(float(value), int(step))
        self._trials[number] = trial


def make_search(parameters: Mapping[str, object], method: str, goal: str, seed: int = 0,
                early_terminate: Mapping[str, object] | None = None) -> GridSearch | OptunaSearch:
    """The backend for ``method``: plain grid / random unless bayes or a pruner needs Optuna."""
    if method == "bayes" or early_terminate:
        return OptunaSearch(parameters, method, goal, seed, early_terminate)
    if method == "grid":
        return GridSearch(parameters)
    return RandomSearch(parameters, seed)


def make_pruner(early_terminate: Mapping[str, object] | None) -> BasePruner:
    """``{"type": "median" | "hyperband", **options}`` -> an Optuna pruner (None: never prune).

    median: ``n_startup_trials`` (default 2), ``n_warmup_steps`` (0), ``interval_steps`` (1);
    hyperband: ``min_resource`` (1), ``max_resource`` ("auto"), ``reduction_factor`` (3). A step
    is an epoch (one evaluation)."""
    optuna_module()  # (the extra's one-line error when it is missing)
    from optuna.pruners import HyperbandPruner, MedianPruner, NopPruner

    if not early_terminate:
        return NopPruner()
    options: dict[str, Any] = dict(early_terminate)  # the pruner's arguments, checked by it
    kind = options.pop("type", None)
    cls: type[BasePruner]
    if kind == "median":
        options.setdefault("n_startup_trials", 2)
        cls = MedianPruner
    elif kind == "hyperband":
        cls = HyperbandPruner
    else:
        raise ValueError(f"early_terminate type must be one of {PRUNERS}, got {kind!r}")
    try:
        return cls(**options)
    except TypeError as exc:
        raise ValueError(f"early_terminate {kind}: {exc}") from None


def _finite(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def suggest(trial: Trial, key: str, dist: BaseDistribution) -> object:
    """Ask an Optuna trial for ``key`` from the Optuna distribution ``dist`` (public API only;
    a trial that already holds ``key``, a retry, gives its own value back)."""
    optuna_module()  # (the extra's one-line error when it is missing)
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    if isinstance(dist, FloatDistribution):
        return trial.suggest_float(key, dist.low, dist.high, log=dist.log)
    if isinstance(dist, IntDistribution):
        return trial.suggest_int(key, dist.low, dist.high)
    if isinstance(dist, CategoricalDistribution):
        return trial.suggest_categorical(key, dist.choices)
    raise TypeError(f"parameter {key!r}: not a distribution of ours: {dist!r}")


def optuna_distribution(key: str, dist: Distribution) -> BaseDistribution:
    """The Optuna distribution of one of ours (ValueError for those Optuna cannot hold)."""
    optuna_module()  # (the extra's one-line error when it is missing)
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    if isinstance(dist, LogUniform):
        return FloatDistribution(dist.low, dist.high, log=True)
    if isinstance(dist, Uniform):
        return FloatDistribution(dist.low, dist.high)
    if isinstance(dist, IntUniform):
        return IntDistribution(dist.low, dist.high)
    if isinstance(dist, Choice):
        choices = [v for v in dist.values if v is None or isinstance(v, bool | int | float | str)]
        if len(choices) < len(dist.values):
            bad = next(v for v in dist.values if v is not None and not isinstance(v, bool | int | float | str))
            raise ValueError(f"parameter {key!r}: Optuna choices must be numbers, strings, "
                             f"booleans or null, not {bad!r}")
        return CategoricalDistribution(choices)
    if isinstance(dist, Normal):
        raise ValueError(f"parameter {key!r}: Normal has no bounded Optuna equivalent; "
                         "use uniform or loguniform with bayes search or pruning")
    raise ValueError(f"parameter {key!r}: unsupported distribution {dist!r}")


def optuna_module() -> ModuleType:
    """Optuna, imported on first use (the ``sweeps`` extra; one line naming it when missing)."""
    try:
        import optuna
    except ImportError:
        raise ImportError("bayes search, pruning and shared sweeps (--storage) need Optuna: pip "
                          "install 'aiotrain[sweeps]' (grid and random search work without it)") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the sweep's table says what happens
    return optuna
