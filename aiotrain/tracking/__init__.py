"""Local-first experiment tracking, W&B-shaped: runs, metrics, media, artifacts, sweeps."""

from .artifacts import Artifact
from .media import Table
from .reader import RunRecord
from .run import Run
from .sweeps import Choice, IntUniform, LogUniform, Normal, Sweep, SweepResult, Uniform
from .track import Track

__all__ = ["Artifact", "Choice", "IntUniform", "LogUniform", "Normal", "Run", "RunRecord", "Sweep",
           "SweepResult", "Table", "Track", "Uniform"]
