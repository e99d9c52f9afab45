"""Engine and State: the event-driven training loop.

The loop over steps runs on the engine's ComputeWorker thread (the "driver"): it calls the
process function, evaluates event filters and runs compute hooks (metric updates) itself, and
crosses to the event loop only when some loop handler is due, or to open the next epoch of an
async data source. With no handler due an iteration costs a few microseconds. Handlers run on
the loop while the compute thread waits, so a handler always sees a quiescent model.

Deviation from Ignite, on purpose (docs/architecture.md): ``run`` on an engine whose state is part way
resumes from that exact iteration (Ignite restarts the interrupted epoch's remainder at the next
epoch).
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import contextlib
import inspect
import random
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .data.batch import move_batch
from .data.loader import AsyncLoader, StreamClosed, sized_len
from .events import (
    EventBus,
    EventEnum,
    Events,
    EventsList,
    FilteredEvent,
    RemovableHandle,
    _check_signature,
    _flatten,
)
from .runtime import ComputeWorker, await_future
from .values import as_number, check_int, number_or_value

__all__ = ["Engine", "Snapshot", "State"]

_EPOCH_COUNTED = {Events.STARTED, Events.EPOCH_STARTED, Events.EPOCH_COMPLETED, Events.COMPLETED}
_ITERATION_COUNTED = {Events.GET_BATCH_STARTED, Events.GET_BATCH_COMPLETED,
                      Events.ITERATION_STARTED, Events.ITERATION_COMPLETED}


@dataclass
class State:
    """What an engine knows about its run. Epochs and iterations count from 1 (0 = not started)."""

    epoch: int = 0
    iteration: int = 0
    epoch_iteration: int = 0
    max_epochs: int | None = None
    epoch_length: int | None = None
    # repr=False: a State's repr (asyncio prints the result of the main task at Ctrl-C
    # bookkeeping) must not format the whole data source or a batch of tensors
    output: Any = field(default=None, repr=False)
    batch: Any = field(default=None, repr=False)
    metrics: dict[str, Any] = field(default_factory=dict)
    dataloader: Any = field(default=None, repr=False)
    times: dict[str, float | None] = field(default_factory=dict)
    seed: int | None = None


@dataclass(frozen=True)
class Snapshot:
    """A read-only view of one event, for observers (``engine.observe``)."""

    event: str
    epoch: int
    iteration: int
    output: dict[str, float]
    metrics: dict[str, Any]
    time: float

    def to_dict(self) -> dict[str, Any]:
        return {"event": self.event, "epoch": self.epoch, "iteration": self.iteration,
                "output": self.output, "metrics": self.metrics, "time": self.time}


class _Terminate(Exception):
    """terminate() was called: leave the epoch loop."""


class _TerminateEpoch(Exception):
    """terminate_epoch() was called: leave the current epoch."""


class _Cancelled(BaseException):
    """The task awaiting run() was cancelled: stop without firing anything more."""


class _StreamEnd(Exception):
    """Raised by the feed when the data source has no more batches for this pass."""


class Engine:
    """Runs ``process_function(engine, batch)`` over data for ``max_epochs``, firing events.

    ``process_function`` may be sync (runs on the engine's compute thread) or ``async def``
    (awaited on the loop, for evaluators that await I/O). ``device`` gives the compute thread a
    CUDA stream and moves batches there. ``worker`` shares a ComputeWorker between engines run
    one after the other; by default each run starts its own and joins it when it ends.
    """

    def __init__(self, process_function: Callable[..., Any], *, device: Any = None,
                 worker: ComputeWorker | None = None) -> None:
        if not callable(process_function):
            raise TypeError(f"process_function must be callable, got {process_function!r}")
        _check_signature(process_function, "process_function", None, None)
        self._process_function = process_function
        self._async_step = inspect.iscoroutinefunction(process_function)
        self.device = torch.device(device) if device is not None else None
        self._worker = worker
        self._bus = EventBus()
        self._entries = self._bus._entries  # the hot path reads the dict directly
        self.state = State()
        self.should_terminate: bool | str = False
        self.should_terminate_single_epoch: bool | str = False
        self.last_event_name: EventEnum | None = None  # the event being (or last) fired, as Ignite
        self._event_counts: dict[EventEnum, int] = {}
        self._observers: dict[EventEnum, list[_Observer]] = {}
        self._pending: set[Any] = set()
        self._write_error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._running = False
        self._cancel = False
        self._crossing: cf.Future[Any] | None = None
        self._feed: _Feed | None = None
        self._data_epoch = 0
        self._data_pos = 0
        self._epoch_done = False  # inside EPOCH_COMPLETED: a state_dict taken now is a finished epoch
        self._rendezvous = threading.Lock()
        self._rendezvous.acquire()

    # handlers -------------------------------------------------------------------------------
    def add_event_handler(self, event: EventEnum | FilteredEvent | EventsList,
                          handler: Callable[..., Any], *args: Any, priority: int = 0,
                          **kwargs: Any) -> RemovableHandle:
        """Attach ``handler(engine, *args, **kwargs)`` to ``event``; sync or ``async def``."""
        lead = (None,) if _event_of(event) == {Events.EXCEPTION_RAISED} else ()
        return self._bus.add(event, handler, args, kwargs, priority=priority, signature_args=lead)

    def on(self, event: EventEnum | FilteredEvent | EventsList, handler: Any = None, *args: Any,
           priority: int = 0, **kwargs: Any) -> Any:
        """Decorator (``@engine.on(Events.X)``) or call (``engine.on(Events.X, fn)``)."""
        if handler is not None and not callable(handler):
            args, handler = (handler, *args), None
        if handler is None:
            def decorator(fn: Callable[..., Any]) -> Callable[..., Any]:
                self.add_event_handler(event, fn, *args, priority=priority, **kwargs)
                return fn
            return decorator
        return self.add_event_handler(event, handler, *args, priority=priority, **kwargs)

    def remove_event_handler(self, handler: Callable[..., Any], event: EventEnum) -> None:
        """Detach ``handler`` from ``event`` (ValueError when it is not attached)."""
        self._bus.remove(handler, event)

    def has_event_handler(self, handler: Callable[..., Any], event: EventEnum | None = None) -> bool:
        """True when ``handler`` is attached to ``event`` (or to any event)."""
        return self._bus.has(handler, event)

    def add_compute_hook(self, event: EventEnum | FilteredEvent | EventsList,
                         fn: Callable[..., Any], *args: Any, priority: int = 0) -> RemovableHandle:
        """Run ``fn(engine, *args)`` on the compute thread when ``event`` fires, before the loop
        handlers of that event and with no loop crossing. For pure tensor work (metric updates)."""
        return self._bus.add(event, fn, args, priority=priority, on_compute=True)

    def register_events(self, *events: EventEnum) -> None:
        """Allow custom events (``engine.register_events(*MyEvents)``)."""
        self._bus.register_events(*events)

    def add_metric(self, metric: Any, name: str) -> None:
        """Attach ``metric`` under ``name``: its value lands in ``state.metrics[name]``."""
        metric.attach(self, name)

    def add_metrics(self, metrics: dict[str, Any]) -> None:
        """Attach several metrics: ``{"acc": Accuracy(), ...}``."""
        for name, metric in metrics.items():
            self.add_metric(metric, name)

    def add_pending(self, fut: cf.Future[Any] | asyncio.Future[Any]) -> None:
        """Register work (a checkpoint write) that ``run`` must see finished before it returns."""
        self._pending.add(fut)
        fut.add_done_callback(self._settled)

    def _settled(self, fut: Any) -> None:
        self._pending.discard(fut)
        if not fut.cancelled() and fut.exception() is not None and self._write_error is None:
            self._write_error = fut.exception()

    # control --------------------------------------------------------------------------------
    def terminate(self, skip_completed: bool = False) -> None:
        """Stop the run after the current event; TERMINATE then COMPLETED (unless skipped) fire."""
        self.should_terminate = "skip_completed" if skip_completed else True

    def terminate_epoch(self, skip_epoch_completed: bool = False) -> None:
        """Stop the current epoch after the current event; the next epoch starts afresh."""
        self.should_terminate_single_epoch = "skip_epoch_completed" if skip_epoch_completed else True

    def fire_event(self, event: EventEnum, *args: Any) -> None:
        """Fire ``event`` from sync code. From the compute thread (or any other thread) it blocks
        until its handlers ran on the loop; on the loop thread only sync handlers can run."""
        if event not in self._bus.allowed:
            raise ValueError(f"event {event!r} is not registered; call engine.register_events first")
        if not self._on_loop_thread():
            self._fire(event, *args)
            return
        count = self._count(event)
        due = self._due(self._entries.get(event), args, count)
        if any(e.is_async for e in due):
            raise RuntimeError(f"{event!r} has async handlers: use 'await engine.afire_event(...)'"
                               " from a coroutine")
        _run_sync_handlers(due, self, args)
        self._notify(event, count)

    async def afire_event(self, event: EventEnum, *args: Any) -> None:
        """Fire ``event`` from a coroutine on the loop; awaits async handlers."""
        if event not in self._bus.allowed:
            raise ValueError(f"event {event!r} is not registered; call engine.register_events first")
        count = self._count(event)
        await _dispatch(self._due(self._entries.get(event), args, count), self, args)
        self._notify(event, count)

    # observers ------------------------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def observe(self, *events: EventEnum | FilteredEvent | EventsList,
                      maxsize: int = 256) -> AsyncIterator[AsyncIterator[Snapshot]]:
        """``async with engine.observe(Events.X) as stream: async for snap in stream`` — one
        Snapshot per event. The queue keeps the newest ``maxsize`` snapshots and drops the oldest,
        so a slow observer never slows training. The stream ends when the engine's run ends."""
        obs = _Observer(maxsize)
        keys = set()
        for ev in events or (Events.ITERATION_COMPLETED,):
            for key, flt in _flatten(ev):
                obs.filters[key] = flt
                keys.add(key)
                self._observers.setdefault(key, []).append(obs)
        try:
            yield obs
        finally:
            for key in keys:
                self._observers[key].remove(obs)
                if not self._observers[key]:
                    del self._observers[key]

    # state ----------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Where the run is, and the RNG states at this moment (for bit-exact resume)."""
        st = self.state
        return {
            "epoch": st.epoch, "iteration": st.iteration,
            "epoch_iteration": 0 if self._epoch_done else st.epoch_iteration,
            "epoch_length": st.epoch_length, "max_epochs": st.max_epochs, "seed": st.seed,
            "data_epoch": self._data_epoch, "data_pos": self._data_pos, "rng": _rng_state(),
        }

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        """Restore a state_dict: the next ``run`` resumes from that exact iteration."""
        required = ("epoch", "iteration", "epoch_length", "max_epochs")
        missing = [k for k in required if k not in sd]
        if missing:
            raise ValueError(f"engine state_dict lacks {', '.join(missing)}")
        if self._running:
            raise RuntimeError("cannot load a state_dict while the engine is running")
        st = self.state
        st.epoch, st.iteration = int(sd["epoch"]), int(sd["iteration"])
        st.epoch_length, st.max_epochs, st.seed = sd["epoch_length"], sd["max_epochs"], sd.get("seed")
        st.epoch_iteration = int(sd.get("epoch_iteration",
                                        st.iteration - (st.epoch - 1) * (st.epoch_length or 0)
                                        if st.epoch else 0))
        self._data_epoch = int(sd.get("data_epoch", max(st.epoch - 1, 0)))
        self._data_pos = int(sd.get("data_pos", st.epoch_iteration))
        if "rng" in sd:
            _set_rng_state(sd["rng"])

    # running --------------------------------------------------------------------------------
    def run_sync(self, data: Any, max_epochs: int | None = None, epoch_length: int | None = None,
                 seed: int | None = None) -> State:
        """``run`` for plain scripts: runs its own event loop (uvloop when installed)."""
        from .runtime import run

        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return run(self.run(data, max_epochs=max_epochs, epoch_length=epoch_length, seed=seed))
        raise RuntimeError("run_sync() called inside a running event loop; use 'await engine.run(...)'")

    async def run(self, data: Any, max_epochs: int | None = None, epoch_length: int | None = None,
                  seed: int | None = None) -> State:
        """Run (or resume) over ``data`` and return the State.

        ``data``: an AsyncLoader, any iterable (list, torch DataLoader) or async iterable.
        Cancelling the awaiting task stops after the step in flight, waits for pending writes,
        leaves no thread behind and re-raises CancelledError.
        """
        if self._running:
            raise RuntimeError("this engine is already running")
        self._prepare(data, max_epochs, epoch_length, seed)
        self._loop, self._loop_thread = asyncio.get_running_loop(), threading.get_ident()
        self._running, self._cancel, self._write_error = True, False, None
        worker = self._worker or ComputeWorker(device=self.device)
        own = self._worker is None
        worker.start()
        try:
            await self._await_driver(worker.submit(self._drive, data))
        finally:
            write_error = await self._finish(own, worker)
        if write_error is not None:  # the run itself succeeded, but a pending write did not
            raise write_error
        return self.state

    def _prepare(self, data: Any, max_epochs: int | None, epoch_length: int | None,
                 seed: int | None) -> None:
        for name, value in (("max_epochs", max_epochs), ("epoch_length", epoch_length)):
            if value is not None:
                check_int(name, value)
        if data is None:
            raise ValueError("data must be an iterable, an async iterable or an AsyncLoader, got None")
        if not (hasattr(data, "__iter__") or hasattr(data, "__aiter__")):
            raise TypeError(f"data must be iterable, got {type(data).__name__}")
        n_batches = sized_len(data)
        if n_batches == 0:
            raise ValueError("data source is empty: it has no batches to train on")
        st = self.state
        if max_epochs is not None and st.max_epochs is not None and max_epochs > st.epoch:
            st.max_epochs = max_epochs  # a finished run asked for more epochs continues (resume)
        if st.max_epochs is None or self._is_done():
            self.state = st = State(max_epochs=max_epochs or 1, seed=seed, metrics={})
            self._data_epoch = self._data_pos = 0
            if seed is not None:
                _seed_everything(seed)
        elif max_epochs is not None:
            if max_epochs < st.epoch:
                raise ValueError(f"max_epochs={max_epochs} is less than the current epoch {st.epoch}")
            st.max_epochs = max_epochs
        if epoch_length is not None:
            st.epoch_length = epoch_length
        elif st.epoch_length is None:
            st.epoch_length = n_batches
        st.dataloader = data
        self.should_terminate = self.should_terminate_single_epoch = False

    def _is_done(self) -> bool:
        st = self.state
        return st.max_epochs is not None and st.epoch >= st.max_epochs and st.epoch_iteration == 0

    async def _await_driver(self, fut: cf.Future[Any]) -> None:
        try:
            await await_future(fut, on_cancel=self._request_cancel)
        except asyncio.CancelledError:
            # a real error the driver hit while stopping wins over the cancellation it caused
            if fut.done() and not fut.cancelled():
                exc = fut.exception()
                if exc is not None and not isinstance(exc, _Cancelled):
                    raise exc from None
            raise

    def _request_cancel(self) -> None:
        self._cancel = True
        if self._crossing is not None:
            self._crossing.cancel()
        if self._feed is not None:
            self._feed.interrupt()

    async def _finish(self, own_worker: bool, worker: ComputeWorker) -> BaseException | None:
        """Close the data stream, wait for pending writes, stop the worker: also on error/cancel.
        Returns the first exception a pending write raised, if any."""
        try:
            if self._feed is not None:
                await self._feed.aclose()
            while self._pending:
                pending = [asyncio.wrap_future(f) if isinstance(f, cf.Future) else f
                           for f in list(self._pending)]
                await asyncio.shield(asyncio.gather(*pending, return_exceptions=True))
            error, self._write_error = self._write_error, None
            return error
        finally:
            self._feed = None
            self._running = False
            for observers in list(self._observers.values()):
                for obs in observers:
                    obs.close()
            if own_worker:
                await worker.astop()

    # the driver (compute thread) -------------------------------------------------------------
    def _drive(self, data: Any) -> None:
        st = self.state
        self._feed = _Feed(self, data)
        start = time.perf_counter()
        try:
            try:
                self._fire(Events.STARTED)
                self._check_terminate()
                while not self._is_done():
                    self._run_epoch()
            except _Terminate:
                self._fire(Events.TERMINATE)
            st.times["COMPLETED"] = time.perf_counter() - start
            if self.should_terminate != "skip_completed":
                self._fire(Events.COMPLETED)
        except _Cancelled:
            raise
        except Exception as exc:
            if not self._entries.get(Events.EXCEPTION_RAISED):
                raise
            self._fire(Events.EXCEPTION_RAISED, exc)

    def _run_epoch(self) -> None:
        st = self.state
        if st.epoch_iteration == 0:
            st.epoch += 1
        start = time.perf_counter()
        self._fire(Events.EPOCH_STARTED)
        self._check_terminate()
        try:
            self._iterate()
        except _TerminateEpoch:
            self._fire(Events.TERMINATE_SINGLE_EPOCH)
            self._feed.restart()
        st.times["EPOCH_COMPLETED"] = time.perf_counter() - start
        skip = self.should_terminate_single_epoch == "skip_epoch_completed"
        self.should_terminate_single_epoch = False
        if st.epoch_length is None:
            st.epoch_length = st.epoch_iteration
        self._epoch_done = True
        try:
            if not skip:
                self._fire(Events.EPOCH_COMPLETED)
        finally:
            st.epoch_iteration = 0
            self._epoch_done = False
        self._check_terminate()

    def _iterate(self) -> None:
        st, fire, check, feed = self.state, self._fire, self._check, self._feed
        restarted = False
        while st.epoch_length is None or st.epoch_iteration < st.epoch_length:
            if self._cancel:
                raise _Cancelled
            st.batch = None
            if not restarted:
                fire(Events.GET_BATCH_STARTED)
                check()
            try:
                batch = feed.next()
            except _StreamEnd:
                if st.epoch_length is None and st.epoch_iteration > 0:
                    return  # an unsized source defines the epoch length by running out
                if restarted or (st.epoch_length is None and st.iteration == 0):
                    raise ValueError("data source is empty: it yielded no batches") from None
                fire(Events.DATALOADER_STOP_ITERATION)
                check()
                feed.restart()
                restarted = True
                continue
            restarted = False
            st.batch, st.output = batch, None
            fire(Events.GET_BATCH_COMPLETED)
            check()
            st.epoch_iteration += 1
            st.iteration += 1
            fire(Events.ITERATION_STARTED)
            check()
            st.output = self._step(batch)
            fire(Events.ITERATION_COMPLETED)
            check()

    def _step(self, batch: Any) -> Any:
        if self.device is not None:
            batch = move_batch(batch, self.device)
        if self._async_step:
            return self._cross(self._process_function(self, batch))
        return self._process_function(self, batch)

    def _check(self) -> None:
        if self.should_terminate:
            raise _Terminate
        if self.should_terminate_single_epoch:
            raise _TerminateEpoch

    def _check_terminate(self) -> None:
        if self.should_terminate:
            raise _Terminate

    # firing ---------------------------------------------------------------------------------
    def _fire(self, event: EventEnum, *args: Any) -> None:
        """Fire on the compute thread: compute hooks inline, loop handlers in one crossing."""
        self.last_event_name = event
        entries = self._entries.get(event)
        if entries is None and not self._observers:
            return
        if self._cancel:
            raise _Cancelled
        count = self._count(event)
        due = self._due(entries, args, count)
        if due:
            if any(e.is_async for e in due):
                self._cross(_dispatch(due, self, args))
            else:
                self._call_on_loop(_run_sync_handlers, due, self, args)
        self._notify(event, count)

    def _due(self, entries: list[Any] | None, args: tuple, count: int) -> list[Any]:
        """Run due compute hooks now; return the due loop handlers in run order."""
        if not entries:
            return []
        due = []
        for e in entries:
            if e.filter is None or e.filter(self, count):
                if e.on_compute:
                    e.handler(self, *args, *e.args, **e.kwargs)
                else:
                    due.append(e)
        return due

    def _count(self, event: EventEnum) -> int:
        """The count filters see: the iteration or epoch for built-in events (as Ignite), else
        how many times this event has fired (this firing included). Call once per firing."""
        if event in _ITERATION_COUNTED:
            return self.state.iteration
        if event in _EPOCH_COUNTED:
            return self.state.epoch
        n = self._event_counts.get(event, 0) + 1
        self._event_counts[event] = n
        return n

    def _on_loop_thread(self) -> bool:
        return self._loop_thread is None or threading.get_ident() == self._loop_thread

    def _cross(self, coro: Any) -> Any:
        """Run ``coro`` on the loop and block this thread for its result."""
        fut = asyncio.run_coroutine_threadsafe(coro, self._loop)
        self._crossing = fut
        if self._cancel:
            fut.cancel()
        try:
            return fut.result()
        except cf.CancelledError:
            raise _Cancelled from None
        finally:
            self._crossing = None

    def _call_on_loop(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run sync ``fn`` on the loop and wait: a lock hand-off, lighter than a Task."""
        box: list[Any] = []
        lock = self._rendezvous

        def call() -> None:
            try:
                box.append((True, fn(*args)))
            except BaseException as exc:  # re-raised on the compute thread, type and traceback kept
                box.append((False, exc))
            finally:
                lock.release()

        self._loop.call_soon_threadsafe(call)
        lock.acquire()
        ok, value = box[0]
        if ok:
            return value
        raise value

    def _notify(self, event: EventEnum, count: int) -> None:
        observers = self._observers.get(event)
        if not observers:
            return
        wanted = [o for o in observers if o.wants(self, event, count)]
        if not wanted:
            return
        snap = Snapshot(event.name, self.state.epoch, self.state.iteration,
                        _scalars(self.state.output), _plain(self.state.metrics), time.time())
        for obs in wanted:
            if self._on_loop_thread():
                obs.push(snap)
            else:
                self._loop.call_soon_threadsafe(obs.push, snap)


class _Feed:
    """Where the driver gets batches: a sync iterator read on the compute thread, or an
    AsyncLoader stream filled on the loop. Tracks the data epoch and position for resume."""

    def __init__(self, engine: Engine, data: Any) -> None:
        self.engine = engine
        if not hasattr(data, "_open_stream") and hasattr(data, "__aiter__"):
            data = AsyncLoader.wrap(data)
        self.source = data
        self.stream: Any = None
        self.it: Any = None
        self._open()

    def _open(self) -> None:
        eng = self.engine
        if hasattr(self.source, "_open_stream"):
            self.stream = eng._cross(self.source._open_stream(eng._data_epoch, eng._data_pos))
            return
        sampler = getattr(self.source, "sampler", None)
        for target in (self.source, sampler):
            if hasattr(target, "set_epoch"):
                target.set_epoch(eng._data_epoch)
                break
        self.it = iter(self.source)
        for _ in range(eng._data_pos):  # an opaque iterable can only be skipped by reading it
            next(self.it)

    def next(self) -> Any:
        try:
            batch = self.stream.next_blocking() if self.stream is not None else next(self.it)
        except StopIteration:
            raise _StreamEnd from None
        except StreamClosed:
            if self.engine._cancel:
                raise _Cancelled from None
            raise
        self.engine._data_pos += 1
        return batch

    def restart(self) -> None:
        """Start the next pass over the data (the next data epoch, from its first batch)."""
        old, self.stream = self.stream, None
        if old is not None:
            self.engine._cross(old.aclose())
        self.engine._data_epoch += 1
        self.engine._data_pos = 0
        self._open()

    def interrupt(self) -> None:
        """Called on the loop at cancellation: wake a driver waiting for a batch."""
        if self.stream is not None:
            self.stream.interrupt()

    async def aclose(self) -> None:
        if self.stream is not None:
            await self.stream.aclose()


class _Observer:
    """A bounded, drop-oldest queue of Snapshots read with ``async for``."""

    def __init__(self, maxsize: int) -> None:
        self.queue: deque[Snapshot] = deque(maxlen=maxsize)
        self.filters: dict[EventEnum, Any] = {}
        self._event = asyncio.Event()
        self._closed = False

    def wants(self, engine: Engine, event: EventEnum, count: int) -> bool:
        flt = self.filters.get(event)
        return flt is None or flt(engine, count)

    def push(self, snap: Snapshot) -> None:
        self.queue.append(snap)
        self._event.set()

    def close(self) -> None:
        self._closed = True
        self._event.set()

    def __aiter__(self) -> _Observer:
        return self

    async def __anext__(self) -> Snapshot:
        while not self.queue:
            if self._closed:
                self._closed = False  # the next run of the engine can be observed again
                raise StopAsyncIteration
            self._event.clear()
            await self._event.wait()
        return self.queue.popleft()


async def _dispatch(entries: list[Any], engine: Engine, args: tuple) -> None:
    for e in entries:
        result = e.handler(engine, *args, *e.args, **e.kwargs)
        if e.is_async or inspect.isawaitable(result):
            await result


def _run_sync_handlers(entries: list[Any], engine: Engine, args: tuple) -> None:
    for e in entries:
        e.handler(engine, *args, *e.args, **e.kwargs)


def _event_of(event: Any) -> set[EventEnum]:
    return {ev for ev, _ in _flatten(event)}


def _scalars(output: Any) -> dict[str, float]:
    """Numbers in a step output, for observers: a number, a 0-d tensor, or a dict of them."""
    items = output.items() if isinstance(output, dict) else [("output", output)]
    return {str(key): number for key, value in items if (number := as_number(value)) is not None}


def _plain(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: number_or_value(v) for k, v in metrics.items()}


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _rng_state() -> dict[str, Any]:
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    npst = state["numpy"]
    np.random.set_state((npst["kind"], npst["keys"].numpy().astype(np.uint32), npst["pos"],
                         npst["has_gauss"], npst["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])

