"""The epoch/iteration state machine, run on the engine's compute thread (the "driver").

It calls the process function, evaluates event filters and calls sync handlers inline, crossing
to the loop only for async handlers, an async step or a streaming source's next pass. Event order,
counters and terminate/interrupt handling are Ignite's; resume continues from the exact iteration.
Cancellation is honoured between iterations, while waiting for a batch and during a loop crossing;
a batch taken whose step never ran is taken again on resume, and the ITERATION_COMPLETED handlers
of a step that ran but was cancelled before they finished run first on resume.
"""

from __future__ import annotations

import math
import time
import warnings
from typing import TYPE_CHECKING, Any

from ..data.batch import move_batch
from ..events import EventKey, Events
from .bridge import Cancelled, LoopBridge, call_handlers
from .feed import Feed, StreamEnd
from .state import State

if TYPE_CHECKING:
    from .engine import Engine

__all__ = ["Driver"]


class Terminate(Exception):
    """terminate() was called: leave the epoch loop."""


class TerminateEpoch(Exception):
    """terminate_epoch() was called: leave the current epoch."""


class Interrupt(Exception):
    """interrupt() was called: return from run; the next run continues here."""


class _Every:
    """Contains every event: a watched engine (one that overrides ``_fire_event``) sees them all."""

    def __contains__(self, event: object) -> bool:
        return True


# the events fired every iteration, in Driver.wanted's order
_PER_ITERATION = (Events.GET_BATCH_STARTED, Events.GET_BATCH_COMPLETED, Events.ITERATION_STARTED,
                  Events.ITERATION_COMPLETED)


class Driver:
    """One run of an engine over its data, on the compute thread."""

    def __init__(self, engine: Engine, bridge: LoopBridge, feed: Feed, watched: bool = False) -> None:
        self.engine, self.bridge, self.feed = engine, bridge, feed
        self.handlers = engine._bus.entries  # the hot path reads the dict directly
        self.counts = engine._event_counts
        self.exhausted = False  # the data ran out for good (a one-shot iterator)
        # an Ignite-style subclass that defines _fire_event sees every event
        self.fire = engine._fire_event if watched else self.fire_now
        # The per-iteration events are fired only when someone listens: at a 2 ms step the calls
        # themselves, run with cold caches, cost ~1 % of throughput (benchmarks/bench_overhead.py).
        # Who listens is recomputed only when the listeners change (the bus's version): an
        # event's hash is Python code, too slow to take four times per iteration.
        self.listened: Any = _Every() if watched else self.handlers
        self.bus = engine._bus
        self.seen = -1
        self.wanted: tuple[bool, ...] = ()

    # events ---------------------------------------------------------------------------------
    def fire_now(self, event: EventKey, *args: Any) -> None:
        """Fire ``event``: due handlers in order (sync inline, async on the loop), then observers."""
        eng = self.engine
        eng.last_event_name = event
        entries = self.handlers.get(event)
        if entries is None and not eng._observers:
            return
        count = self.count(event)
        if entries:
            due = [e for e in entries if e.filter is None or e.filter(eng, count)]
            if due:
                call_handlers(due, eng, args, self.bridge)
        if eng._observers:
            eng._notify(event, count)

    def count(self, event: EventKey) -> int:
        """What filters see: the state attribute the event maps to (iteration or epoch for the
        built-in events, as Ignite), else how many times it fired (this firing included)."""
        attr = State.event_to_attr.get(event)
        if attr is not None:
            return getattr(self.engine.state, attr)
        n = self.counts.get(event, 0) + 1
        self.counts[event] = n
        return n

    def per_iteration(self, event: EventKey, index: int) -> None:
        """Fire per-iteration ``event`` (``_PER_ITERATION[index]``) if anyone listens, then stop
        if a handler (or the step) asked to."""
        if self.bus.version != self.seen:
            self.seen = self.bus.version
            observed = bool(self.engine._observers)
            self.wanted = tuple(observed or ev in self.listened for ev in _PER_ITERATION)
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
        eng, st = self.engine, self.engine.state
        start = time.perf_counter()
        self.bridge.enter()
        try:
            self._run_owed()
            try:
                if not eng._continuing:
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
            eng._continuing, eng.should_interrupt = True, False
            self.fire(Events.INTERRUPT)
        except Cancelled:
            raise
        except Exception as exc:
            if Events.EXCEPTION_RAISED not in self.handlers:
                raise
            self.fire(Events.EXCEPTION_RAISED, exc)
        finally:
            self.bridge.leave()

    def _run_owed(self) -> None:
        """The ITERATION_COMPLETED handlers of a step that ran in a cancelled run."""
        owed, self.engine._owed = self.engine._owed, []
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
        eng, st = self.engine, self.engine.state
        self.check_cancel()
        continuing, eng._continuing = eng._continuing, False
        start = time.perf_counter()
        if not continuing and not eng._epoch_open:
            st.epoch += 1
            eng._epoch_open = True
        if not continuing and not (st.epoch_length and st.epoch_iteration >= st.epoch_length):
            self.fire(Events.EPOCH_STARTED)
        try:
            self.check_stop_before_epoch("EPOCH_STARTED")
        except Terminate:
            if st.epoch_iteration == 0:
                eng._epoch_open = False  # as Ignite: an epoch stopped at its start is skipped
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
            eng._epoch_done = True
            try:
                self.fire(Events.EPOCH_COMPLETED)
            finally:
                eng._epoch_done = False
            st.times["EPOCH_COMPLETED"] = time.perf_counter() - start
        eng.should_terminate_single_epoch = False
        st.epoch_iteration = 0
        eng._epoch_open = False
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
                self.engine._owed = cancelled.remaining
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
        finished, the iteration is undone (the batch is taken again on resume)."""
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
        except Cancelled:
            self.feed.unget()
            if counted:
                st.epoch_iteration -= 1
                st.iteration -= 1
            raise

    def step(self, batch: Any) -> Any:
        eng = self.engine
        if eng.device is not None:
            batch = move_batch(batch, eng.device)
        if eng._async_step:
            return self.bridge.cross(eng._process_function(eng, batch))
        return eng._process_function(eng, batch)
