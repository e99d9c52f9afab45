"""Small Protocols at the seams between parts, so that each side states what it needs.

A part that accepts "anything with X" names the Protocol here instead of probing with
``hasattr``; the check at the seam is an ``isinstance`` against the Protocol, and type checkers
see the same contract. (The engine's own seams, its data stream and its handlers, are described
with the engine.)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol, runtime_checkable

__all__ = ["EpochAware", "MetricLogger", "OutputTransform", "StateDict", "Stateful"]

StateDict = dict[str, Any]
"""What a ``state_dict()`` gives: names to the user's state (tensors, numbers, nested containers
of them): arbitrary by nature, so its values stay ``Any``."""

OutputTransform = Callable[[Any], object]
"""Maps an engine's ``state.output`` (whatever the step returned) to what a metric or a logger
takes (metrics, TrackingHandler, ProgressBar)."""


@runtime_checkable
class Stateful(Protocol):
    """What a Checkpoint saves and restores: models, optimizers, schedulers, an Engine, an
    AsyncLoader, or any object of the user's with these two methods."""

    def state_dict(self) -> Mapping[str, Any]: ...

    def load_state_dict(self, state_dict: Mapping[str, Any], /) -> object: ...


@runtime_checkable
class EpochAware(Protocol):
    """A sampler or data source whose order depends on the epoch (``DistributedSampler``,
    AsyncLoader): told the epoch before each pass."""

    def set_epoch(self, epoch: int, /) -> None: ...


@runtime_checkable
class MetricLogger(Protocol):
    """Where TrackingHandler sends values: a tracking Run, or anything that logs the same way."""

    def log(self, metrics: Mapping[str, object], step: int | None = None) -> None: ...
