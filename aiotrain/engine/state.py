"""State: what an engine knows about its run (Ignite's State, attribute for attribute)."""

from __future__ import annotations

import collections.abc
import numbers
from collections.abc import Generator
from typing import Any, ClassVar, NoReturn

from ..events import EventKey, Events, resolve_key

__all__ = ["State"]


class State:
    """Epochs and iterations count from 1 (0 = not started); ``epoch_iteration`` is the position
    inside the current epoch (what exact resume continues from). ``State(**kwargs)`` sets extra
    attributes; ``event_to_attr`` maps an event to the attribute its filters count (custom events
    join it through ``engine.register_events(..., event_to_attr=...)``)."""

    event_to_attr: ClassVar[dict[EventKey, str]] = {
        Events.GET_BATCH_STARTED: "iteration",
        Events.GET_BATCH_COMPLETED: "iteration",
        Events.ITERATION_STARTED: "iteration",
        Events.ITERATION_COMPLETED: "iteration",
        Events.EPOCH_STARTED: "epoch",
        Events.EPOCH_COMPLETED: "epoch",
        Events.STARTED: "epoch",
        Events.COMPLETED: "epoch",
    }

    def __init__(self, **kwargs: object) -> None:
        self.iteration = 0
        self.epoch = 0
        self.epoch_iteration = 0
        self.epoch_length: int | None = None
        self.max_epochs: int | None = None
        self.max_iters: int | None = None
        self.output: Any = None
        self.batch: Any = None
        self.metrics: dict[str, Any] = {}
        self.dataloader: object = None
        self.seed: int | None = None
        self.times: dict[str, float | None] = {"EPOCH_COMPLETED": None, "COMPLETED": None}
        for key, value in kwargs.items():
            setattr(self, key, value)
        self.update_attrs()

    def update_attrs(self) -> None:
        """Give every attribute named in ``event_to_attr`` a value (0) if it has none."""
        for attr in self.event_to_attr.values():
            if not hasattr(self, attr):
                setattr(self, attr, 0)

    _update_attrs = update_attrs  # Ignite's name, called by Ignite-shaped code

    def get_event_attrib_value(self, event: object) -> int:
        """The counter ``event``'s filters see (``state.iteration`` for ITERATION_COMPLETED)."""
        attr = self.event_to_attr.get(resolve_key(event))
        if attr is None:
            raise RuntimeError(f"Unknown event name '{event}'")
        value: int = getattr(self, attr)
        return value

    # A State is also a finished awaitable that gives itself. Outside a running loop ``engine.run``
    # runs to completion, as Ignite's does, and returns the State; so the asyncio idiom
    # ``asyncio.run(engine.run(...))`` (the call made before the loop starts) gets a finished
    # run, trains once, and returns its State instead of refusing it after training.
    def __await__(self) -> Generator[Any, None, State]:
        return _finished(self)

    def send(self, value: object) -> NoReturn:
        """Coroutine protocol: already finished, its result is this State."""
        raise StopIteration(self)

    def throw(self, typ: Any, val: Any = None, tb: Any = None) -> NoReturn:
        """Coroutine protocol: a finished run has nothing to interrupt; the error is raised."""
        raise typ if val is None else val

    def close(self) -> None:
        """Coroutine protocol: nothing to close."""

    def __repr__(self) -> str:
        # Ignite's layout; a State's repr (asyncio prints a main task's result at Ctrl-C) must
        # not format the whole data source or a batch of tensors: non-scalars show as their type
        lines = [f"\t{k}: {v if isinstance(v, numbers.Number | str) else type(v)}"
                 for k, v in self.__dict__.items()]
        return "State:\n" + "\n".join(lines) + "\n"


def _finished(state: State) -> Generator[Any, None, State]:
    return state
    yield  # a generator that returns at once


collections.abc.Coroutine.register(State)
