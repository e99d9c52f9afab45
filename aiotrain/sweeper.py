"""Deprecated alias: ``SweepRunner`` moved to :mod:`aiotrain.sweeps` (this module goes in 0.3)."""

import warnings

from .deprecation import REMOVED_IN
from .sweeps.runner import SweepRunner, find_record

__all__ = ["SweepRunner", "find_record"]

warnings.warn(f"aiotrain.sweeper is deprecated and will be removed in {REMOVED_IN}; import "
              "SweepRunner from aiotrain.sweeps (same class)", DeprecationWarning, stacklevel=2)
