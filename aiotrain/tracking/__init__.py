"""Local-first experiment tracking, W&B-shaped: runs, metrics, media, artifacts, sweeps."""

from typing import TYPE_CHECKING, Any

from .artifacts import Artifact
from .media import Table
from .reader import RunRecord
from .run import Run
from .track import Track

# the sweep names live in aiotrain.sweeps (which imports tracking): offered here on first use
_SWEEPS = ("Choice", "IntUniform", "LogUniform", "Normal", "Sweep", "SweepResult", "Uniform")

__all__ = ["Artifact", "Choice", "IntUniform", "LogUniform", "Normal", "Run", "RunRecord", "Sweep",
           "SweepResult", "Table", "Track", "Uniform"]



def __getattr__(name: str) -> Any:
    if name in _SWEEPS:
        from .. import sweeps

        return getattr(sweeps, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

if TYPE_CHECKING:
    from ..sweeps import Choice, IntUniform, LogUniform, Normal, Sweep, SweepResult, Uniform
