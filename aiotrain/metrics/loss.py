"""Loss: the example-weighted mean of a loss function over an epoch (Ignite's Loss)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from ..protocols import OutputTransform
from .metric import Metric

__all__ = ["Loss"]


class Loss(Metric):
    """Average of ``loss_fn(y_pred, y, **kwargs)`` weighted by ``batch_size(y)`` examples.

    The output (after ``output_transform``) is ``(y_pred, y)`` or ``(y_pred, y, kwargs)``.
    ``loss_fn`` must return the batch's mean loss as a scalar; it runs where the tensors are
    (the batch is not moved to the metric's device, only the result is).
    """

    def __init__(self, loss_fn: Callable[..., object],
                 output_transform: OutputTransform | None = None,
                 batch_size: Callable[[Any], int] = len,
                 device: str | torch.device = "cpu") -> None:
        if not callable(loss_fn):
            raise TypeError(f"loss_fn must be callable, got {loss_fn!r}")
        if not callable(batch_size):
            raise TypeError(f"batch_size must be callable, got {batch_size!r}")
        self._loss_fn = loss_fn
        self._batch_size = batch_size
        super().__init__(output_transform, device)

    def reset(self) -> None:
        self._sum = torch.zeros((), dtype=torch.float64, device=self.device)
        self._count = torch.zeros((), dtype=torch.long, device=self.device)

    def update(self, output: object) -> None:
        y_pred, y, kwargs = _unpack(output)
        loss = self._loss_fn(y_pred, y, **kwargs)
        loss = loss.detach() if isinstance(loss, torch.Tensor) else torch.as_tensor(loss)
        if loss.numel() != 1:
            raise ValueError(f"Loss: loss_fn did not return the average loss: got shape "
                             f"{tuple(loss.shape)}, want a scalar (use reduction='mean')")
        n = self._batch_size(y)
        self._sum += loss.reshape(()).to(self.device, torch.float64) * n
        self._count += n

    def compute(self) -> float:
        return self._global_ratio(self._sum, self._count)


def _unpack(output: object) -> tuple[object, Any, dict[str, object]]:
    if isinstance(output, Sequence) and not isinstance(output, str):
        if len(output) == 2:
            return output[0], output[1], {}
        if len(output) == 3 and isinstance(output[2], Mapping):
            return output[0], output[1], dict(output[2])
    raise TypeError(f"Loss.update expects (y_pred, y) or (y_pred, y, kwargs), got "
                    f"{type(output).__name__}; pass output_transform=... to pick them out")
