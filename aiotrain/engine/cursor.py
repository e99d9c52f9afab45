"""Cursor: where an engine's runs stand, beyond what its State shows.

State says which epoch and iteration a run reached. The cursor holds the rest that the next run
continues from: the data position (which pass over the data, how many batches taken in it),
whether the epoch in progress is already counted, whether the last run was interrupted (and the
data iterator it was reading), and the ITERATION_COMPLETED handlers a cancellation left unrun.

One owner at a time: between runs the Engine keeps the cursor (``load_state_dict`` and a fresh
start replace it); during a run the driver owns it, moves it, and hands it back when the run
ends, however it ends.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from ..events import HandlerEntry

__all__ = ["Cursor"]


@dataclass
class Cursor:
    """The position a run continues from (see the module docstring)."""

    #: the pass over the data (0 for the first) and the batches already taken in it
    data_epoch: int = 0
    data_pos: int = 0
    #: ``state.epoch`` already counts the epoch in progress (a run stopped inside it)
    epoch_open: bool = False
    #: the last run was interrupted (``interrupt()``): the next one continues it, STARTED unfired
    continuing: bool = False
    #: the interrupted run's data iterator (of a source read on the compute thread), continued as is
    held: Iterator[Any] | None = None
    #: the ITERATION_COMPLETED handlers of a step whose run was cancelled before they all ran
    owed: list[HandlerEntry] = field(default_factory=list)
    #: inside EPOCH_COMPLETED: a state_dict taken now is of a finished epoch (live runs only)
    epoch_done: bool = False
