"""RunningAverage: an exponential moving average of a step output or of another metric."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from .. import distributed
from ..events import Events
from ..protocols import OutputTransform
from ..values import number_or_value
from .metric import Metric

if TYPE_CHECKING:
    from ..engine import Engine
    from ..events import RemovableHandle

__all__ = ["RunningAverage"]


class RunningAverage(Metric):
    """``value = alpha * value + (1 - alpha) * x`` after every iteration, where ``x`` is
    ``output_transform(state.output)`` (averaged across ranks) or, with ``src``, the source
    metric computed on that batch alone (it is reset after each batch, as in Ignite).

    Exactly one of ``src`` and ``output_transform`` is given. Attached, it writes
    ``state.metrics[name]`` every iteration on the compute thread (no loop crossing), so a
    progress bar or logger can read it at any time. It restarts at STARTED, or at every
    EPOCH_STARTED with ``epoch_bound=True`` (Ignite's older default; its current default
    runs across epochs, which is ours).
    """

    def __init__(self, src: Metric | None = None, alpha: float = 0.98,
                 output_transform: OutputTransform | None = None, epoch_bound: bool = False,
                 device: str | torch.device | None = None) -> None:
        if src is not None and not isinstance(src, Metric):
            raise TypeError(f"RunningAverage: src must be a Metric or None, got {src!r}")
        if not 0.0 < alpha <= 1.0:
            raise ValueError(f"RunningAverage: alpha must be in (0, 1], got {alpha!r}")
        if src is not None and output_transform is not None:
            raise ValueError("RunningAverage: give src or output_transform, not both "
                             "(src applies its own output_transform)")
        if src is None and output_transform is None:
            raise ValueError("RunningAverage: give src (a Metric) or output_transform "
                             "(e.g. lambda out: out['loss'])")
        if src is not None and device is not None:
            raise ValueError("RunningAverage: device must be None with src (src's device is used)")
        self.src = src
        self.alpha = float(alpha)
        self.epoch_bound = bool(epoch_bound)
        super().__init__(output_transform, src.device if src is not None else (device or "cpu"))

    def reset(self) -> None:
        self._value: torch.Tensor | None = None
        if self.src is not None:
            self.src.reset()

    def update(self, output: object) -> None:
        if self.src is None:
            x = self._tensor(output).to(torch.float64)
            x = distributed.all_reduce(x.clone()) / distributed.world_size()
        else:
            x = torch.as_tensor(self.src.compute(), dtype=torch.float64, device=self.device)
            self.src.reset()
        self._value = x if self._value is None else self._value * self.alpha + (1.0 - self.alpha) * x

    def compute(self) -> object:
        if self._value is None:
            raise self._not_computable()
        return number_or_value(self._value)

    def running_update(self, engine: Engine, name: str) -> None:
        """ITERATION_COMPLETED hook: update from this batch, then publish the new value."""
        if self.src is not None:
            self.src.iteration_completed(engine)
        self.iteration_completed(engine)
        self.completed(engine, name)

    def _hooks(self, engine: Engine, name: str) -> list[RemovableHandle]:
        restart = Events.EPOCH_STARTED if self.epoch_bound else Events.STARTED
        return [engine.add_compute_hook(restart, self.started),
                engine.add_compute_hook(Events.ITERATION_COMPLETED, self.running_update, name)]
