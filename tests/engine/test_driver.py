"""The driver runs an engine's epochs through the narrow EngineView alone, owns the run's Cursor
and hands it back: a plain object with Ignite's public run-control attributes is enough."""

from __future__ import annotations

import asyncio

from aiotrain.engine.bridge import LoopBridge
from aiotrain.engine.cursor import Cursor
from aiotrain.engine.driver import Driver
from aiotrain.engine.emitter import Emitter
from aiotrain.engine.modes import TorchModes
from aiotrain.engine.state import State
from aiotrain.engine.view import EngineView
from aiotrain.events import EventKey, Events


class View:
    """Not an Engine: only what EngineView names."""

    def __init__(self) -> None:
        self.state = State()
        self.should_terminate: bool | str = False
        self.should_terminate_single_epoch: bool | str = False
        self.should_interrupt = False
        self.last_event_name: EventKey | None = None


def _driver(view: EngineView, events: Emitter, cursor: Cursor, loop: asyncio.AbstractEventLoop,
            data: list[int]) -> Driver:
    view.state.dataloader = data
    return Driver(view, events, LoopBridge(loop, TorchModes.capture()), data, cursor,
                  lambda engine, batch: batch * 10)


def test_the_driver_needs_only_the_engine_view_and_hands_the_cursor_back():
    view = View()
    events = Emitter(view)
    seen: list[tuple[str, int, int]] = []
    events.bus.add(Events.ITERATION_COMPLETED,
                   lambda e: seen.append(("iteration", e.state.iteration, e.state.output)))
    events.bus.add(Events.EPOCH_COMPLETED, lambda e: seen.append(("epoch", e.state.epoch, 0)))
    events.bus.add(Events.ITERATION_COMPLETED(once=4),
                   lambda e: setattr(e, "should_interrupt", True))  # Ignite's engine.interrupt()
    view.state.max_epochs, view.state.epoch_length = 2, 3
    loop = asyncio.new_event_loop()  # sync handlers and a list: the driver never crosses to it
    try:
        first = _driver(view, events, Cursor(), loop, [1, 2, 3])
        first.drive()
        cursor = first.release()
        assert seen == [("iteration", 1, 10), ("iteration", 2, 20), ("iteration", 3, 30),
                        ("epoch", 1, 0), ("iteration", 4, 10)]
        # interrupted in epoch 2 after one batch: the cursor holds the iterator to continue
        assert (cursor.continuing, cursor.epoch_open, cursor.data_epoch, cursor.data_pos) == \
            (True, True, 1, 1)
        assert cursor.held is not None and view.last_event_name == Events.INTERRUPT
        second = _driver(view, events, cursor, loop, [1, 2, 3])
        assert cursor.held is None  # the new run's driver took it
        second.drive()
        assert second.release() is cursor
    finally:
        loop.close()
    assert seen[5:] == [("iteration", 5, 20), ("iteration", 6, 30), ("epoch", 2, 0)]
    assert (cursor.continuing, cursor.epoch_open, cursor.data_epoch, cursor.data_pos) == \
        (False, False, 1, 3)
    assert view.last_event_name == Events.COMPLETED
