"""The narrow view of an Engine that its parts (the driver, the emitter) read and write.

Only Ignite's public run-control attributes: the parts never import the Engine (so there is no
import cycle) and cannot reach past this view into its private state.
"""

from __future__ import annotations

from typing import Protocol

from ..events import EventKey
from .state import State

__all__ = ["EngineView"]


class EngineView(Protocol):
    """What the driver and the emitter see of the engine they serve. The engine object itself is
    also what handlers and event filters receive as their ``engine`` argument."""

    state: State
    should_terminate: bool | str
    should_terminate_single_epoch: bool | str
    should_interrupt: bool
    last_event_name: EventKey | None
