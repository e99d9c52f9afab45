"""The Engine (Ignite's API) and its parts: the epoch/iteration state machine (driver), the
thread-to-loop bridge and handler dispatch, the data feed, the run's torch modes, RNG state."""

from .engine import Engine
from .observe import Snapshot
from .state import State

__all__ = ["Engine", "Snapshot", "State"]
