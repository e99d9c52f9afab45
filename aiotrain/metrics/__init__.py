"""Metrics: reset / update / compute, attached to an engine as compute-thread hooks."""

from .accuracy import Accuracy
from .adapter import TorchMetric, as_metric
from .loss import Loss
from .metric import Metric, NotComputableError
from .precision_recall import F1Score, Precision, Recall
from .regression import MAE, MSE, R2Score
from .running_average import RunningAverage

__all__ = [
    "MAE",
    "MSE",
    "Accuracy",
    "F1Score",
    "Loss",
    "Metric",
    "NotComputableError",
    "Precision",
    "R2Score",
    "Recall",
    "RunningAverage",
    "TorchMetric",
    "as_metric",
]
