"""The epoch/iteration state machine, run on the engine's compute thread (the "driver").

It calls the process function, evaluates event filters and calls sync handlers inline, crossing
to the loop only for async handlers, an async step or a streaming source's next pass. Event order,
counters and terminate/interrupt handling are Ignite's; resume continues from the exact iteration.
Cancellation is honoured between iterations, while waiting for a batch and during a loop crossing;
a batch taken whose step never ran is taken again on resume, and the ITERATION_COMPLETED handlers
of a step that ran but was cancelled before they finished run first on resume.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import math
import time
import warnings
from collections.abc import Callable
from typing import Any, Protocol

import torch

from ..data.batch import move_batch
from ..events import EventKey, Events
from .bridge import Cancelled, LoopBridge, call_handlers
from .cursor import Cursor
from .emitter import Emitter
from .feed import Feed, StreamEnd
from .view import EngineView

__all__ = ["Driver", "FireHook"]

class FireHook(Protocol):
    """How the driver fires an event, when the engine says otherwise (``Engine._fire_event``)."""

    def __call__(self, event: EventKey, /, *args: object) -> None: ...


class Terminate(Exception):
    """terminate() was called: leave the epoch loop."""


class TerminateEpoch(Exception):
    """terminate_epoch() was called: leave the current epoch."""


class Interrupt(Exception):
    """interrupt() was called: return from run; the next run continues here."""


# the events fired every iteration, in Driver.wanted's order
_PER_ITERATION = (Events.GET_BATCH_STARTED, Events.GET_BATCH_COMPLETED, Events.ITERATION_STARTED,
                  Events.ITERATION_COMPLETED)


class Driver:
    """One run of an engine over its data, on the compute thread.

    It sees the engine through ``EngineView`` (state and Ignite's stop flags) and fires events
    through the engine's ``Emitter``. It owns the run's ``Cursor`` from start to end: ``release``
    hands it back, with the data position, once the run is over (however it ended), and
    ``position`` is a copy of it as it stands, for a ``state_dict`` taken mid-run.
    ``fire_now(event, *args)`` fires an event: due handlers in order (sync inline, async on the
    loop), then observers; ``fire`` replaces it when given (an Ignite subclass's ``_fire_event``
    sees every event).
    """

    def __init__(self, engine: EngineView, events: Emitter, bridge: LoopBridge, source: object,
                 cursor: Cursor, process_function: Callable[..., Any],
                 device: torch.device | None = None, fire: FireHook | None = None) -> None:
        self.engine, self.events, self.bridge, self.cursor = engine, events, bridge, cursor
        held, cursor.held = (cursor.held if cursor.continuing else None), None
        self.feed = Feed(source, bridge.cross, cursor.data_epoch, cursor.data_pos,
                         lambda: bridge.cancelled, held)
        self.process_function, self.device = process_function, device
        self.async_step = inspect.iscoroutinefunction(process_function)
        self.exhausted = False  # the data ran out for good (a one-shot iterator)
        self.fire_now: FireHook = functools.partial(events.fire, bridge)
        self.fire: FireHook = fire if fire is not None else self.fire_now
        # The per-iteration events are fired only when someone listens: at a 2 ms step the calls
        # themselves, run with cold caches, cost ~1 % of throughput (benchmarks/bench_overhead.py).
        # Who listens is recomputed only when the listeners change (the bus's version): an
        # event's hash is Python code, too slow to take four times per iteration.
        self.every_event = fire is not None  # a watched engine sees every event
        self.bus = events.bus
        self.seen = -1
        self.wanted: tuple[bool, ...] = ()

    # the cursor -----------------------------------------------------------------------------
    def position(self) -> Cursor:
        """The cursor as it stands now, with the data position the feed has reached."""
        return dataclasses.replace(self.cursor, data_epoch=self.feed.epoch, data_pos=self.feed.pos)

    def release(self) -> Cursor:
        """The run is over: the cursor, with the data position (and an interrupted run's data
        iterator), back to the engine."""
        cur = self.cursor
        cur.data_epoch, cur.data_pos = self.feed.epoch, self.feed.pos
        cur.held = self.feed.it if cur.continuing else None
        return cur

    # events ---------------------------------------------------------------------------------
    def per_iteration(self, event: EventKey, index: int) -> None:
        """Fire per-iteration ``event`` (``_PER_ITERATION[index]``) if anyone listens, then stop
        if a handler (or the step) asked to."""
        if self.bus.version != self.seen:
            self.seen = self.bus.version
            always = self.every_event or bool(self.events.observers)
            self.wanted = tuple(always or ev in self.events.entries for ev in _PER_ITERATION)
        eng = self.engine
        if self.wanted[index]:
            self.fire(event)
        else:
            eng.last_event_name = event
        if eng.should_terminate or eng.should_terminate_single_epoch or eng.should_interrupt:
            self.check()

    def check(self) -> None:
        eng = self.engine
        if eng.should_terminate:
            raise Terminate
        if eng.should_terminate_single_epoch:
            raise TerminateEpoch
        if eng.should_interrupt:
            raise Interrupt

    def check_cancel(self) -> None:
        if self.bridge.cancelled:
            raise Cancelled

    # the run --------------------------------------------------------------------------------
    def drive(self) -> None:
        eng, st, cur = self.engine, self.engine.state, self.cursor
        start = time.perf_counter()
        self.bridge.enter()
        try:
            self._run_owed()
            try:
                if not cur.continuing:
                    self.fire(Events.STARTED)
                self.check_stop_before_epoch("STARTED")
                while not self.is_done() and not eng.should_terminate:
                    self.run_epoch()
            except Terminate:
                self.fire(Events.TERMINATE)
            st.times["COMPLETED"] = time.perf_counter() - start
            if eng.should_terminate != "skip_completed":
                self.check_cancel()
                self.fire(Events.COMPLETED)
                st.times["COMPLETED"] = time.perf_counter() - start
        except Interrupt:
            cur.continuing, eng.should_interrupt = True, False
            self.fire(Events.INTERRUPT)
        except Cancelled:
            raise
        except Exception as exc:
            if Events.EXCEPTION_RAISED not in self.events.entries:
                raise
            self.fire(Events.EXCEPTION_RAISED, exc)
        finally:
            self.bridge.leave()

    def _run_owed(self) -> None:
        """The ITERATION_COMPLETED handlers of a step that ran in a cancelled run."""
        owed, self.cursor.owed = self.cursor.owed, []
        if owed:
            self.engine.last_event_name = Events.ITERATION_COMPLETED
            call_handlers(owed, self.engine, (), self.bridge)

    def check_stop_before_epoch(self, where: str) -> None:
        eng = self.engine
        if eng.should_terminate_single_epoch:
            raise RuntimeError(f"terminate_epoch() was called on {where}: it ends an epoch in "
                               "progress; call terminate() to stop the run instead")
        if eng.should_terminate:
            raise Terminate
        if eng.should_interrupt:
            raise Interrupt

    def is_done(self) -> bool:
        st = self.engine.state
        if self.exhausted or (st.max_iters is not None and st.iteration >= st.max_iters):
            return True
        if st.max_epochs is None or st.epoch_iteration:
            return False
        return st.epoch >= st.max_epochs or (
            st.epoch_length is not None and st.iteration >= st.epoch_length * st.max_epochs)

    def run_epoch(self) -> None:
        eng, st, cur = self.engine, self.engine.state, self.cursor
        self.check_cancel()
        continuing, cur.continuing = cur.continuing, False
        start = time.perf_counter()
        if not continuing and not cur.epoch_open:
            st.epoch += 1
            cur.epoch_open = True
        if not continuing and not (st.epoch_length and st.epoch_iteration >= st.epoch_length):
            self.fire(Events.EPOCH_STARTED)
        try:
            self.check_stop_before_epoch("EPOCH_STARTED")
        except Terminate:
            if st.epoch_iteration == 0:
                cur.epoch_open = False  # as Ignite: an epoch stopped at its start is skipped
            raise
        try:
            self.iterate()
        except TerminateEpoch:
            self.fire(Events.TERMINATE_SINGLE_EPOCH)
            self.feed.restart(st.dataloader)
        st.times["EPOCH_COMPLETED"] = time.perf_counter() - start
        if st.epoch_length is None:
            st.epoch_length = st.epoch_iteration
            if st.max_iters is not None:
                st.max_epochs = math.ceil(st.max_iters / st.epoch_length)
        if eng.should_terminate_single_epoch != "skip_epoch_completed":
            self.check_cancel()
            cur.epoch_done = True
            try:
                self.fire(Events.EPOCH_COMPLETED)
            finally:
                cur.epoch_done = False
            st.times["EPOCH_COMPLETED"] = time.perf_counter() - start
        eng.should_terminate_single_epoch = False
        st.epoch_iteration = 0
        cur.epoch_open = False
        if eng.should_terminate:
            raise Terminate
        if eng.should_interrupt:
            raise Interrupt

    def iterate(self) -> None:
        st, feed, bridge = self.engine.state, self.feed, self.bridge
        restarted = False
        has_data = st.dataloader is not None  # as Ignite: no batch events without data
        while st.epoch_length is None or st.epoch_iteration < st.epoch_length:
            if bridge.cancelled:
                raise Cancelled
            st.batch = None
            if not restarted and has_data:
                self.per_iteration(Events.GET_BATCH_STARTED, 0)
            try:
                batch = feed.next()
            except StreamEnd:
                if self.end_of_pass(restarted, has_data):
                    return
                restarted = True
                continue
            restarted = False
            self._take_and_step(batch)
            try:
                self.per_iteration(Events.ITERATION_COMPLETED, 3)
            except Cancelled as cancelled:  # the step ran: its unfinished handlers run on resume
                self.cursor.owed = cancelled.remaining
                raise
            if st.max_iters is not None and st.iteration >= st.max_iters and \
                    (st.epoch_length is None or st.epoch_iteration < st.epoch_length):
                self.engine.should_terminate = True
                raise Terminate

    def end_of_pass(self, restarted: bool, has_data: bool) -> bool:
        """The source ran out: True when that ends the epoch, else the next pass is started."""
        st = self.engine.state
        if st.epoch_length is None and st.epoch_iteration > 0:
            return True  # an unsized source defines the epoch length by running out
        if st.iteration == 0 and (restarted or st.epoch_length is None):
            raise ValueError("data source is empty: it yielded no batches") from None
        if restarted:  # a one-shot iterator ran dry before the run's end: as Ignite
            warnings.warn("Data iterator can not provide data anymore but required total "
                          f"number of iterations to run is not reached. Current iteration: "
                          f"{st.iteration}", stacklevel=1)
            self.exhausted = True
            return True
        if has_data:
            self.fire(Events.DATALOADER_STOP_ITERATION)
            self.check()
        self.feed.restart(st.dataloader)
        return False

    def _take_and_step(self, batch: Any) -> None:
        """GET_BATCH_COMPLETED, ITERATION_STARTED and the step; cancelled before the step
        finished, the iteration is undone (the batch is taken again on resume). So is a step
        that failed in a cancelled run (a collective whose peer was killed, and this process
        told to stop): the state a stop-point checkpoint saves then names the last step that
        completed, never one that did not."""
        st = self.engine.state
        st.batch, st.output = batch, None
        counted = False
        try:
            if st.dataloader is not None:
                self.per_iteration(Events.GET_BATCH_COMPLETED, 1)
            st.epoch_iteration += 1
            st.iteration += 1
            counted = True
            self.per_iteration(Events.ITERATION_STARTED, 2)
            if self.bridge.cancelled:
                raise Cancelled
            st.output = self.step(st.batch)
        except BaseException as exc:
            if isinstance(exc, Cancelled) or self.bridge.cancelled:
                self.feed.unget()
                if counted:
                    st.epoch_iteration -= 1
                    st.iteration -= 1
            raise

    def step(self, batch: Any) -> Any:
        """The process function on ``batch`` (moved to the device first); an async one is
        awaited on the loop."""
        if self.device is not None:
            batch = move_batch(batch, self.device)
        if self.async_step:
            return self.bridge.cross(self.process_function(self.engine, batch))
        return self.process_function(self.engine, batch)
