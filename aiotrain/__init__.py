"""aiotrain: an asyncio-native training runtime for PyTorch.

The public names are imported on first use (PEP 562), so ``import aiotrain`` and the
``aiotrain sdn`` tools start without importing torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .exports import lazy_exports

__version__ = "0.1.0"

_EXPORTS = {
    "run": "runtime", "ComputeWorker": "runtime",
    "Engine": "engine", "State": "engine", "Snapshot": "engine",
    "Events": "events", "EventEnum": "events",
    "AsyncLoader": "data", "CacheManager": "data", "CacheMode": "data", "CachedData": "data",
    "CacheValidator": "data", "MmapDataset": "data", "TokenizerCache": "data",
    "Conf": "config", "Config": "config",
    "RuntimeValidator": "validation", "ValidationMode": "validation",
    "ValidationReport": "validation", "ValidationSection": "validation",
    "Track": "tracking",
    "Checkpoint": "handlers", "EarlyStopping": "handlers", "LRScheduler": "handlers",
    "Timer": "handlers", "ProgressBar": "handlers", "TrackingHandler": "handlers",
    "Metric": "metrics", "Accuracy": "metrics", "Precision": "metrics", "Recall": "metrics",
    "F1Score": "metrics", "MSE": "metrics", "MAE": "metrics", "R2Score": "metrics",
    "Loss": "metrics", "RunningAverage": "metrics",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())


if TYPE_CHECKING:  # for type checkers and IDEs: the same names, imported eagerly
    from .config import Conf, Config
    from .data import (AsyncLoader, CachedData, CacheManager, CacheMode, CacheValidator,
                       MmapDataset, TokenizerCache)
    from .engine import Engine, Snapshot, State
    from .events import EventEnum, Events
    from .handlers import (Checkpoint, EarlyStopping, LRScheduler, ProgressBar, Timer,
                           TrackingHandler)
    from .metrics import (MAE, MSE, Accuracy, F1Score, Loss, Metric, Precision, R2Score,
                          Recall, RunningAverage)
    from .runtime import ComputeWorker, run
    from .tracking import Track
    from .validation import RuntimeValidator, ValidationMode, ValidationReport, ValidationSection
