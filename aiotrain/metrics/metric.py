"""Metric: the base class of every metric, and the error for asking before any data was seen.

A metric keeps its accumulators as tensors on ``device`` (sums, counts, confusion counts) so that
``compute`` can all-reduce them across ranks: every rank computes the global value. Attached to
an engine, its work runs on the compute thread as compute hooks (no loop crossing):
EPOCH_STARTED -> ``reset()``, ITERATION_COMPLETED -> ``update(output_transform(state.output))``
under ``torch.no_grad()``, EPOCH_COMPLETED -> ``state.metrics[name] = compute()``. The hooks run
before that event's loop handlers, so an EPOCH_COMPLETED handler already sees the value.
"""

from __future__ import annotations

import weakref
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import torch

from .. import distributed
from ..events import Events
from ..protocols import OutputTransform
from ..values import number_or_value

if TYPE_CHECKING:
    from ..engine import Engine
    from ..events import RemovableHandle

__all__ = ["Metric", "NotComputableError", "reduced"]


class NotComputableError(RuntimeError):
    """``compute()`` was called before the metric saw any data (no ``update`` since ``reset``)."""


def _identity(output: object) -> object:
    return output


class Metric(ABC):
    """Base class: subclasses implement ``reset``, ``update(output)`` and ``compute()``.

    ``output_transform`` maps the engine's ``state.output`` to what ``update`` expects (for the
    classification and regression metrics, a ``(y_pred, y)`` pair). A metric is attached to an
    engine under one name at a time; attaching it to the same engine again is an error.
    """

    def __init__(self, output_transform: OutputTransform | None = None,
                 device: str | torch.device = "cpu") -> None:
        if output_transform is not None and not callable(output_transform):
            raise TypeError(f"output_transform must be callable, got {output_transform!r}")
        self._output_transform = output_transform or _identity
        self._device = torch.device(device)
        self._attached: weakref.WeakKeyDictionary[Engine, list[RemovableHandle]] = \
            weakref.WeakKeyDictionary()
        self.reset()

    @property
    def output_transform(self) -> OutputTransform:
        """Maps ``engine.state.output`` to the input of ``update``."""
        return self._output_transform

    @property
    def device(self) -> torch.device:
        """Where the accumulators live (and where inputs are moved before accumulating)."""
        return self._device

    # the metric itself ----------------------------------------------------------------------
    @abstractmethod
    def reset(self) -> None:
        """Forget everything accumulated: start a new epoch."""

    @abstractmethod
    def update(self, output: object) -> None:
        """Accumulate one batch's output (already passed through ``output_transform``)."""

    @abstractmethod
    def compute(self) -> object:
        """The metric over everything since the last ``reset``, reduced across ranks."""

    # engine hooks (compute thread) ----------------------------------------------------------
    def started(self, engine: Engine) -> None:
        """EPOCH_STARTED hook: reset."""
        self.reset()

    def iteration_completed(self, engine: Engine) -> None:
        """ITERATION_COMPLETED hook: update with the transformed step output, without autograd."""
        with torch.no_grad():
            self.update(self._output_transform(engine.state.output))

    def completed(self, engine: Engine, name: str) -> None:
        """EPOCH_COMPLETED hook: store ``compute()`` in ``engine.state.metrics[name]``.

        As in Ignite, a one-element 0-d tensor is stored as a Python number and a mapping result
        is also spread into ``state.metrics`` under its own keys.
        """
        result = self.compute()
        if isinstance(result, Mapping):
            for key, value in result.items():
                engine.state.metrics[key] = number_or_value(value)
        engine.state.metrics[name] = number_or_value(result)

    def attach(self, engine: Engine, name: str) -> None:
        """Reset at EPOCH_STARTED, update at ITERATION_COMPLETED, compute into
        ``engine.state.metrics[name]`` at EPOCH_COMPLETED; all on the compute thread."""
        if not isinstance(name, str) or not name:
            raise ValueError(f"metric name must be a non-empty string, got {name!r}")
        if self.is_attached(engine):
            raise ValueError(f"{type(self).__name__} is already attached to this engine; "
                             "detach it first or use a second instance")
        self._attached[engine] = self._hooks(engine, name)

    def _hooks(self, engine: Engine, name: str) -> list[RemovableHandle]:
        """Attach the compute hooks; return their removable handles."""
        return [
            engine.add_compute_hook(Events.EPOCH_STARTED, self.started),
            engine.add_compute_hook(Events.ITERATION_COMPLETED, self.iteration_completed),
            engine.add_compute_hook(Events.EPOCH_COMPLETED, self.completed, name),
        ]

    def detach(self, engine: Engine) -> None:
        """Remove this metric's hooks from ``engine`` (its last value stays in state.metrics)."""
        for handle in self._attached.pop(engine, []):
            handle.remove()

    def is_attached(self, engine: Engine) -> bool:
        """True when this metric's hooks are on ``engine``."""
        return engine in self._attached

    # helpers for subclasses -----------------------------------------------------------------
    def _tensor(self, x: object) -> torch.Tensor:
        """``x`` as a detached tensor on this metric's device."""
        if isinstance(x, torch.Tensor):
            return x.detach().to(self._device)
        return torch.as_tensor(x, device=self._device)

    def _pair(self, output: object) -> tuple[torch.Tensor, torch.Tensor]:
        """Unpack ``(y_pred, y)`` with a clear error for anything else."""
        if isinstance(output, Sequence) and not isinstance(output, str) and len(output) == 2:
            y_pred, y = output
            return self._tensor(y_pred), self._tensor(y)
        what = f"a dict with keys {sorted(output)}" if isinstance(output, Mapping) else repr(type(output))
        raise TypeError(f"{type(self).__name__}.update expects (y_pred, y), got {what}; "
                        "pass output_transform=... to pick them out of the step output")

    def _global_ratio(self, num: torch.Tensor, den: torch.Tensor) -> float:
        """``num / den`` with both summed over ranks; NotComputableError when ``den`` is 0."""
        num, den = reduced(num, den)
        if den.item() == 0:
            raise self._not_computable()
        return num.item() / den.item()

    def _not_computable(self, need: str = "at least one example (no update since reset)"
                        ) -> NotComputableError:
        return NotComputableError(f"{type(self).__name__} must have {need} before it can be computed")


def reduced(*tensors: torch.Tensor) -> list[torch.Tensor]:
    """Sum copies of ``tensors`` across ranks (the accumulators themselves stay local, so
    ``compute`` can be called any number of times). Alone, the tensors themselves: callers
    only read them."""
    if distributed.world_size() == 1:
        return list(tensors)
    return [distributed.all_reduce(t.clone()) for t in tensors]



