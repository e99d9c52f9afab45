"""Handlers: Checkpoint, EarlyStopping, LRScheduler, Timer, ProgressBar, TrackingHandler."""

from .checkpoint import Checkpoint, CheckpointError
from .early_stopping import EarlyStopping
from .lr_scheduler import LRScheduler
from .progress import ProgressBar
from .timer import Timer
from .tracking import TrackingHandler

__all__ = ["Checkpoint", "CheckpointError", "EarlyStopping", "LRScheduler", "ProgressBar", "Timer", "TrackingHandler"]
