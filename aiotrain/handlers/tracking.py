"""TrackingHandler: log an engine's output and metrics to a tracking run (Ignite's OutputHandler).

``TrackingHandler(run, tag="train", output_transform=lambda out: {"loss": out["loss"]})
.attach(trainer, Events.ITERATION_COMPLETED(every=10))`` logs ``train/loss`` at the engine's
iteration. Names are ``{tag}/{key}``. What is logged:

- ``output_transform(engine.state.output)``: a number is logged as ``{tag}/output``, a dict
  as one value per key (tensor scalars converted by the run);
- ``metric_names``: ``"all"`` or a list of names from ``engine.state.metrics``;
- with neither given (Ignite would refuse), the scalar entries of the output (a number, or a
  dict's numeric values) and every metric, so ``TrackingHandler(run).attach(engine)`` is useful
  as is. Non-scalar values (prediction tensors) are skipped there, never logged.

The step is ``global_step_transform(engine, event)`` when given, else the engine's epoch for
epoch events and its iteration for everything else (as Ignite's default). The handler runs on
the event loop and only enqueues a record (``Run.log`` never blocks on disk).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING

from ..events import Events, RemovableHandle
from ..protocols import MetricLogger, OutputTransform
from ..values import as_number

if TYPE_CHECKING:
    from ..engine import Engine

__all__ = ["TrackingHandler"]

_EPOCH_EVENTS = (Events.EPOCH_STARTED, Events.EPOCH_COMPLETED)


class TrackingHandler:
    """Logs an engine's output and/or metrics to ``run`` when the event it is attached to fires."""

    def __init__(self, run: MetricLogger, tag: str = "train", output_transform: OutputTransform | None = None,
                 metric_names: str | Sequence[str] | None = None,
                 global_step_transform: Callable[[Engine, object], int] | None = None) -> None:
        if not isinstance(run, MetricLogger):
            raise TypeError(f"TrackingHandler needs a tracking Run, got {type(run).__name__}")
        if metric_names is not None and metric_names != "all" and (
                isinstance(metric_names, str) or not all(isinstance(n, str) for n in metric_names)):
            raise TypeError(f"metric_names must be 'all' or a list of names, got {metric_names!r}")
        self.run = run
        self.tag = tag
        self.output_transform = output_transform
        self.metric_names = metric_names
        self.global_step_transform = global_step_transform
        self._auto = output_transform is None and metric_names is None

    def attach(self, engine: Engine, event: object = Events.ITERATION_COMPLETED) -> RemovableHandle:
        """Run this handler on ``event`` (a plain or filtered event); returns the handle."""
        base = getattr(event, "event", event)
        return engine.add_event_handler(event, self, base)

    def __call__(self, engine: Engine, event: object = None) -> None:
        values = {**self._output_values(engine), **self._metric_values(engine)}
        if values:
            self.run.log(values, step=self._step(engine, event))

    def _step(self, engine: Engine, event: object) -> int:
        if self.global_step_transform is not None:
            step = self.global_step_transform(engine, event)
            if isinstance(step, bool) or not isinstance(step, int):
                raise TypeError(f"global_step_transform must return an int, got {step!r}")
            return step
        return engine.state.epoch if event in _EPOCH_EVENTS else engine.state.iteration

    def _output_values(self, engine: Engine) -> dict[str, object]:
        output = engine.state.output
        if self.output_transform is not None:
            output = self.output_transform(output)
        elif not self._auto:
            return {}
        if isinstance(output, Mapping):
            items: Iterable[tuple[object, object]] = output.items()
        else:
            items = [("output", output)]
        if self._auto:
            items = [(k, v) for k, v in items if _is_scalar(v)]
        return {f"{self.tag}/{k}": v for k, v in items}

    def _metric_values(self, engine: Engine) -> dict[str, object]:
        metrics = engine.state.metrics
        if self.metric_names == "all" or self._auto:
            names = [n for n in metrics if not self._auto or _is_scalar(metrics[n])]
        elif self.metric_names is None:
            return {}
        else:
            missing = [n for n in self.metric_names if n not in metrics]
            if missing:
                raise KeyError(f"TrackingHandler: metrics {missing} are not in engine.state.metrics "
                               f"(have {sorted(metrics)})")
            names = list(self.metric_names)
        return {f"{self.tag}/{n}": metrics[n] for n in names}


def _is_scalar(value: object) -> bool:
    """A number, or a one-element tensor / array (converted by ``Run.log``)."""
    return as_number(value) is not None
