"""LRScheduler: steps a torch LR scheduler from engine events (epoch-based by default)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from torch.optim.lr_scheduler import LRScheduler as _TorchScheduler
from torch.optim.lr_scheduler import ReduceLROnPlateau

from ..events import Events

if TYPE_CHECKING:
    from ..engine import Engine

__all__ = ["LRScheduler"]

_ITERATION_EVENTS = {Events.ITERATION_STARTED, Events.ITERATION_COMPLETED,
                     Events.GET_BATCH_STARTED, Events.GET_BATCH_COMPLETED}


class LRScheduler:
    """Wraps ``scheduler`` (any torch scheduler, or ReduceLROnPlateau) and steps it on an event.

    ``attach(trainer)`` steps at EPOCH_COMPLETED. ReduceLROnPlateau is stepped with
    ``metric_engine.state.metrics[metric_name]`` (``metric_engine`` defaults to the engine it
    is attached to); attach it after the handler that runs the evaluation, so the value is
    fresh. It runs as a loop handler, in registration order with the other handlers. Given an
    iteration event (``attach(trainer, Events.ITERATION_COMPLETED)``) a non-plateau scheduler
    steps as a compute hook instead, so per-iteration stepping costs no loop crossing.
    ``state_dict`` / ``load_state_dict`` delegate to the scheduler (for Checkpoint).
    """

    def __init__(self, scheduler: _TorchScheduler | ReduceLROnPlateau, metric_name: str | None = None,
                 metric_engine: Engine | None = None) -> None:
        if not isinstance(scheduler, (_TorchScheduler, ReduceLROnPlateau)):
            raise TypeError(f"LRScheduler: scheduler must be a torch.optim.lr_scheduler scheduler, "
                            f"got {type(scheduler).__name__}")
        self.plateau = isinstance(scheduler, ReduceLROnPlateau)
        if self.plateau and metric_name is None:
            raise ValueError("LRScheduler: ReduceLROnPlateau needs metric_name (the metric it watches)")
        if not self.plateau and (metric_name is not None or metric_engine is not None):
            raise ValueError(f"LRScheduler: metric_name/metric_engine only apply to ReduceLROnPlateau, "
                             f"not {type(scheduler).__name__}")
        self.scheduler = scheduler
        self.metric_name = metric_name
        self.metric_engine = metric_engine

    def attach(self, engine: Engine, event: object = Events.EPOCH_COMPLETED) -> LRScheduler:
        """Step the scheduler whenever ``event`` fires on ``engine``."""
        if not self.plateau and getattr(event, "event", event) in _ITERATION_EVENTS:
            engine.add_compute_hook(event, self)
        else:
            engine.add_event_handler(event, self)
        return self

    def __call__(self, engine: Engine) -> None:
        if not isinstance(self.scheduler, ReduceLROnPlateau):
            self.scheduler.step()
            return
        source = self.metric_engine if self.metric_engine is not None else engine
        metrics = source.state.metrics or {}
        if self.metric_name not in metrics:
            raise KeyError(f"LRScheduler: metric {self.metric_name!r} not found in "
                           f"metric_engine.state.metrics (has {sorted(metrics)}); attach the "
                           "metric to that engine and run it before the scheduler steps")
        self.scheduler.step(float(metrics[self.metric_name]))

    def get_last_lr(self) -> list[float]:
        """Current learning rate of each parameter group."""
        return [float(g["lr"]) for g in self.scheduler.optimizer.param_groups]

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = self.scheduler.state_dict()  # torch leaves it unannotated
        return state

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        self.scheduler.load_state_dict(dict(state_dict))
