"""TorchMetric: any ``torchmetrics.Metric`` or ``MetricCollection`` attached like an aiotrain metric.

torchmetrics is the metrics library most PyTorch users already have. Its metrics keep their own
accumulators and all-gather them across ranks inside ``compute()``, so the adapter only has to
drive them from the engine's compute hooks: ``reset()`` at EPOCH_STARTED, ``update(...)`` after
each step at ITERATION_COMPLETED (under ``torch.no_grad()``, on the compute thread, no loop
crossing), ``compute()`` at EPOCH_COMPLETED into ``engine.state.metrics``.

``Engine.add_metric`` and ``TrainJob`` tasks accept a torchmetrics object directly
(:func:`as_metric` wraps it); wrap it yourself to pass an ``output_transform``::

    import torchmetrics
    from aiotrain.metrics import TorchMetric

    acc = TorchMetric(torchmetrics.classification.MulticlassAccuracy(num_classes=10))
    acc.attach(evaluator, "accuracy")

The step output goes to ``update`` as ``update(y_pred, y)`` for a ``(y_pred, y)`` pair,
``update(**output)`` for a mapping, and ``update(output)`` for anything else. A collection's
results land in ``state.metrics`` under its own keys (and, as Ignite does for a mapping result,
the whole dict under the attach name).

torchmetrics is an optional dependency (``pip install 'aiotrain[torchmetrics]'``); this module
imports it only when a ``TorchMetric`` is made.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import torch

from .. import distributed
from ..engine.engine import Attachable
from .metric import Metric

__all__ = ["TorchMetric", "as_metric"]


class _TorchmetricsMetric(Protocol):
    """The part of a torchmetrics Metric the adapter drives."""

    update_count: int

    def reset(self) -> None: ...
    def update(self, *args: Any, **kwargs: Any) -> None: ...
    def compute(self) -> Any: ...


def _torchmetrics_types() -> tuple[type, ...]:
    """torchmetrics' base classes, or () when the user never imported torchmetrics (then no
    object can be one of its metrics, and importing it here would only cost start-up time)."""
    if "torchmetrics" not in sys.modules:
        return ()
    import torchmetrics

    return (torchmetrics.Metric, torchmetrics.MetricCollection)


def as_metric(metric: Any) -> Attachable:
    """``metric`` itself when it can attach to an engine; a torchmetrics metric or collection
    wrapped in a :class:`TorchMetric`; otherwise a TypeError naming what was given."""
    if isinstance(metric, Attachable):
        return metric
    if _is_instance(metric, _torchmetrics_types()):
        return TorchMetric(metric)
    raise TypeError(f"cannot attach a {type(metric).__name__} as a metric: pass an aiotrain or "
                    "Ignite Metric, or a torchmetrics Metric/MetricCollection")


class TorchMetric(Metric):
    """A torchmetrics ``Metric`` or ``MetricCollection`` driven by the engine's compute hooks.

    ``metric`` is used as it is (the adapter does not copy it), so after a run it holds the
    last epoch's state and can still be read by hand. ``device``, when given, moves it there.
    """

    def __init__(self, metric: Any, output_transform: Callable[[Any], Any] | None = None,
                 device: str | torch.device | None = None) -> None:
        types = _torchmetrics_types() or _import_types()
        if not _is_instance(metric, types):
            raise TypeError(f"TorchMetric wraps a torchmetrics Metric or MetricCollection, "
                            f"got {type(metric).__name__}")
        self.metric: _TorchmetricsMetric = metric if device is None else metric.to(device)
        self._members: list[_TorchmetricsMetric] = (
            list(metric.values()) if _is_instance(metric, types[1:]) else [metric])
        super().__init__(output_transform, device=device if device is not None else "cpu")

    def reset(self) -> None:
        """Forget the epoch so far (torchmetrics' own ``reset``)."""
        self.metric.reset()

    def update(self, output: Any) -> None:
        """Feed one step's (transformed) output to the wrapped metric."""
        if isinstance(output, Mapping):
            self.metric.update(**{k: _detached(v) for k, v in output.items()})
        elif isinstance(output, Sequence) and not isinstance(output, str) and len(output) == 2:
            self.metric.update(_detached(output[0]), _detached(output[1]))
        else:
            self.metric.update(_detached(output))

    def compute(self) -> Any:
        """The wrapped metric's ``compute()``: torchmetrics gathers every rank's state first, so
        each rank gets the global value. Alone and with no update since the last reset, a
        NotComputableError, as for every aiotrain metric (with several ranks every rank must
        take part in the gather, so the call goes ahead)."""
        if distributed.world_size() == 1 and not self._updated():
            raise self._not_computable()
        return self.metric.compute()

    def _updated(self) -> bool:
        return any(m.update_count > 0 for m in self._members)


def _import_types() -> tuple[type, ...]:
    try:
        import torchmetrics
    except ImportError:
        raise ImportError("TorchMetric needs torchmetrics: pip install 'aiotrain[torchmetrics]'") from None
    return (torchmetrics.Metric, torchmetrics.MetricCollection)


def _is_instance(obj: Any, types: tuple[type, ...]) -> bool:
    """isinstance without narrowing ``obj`` for the type checker (the types are only known at
    run time, so narrowing would turn the metric into ``object``)."""
    return isinstance(obj, types)


def _detached(value: Any) -> Any:
    return value.detach() if isinstance(value, torch.Tensor) else value
