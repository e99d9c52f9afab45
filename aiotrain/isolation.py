"""Deprecated alias: job isolation moved to :mod:`aiotrain.job.isolation` (this module goes in 0.3)."""

import warnings

from .deprecation import REMOVED_IN
from .job.isolation import EvaluationHook, ProcessJob, RemoteEngine, run_evaluated

__all__ = ["EvaluationHook", "ProcessJob", "RemoteEngine", "run_evaluated"]

warnings.warn(f"aiotrain.isolation is deprecated and will be removed in {REMOVED_IN}; import "
              "ProcessJob from aiotrain.job (same class)", DeprecationWarning, stacklevel=2)
