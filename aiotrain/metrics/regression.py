"""Regression metrics: MSE, MAE and R2Score, accumulated in float64 sums.

Shapes: ``y_pred`` and ``y`` must have the same shape; a trailing singleton dimension on one side
is dropped, so a model's (N, 1) output against (N,) targets works.

MSE and MAE average over every element (sklearn's ``uniform_average`` and ``F.mse_loss``).
Ignite divides by the batch dimension only, which differs for multi-output targets; the
element mean is what sklearn and torch users compare against, so that is what we do.
"""

from __future__ import annotations

from abc import abstractmethod

import torch

from .metric import Metric, reduced

__all__ = ["MAE", "MSE", "R2Score"]


class _Regression(Metric):
    def _regression_pair(self, output: object) -> tuple[torch.Tensor, torch.Tensor]:
        y_pred, y = self._pair(output)
        if y_pred.shape != y.shape:
            if y_pred.ndim == y.ndim + 1 and y_pred.shape[-1] == 1:
                y_pred = y_pred.squeeze(-1)
            elif y.ndim == y_pred.ndim + 1 and y.shape[-1] == 1:
                y = y.squeeze(-1)
        if y_pred.shape != y.shape:
            raise ValueError(f"{type(self).__name__}: y_pred {tuple(y_pred.shape)} and y "
                             f"{tuple(y.shape)} must have the same shape")
        if y.numel() == 0:
            raise ValueError(f"{type(self).__name__}: empty batch")
        if y.ndim == 0:  # one scalar example
            y_pred, y = y_pred.reshape(1), y.reshape(1)
        return y_pred.double(), y.double()


class _ElementwiseMean(_Regression):
    """Mean over all elements of ``_error(y_pred - y)``."""

    def reset(self) -> None:
        self._sum = torch.zeros((), dtype=torch.float64, device=self.device)
        self._count = torch.zeros((), dtype=torch.long, device=self.device)

    def update(self, output: object) -> None:
        y_pred, y = self._regression_pair(output)
        self._sum += self._error(y_pred - y).sum()
        self._count += y.numel()

    def compute(self) -> float:
        return self._global_ratio(self._sum, self._count)

    @abstractmethod
    def _error(self, diff: torch.Tensor) -> torch.Tensor:
        """Per-element error of ``y_pred - y``."""


class MSE(_ElementwiseMean):
    """Mean squared error."""

    def _error(self, diff: torch.Tensor) -> torch.Tensor:
        return diff.square()


class MAE(_ElementwiseMean):
    """Mean absolute error."""

    def _error(self, diff: torch.Tensor) -> torch.Tensor:
        return diff.abs()


class R2Score(_Regression):
    """Coefficient of determination, 1 - SS_res / SS_tot, per output column then averaged
    (sklearn's ``multioutput="uniform_average"``).

    ``y`` is (N,) or (N, D, ...) (trailing dims are flattened into D outputs). A constant target
    column scores 1.0 when predicted exactly and 0.0 otherwise (sklearn's ``force_finite``).
    Needs at least two examples.
    """

    def reset(self) -> None:
        self._n = torch.zeros((), dtype=torch.long, device=self.device)
        self._sums: torch.Tensor | None = None  # (3, D): sum y, sum y^2, sum (y_pred - y)^2

    def update(self, output: object) -> None:
        y_pred, y = self._regression_pair(output)
        y_pred, y = y_pred.reshape(len(y), -1), y.reshape(len(y), -1)
        sums = torch.stack([y.sum(0), y.square().sum(0), (y_pred - y).square().sum(0)])
        if self._sums is not None and self._sums.shape != sums.shape:
            raise ValueError(f"R2Score: targets changed from {self._sums.shape[1]} to "
                             f"{sums.shape[1]} outputs since reset")
        self._sums = sums if self._sums is None else self._sums + sums
        self._n += len(y)

    def compute(self) -> float:
        if self._sums is None:
            raise self._not_computable()
        n, (sum_y, sum_y2, ss_res) = reduced(self._n, self._sums)
        if n.item() < 2:
            raise self._not_computable(f"at least two examples, got {n.item()}")
        ss_tot = sum_y2 - sum_y.square() / n
        # sums of squares cancel to rounding noise for a constant column: call that zero
        constant = ss_tot <= 1e-12 * sum_y2.clamp(min=1e-300)
        r2 = torch.where(constant, (ss_res == 0).double(), 1 - ss_res / ss_tot.clamp(min=1e-300))
        return r2.mean().item()
