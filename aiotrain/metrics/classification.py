"""Reading classification inputs the way Ignite does: binary, multiclass or multilabel.

The kind is decided by shapes, as in Ignite:
- ``y_pred`` (N, C, ...) scores (logits or probabilities) with ``y`` (N, ...) class indices:
  multiclass, predicted class = argmax over dim 1 (C == 1 is binary, see below);
- ``y_pred`` and ``y`` of the same shape holding 0s and 1s: binary, or multilabel with
  ``is_multilabel=True`` (then dim 1 is the label dimension, C > 1).
Binary predictions must already be 0/1: threshold probabilities in ``output_transform``
(Ignite's rule; a silent 0.5 threshold would hide logits passed by mistake).

Value checks (0/1, class index range) run on CPU tensors only: on an accelerator they would
force a device sync every step, so there the metric trusts its input, as Ignite does.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from ..protocols import OutputTransform
from .metric import Metric

__all__ = ["ClassificationInput", "ClassificationMetric"]


class ClassificationInput(NamedTuple):
    """One batch, flattened: ``y_pred`` / ``y`` are (M,) labels, or (M, C) 0/1 for multilabel."""

    kind: str
    num_classes: int
    y_pred: torch.Tensor
    y: torch.Tensor


class ClassificationMetric(Metric):
    """Base of Accuracy, Precision, Recall, F1Score: parses and checks ``(y_pred, y)``.

    The kind and number of classes seen first are remembered until ``reset``; a batch of
    another kind or class count is an error.
    """

    def __init__(self, output_transform: OutputTransform | None = None,
                 is_multilabel: bool = False, device: str | torch.device = "cpu") -> None:
        self._is_multilabel = bool(is_multilabel)
        super().__init__(output_transform, device)

    def reset(self) -> None:
        self._kind: str | None = None
        self._num_classes: int | None = None

    def _parse(self, output: object) -> ClassificationInput:
        y_pred, y = self._pair(output)
        if y.ndim + 1 == y_pred.ndim and not self._is_multilabel:
            parsed = self._from_scores(y_pred, y)
        elif y.ndim == y_pred.ndim and y.shape == y_pred.shape:
            parsed = self._from_labels(y_pred, y)
        else:
            want = "the same shape (N, C, ...)" if self._is_multilabel else \
                "y_pred (N, C, ...) with y (N, ...), or both (N, ...)"
            raise ValueError(f"{type(self).__name__}: y_pred {tuple(y_pred.shape)} and y "
                             f"{tuple(y.shape)} do not match; expected {want}")
        self._remember(parsed.kind, parsed.num_classes)
        return parsed

    def _from_scores(self, y_pred: torch.Tensor, y: torch.Tensor) -> ClassificationInput:
        if y_pred.shape[:1] + y_pred.shape[2:] != y.shape:
            raise ValueError(f"{type(self).__name__}: y_pred {tuple(y_pred.shape)} must be "
                             f"(N, C, ...) around y {tuple(y.shape)} (N, ...)")
        num_classes = y_pred.shape[1]
        if num_classes == 1:
            return self._from_labels(y_pred.squeeze(1), y)
        labels = _class_indices(y, num_classes, type(self).__name__)
        return ClassificationInput("multiclass", num_classes, y_pred.argmax(dim=1).reshape(-1), labels)

    def _from_labels(self, y_pred: torch.Tensor, y: torch.Tensor) -> ClassificationInput:
        name = type(self).__name__
        _check_binary(y_pred, "y_pred", name)
        _check_binary(y, "y", name)
        if not self._is_multilabel:
            return ClassificationInput("binary", 1, y_pred.reshape(-1).long(), y.reshape(-1).long())
        if y.ndim < 2 or y.shape[1] < 2:
            raise ValueError(f"{name}(is_multilabel=True) needs (N, C, ...) inputs with C > 1, "
                             f"got {tuple(y.shape)}")
        c = y.shape[1]
        return ClassificationInput("multilabel", c, y_pred.movedim(1, -1).reshape(-1, c).long(),
                                   y.movedim(1, -1).reshape(-1, c).long())

    def _remember(self, kind: str, num_classes: int) -> None:
        if self._kind is None:
            self._kind, self._num_classes = kind, num_classes
        elif (kind, num_classes) != (self._kind, self._num_classes):
            raise ValueError(f"{type(self).__name__}: input changed from {self._kind} with "
                             f"{self._num_classes} classes to {kind} with {num_classes} since reset")


def _check_binary(t: torch.Tensor, what: str, name: str) -> None:
    if t.device.type != "cpu" or torch.equal(t, t * t):  # 0 and 1 are the only x with x*x == x
        return
    bad = t[(t != 0) & (t != 1)][0].item()
    raise ValueError(f"{name}: binary/multilabel {what} must hold only 0s and 1s, found {bad!r}; "
                     "threshold scores in output_transform, e.g. "
                     "lambda out: ((out[0] > 0.5).long(), out[1])")


def _class_indices(y: torch.Tensor, num_classes: int, name: str) -> torch.Tensor:
    if y.is_floating_point() and not torch.equal(y, y.round()):
        raise ValueError(f"{name}: multiclass y must hold class indices, got non-integer values")
    y = y.reshape(-1).long()
    if y.device.type != "cpu" or not len(y):
        return y
    low, high = torch.aminmax(y)
    if low.item() < 0 or high.item() >= num_classes:
        bad = low.item() if low.item() < 0 else high.item()
        raise ValueError(f"{name}: y holds class index {bad} outside [0, {num_classes}) "
                         f"(y_pred has {num_classes} classes in dim 1)")
    return y
