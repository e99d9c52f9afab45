"""Precision, Recall and F1Score from per-class confusion counts (Ignite / sklearn averaging).

Each keeps three count tensors per class: true positives, predicted positives and actual
positives (the support). They are sums, so they all-reduce across ranks exactly.

``average``:
- ``False`` (default, as Ignite): binary input gives the positive class's score as a float;
  multiclass / multilabel give a per-class tensor.
- ``None``: a per-class tensor always (binary input counts as the two classes 0 and 1).
- ``True`` or ``"macro"``: unweighted mean of the per-class scores.
- ``"micro"``: the score of the summed counts (for multiclass this equals accuracy).
- ``"weighted"``: mean of the per-class scores weighted by support.
Classes are ``range(C)`` with C from ``y_pred``'s dim 1 (Ignite's rule; sklearn only counts the
labels that occur, so compare with sklearn's ``labels=range(C)``). A score whose denominator is
zero is 0 (sklearn's ``zero_division=0``).
"""

from __future__ import annotations

from abc import abstractmethod

import torch

from ..protocols import OutputTransform
from .classification import ClassificationInput, ClassificationMetric
from .metric import reduced

__all__ = ["F1Score", "Precision", "Recall"]

_AVERAGES = (False, None, "macro", "micro", "weighted")


class _ConfusionCounts(ClassificationMetric):
    """Per-class TP / predicted / actual counts and the averaging; subclasses give the score."""

    def __init__(self, output_transform: OutputTransform | None = None,
                 average: bool | str | None = False, is_multilabel: bool = False,
                 device: str | torch.device = "cpu") -> None:
        if average is True:
            average = "macro"
        if not any(average is a or (isinstance(a, str) and average == a) for a in _AVERAGES):
            raise ValueError(f"{type(self).__name__}: average must be False, None, True, 'macro', "
                             f"'micro' or 'weighted', got {average!r}")
        self._average = average
        super().__init__(output_transform, is_multilabel, device)

    def reset(self) -> None:
        super().reset()
        self._counts: torch.Tensor | None = None  # (3, K): tp, predicted, actual

    def update(self, output: object) -> None:
        counts = self._batch_counts(self._parse(output)).to(self.device)
        self._counts = counts if self._counts is None else self._counts + counts

    def _batch_counts(self, x: ClassificationInput) -> torch.Tensor:
        if x.kind == "multilabel" or (x.kind == "binary" and self._average is False):
            pred, y = x.y_pred.reshape(len(x.y_pred), -1), x.y.reshape(len(x.y), -1)
            return torch.stack([(pred * y).sum(0), pred.sum(0), y.sum(0)])
        k = 2 if x.kind == "binary" else x.num_classes
        hits = x.y[x.y_pred == x.y]
        return torch.stack([torch.bincount(hits, minlength=k), torch.bincount(x.y_pred, minlength=k),
                            torch.bincount(x.y, minlength=k)])

    def compute(self) -> float | torch.Tensor:
        if self._counts is None:
            raise self._not_computable()
        tp, predicted, actual = reduced(self._counts)[0].double()
        if self._average == "micro":
            return self._score(tp.sum(), predicted.sum(), actual.sum()).item()
        scores = self._score(tp, predicted, actual)
        if self._average == "macro":
            return scores.mean().item()
        if self._average == "weighted":
            return _ratio((scores * actual).sum(), actual.sum()).item()
        if self._average is False and self._kind == "binary":
            return scores[0].item()
        return scores

    @abstractmethod
    def _score(self, tp: torch.Tensor, predicted: torch.Tensor, actual: torch.Tensor) -> torch.Tensor:
        """Per-class score from the counts (elementwise; also used on the summed counts)."""


class Precision(_ConfusionCounts):
    """TP / (TP + FP): of what was predicted as a class, how much was that class."""

    def _score(self, tp: torch.Tensor, predicted: torch.Tensor, actual: torch.Tensor) -> torch.Tensor:
        return _ratio(tp, predicted)


class Recall(_ConfusionCounts):
    """TP / (TP + FN): of what was a class, how much was found."""

    def _score(self, tp: torch.Tensor, predicted: torch.Tensor, actual: torch.Tensor) -> torch.Tensor:
        return _ratio(tp, actual)


class F1Score(_ConfusionCounts):
    """Harmonic mean of precision and recall, 2TP / (2TP + FP + FN), per class then averaged
    (macro F1 is the mean of per-class F1, as sklearn; micro F1 uses the summed counts)."""

    def _score(self, tp: torch.Tensor, predicted: torch.Tensor, actual: torch.Tensor) -> torch.Tensor:
        return _ratio(2 * tp, predicted + actual)


def _ratio(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """num / den, 0 where den == 0."""
    return torch.where(den > 0, num / den.clamp(min=1e-300), torch.zeros_like(num))
