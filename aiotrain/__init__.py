"""aiotrain: an asyncio-native training runtime for PyTorch."""

from .data import AsyncLoader
from .engine import Engine, Snapshot, State
from .events import EventEnum, Events
from .runtime import ComputeWorker, run

__all__ = ["AsyncLoader", "ComputeWorker", "Engine", "EventEnum", "Events", "Snapshot", "State", "run"]
__version__ = "0.1.0"
