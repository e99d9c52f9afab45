"""Accuracy for binary, multiclass and multilabel inputs (Ignite's definitions)."""

from __future__ import annotations

import torch

from .classification import ClassificationMetric

__all__ = ["Accuracy"]


class Accuracy(ClassificationMetric):
    """Fraction of correct predictions.

    Binary and multiclass: correct elements / elements. Multilabel (``is_multilabel=True``): a
    sample counts as correct only when all its labels are right (sklearn's subset accuracy).
    See :mod:`aiotrain.metrics.classification` for the accepted shapes.
    """

    def reset(self) -> None:
        super().reset()
        self._correct = torch.zeros((), dtype=torch.long, device=self.device)
        self._total = torch.zeros((), dtype=torch.long, device=self.device)

    def update(self, output: object) -> None:
        x = self._parse(output)
        hits = x.y_pred == x.y
        if x.kind == "multilabel":
            hits = hits.all(dim=1)
        self._correct += hits.sum()
        self._total += hits.numel()

    def compute(self) -> float:
        return self._global_ratio(self._correct, self._total)
