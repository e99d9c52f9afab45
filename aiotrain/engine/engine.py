"""Engine: Ignite's Engine API over aiotrain's driver (compute thread) and loop bridge.

Sync code runs on the compute thread, async code on the loop: the process function and every
sync handler run inline on the engine's ComputeWorker thread in priority order, as in Ignite;
``async def`` handlers and process functions are awaited on the loop. ``run`` carries the
caller's grad mode, inference mode and autocast to wherever the engine's code runs.

Deviation from Ignite, on purpose: ``run`` on an engine whose state is part way resumes from that
exact iteration, with the same data order (Ignite restarts the data iterator).
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import contextlib
import inspect
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Mapping
from typing import Any

import torch

from ..data.loader import sized_len
from ..events import (
    EventBus,
    EventKey,
    Events,
    RemovableHandle,
    check_signature,
    resolve_events,
    resolve_key,
)
from ..runtime import ComputeWorker, await_future
from ..values import check_int
from .bridge import (
    Cancelled,
    LoopBridge,
    acall_handlers,
    call_handlers,
    current_bridge,
    note_run_created,
)
from .driver import Driver
from .feed import AsyncSource, Feed, NoData
from .modes import TorchModes
from .observe import Observer, Snapshot, plain, scalars
from .rng import rng_state, seed_everything, set_rng_state
from .state import State

__all__ = ["Engine"]


class Engine:
    """Runs ``process_function(engine, batch)`` over data, firing Ignite's events.

    ``process_function`` may be sync (runs on the engine's compute thread) or ``async def``
    (awaited on the loop, for evaluators that await I/O). ``device`` gives the compute thread a
    CUDA stream and moves batches there. ``worker`` shares a ComputeWorker between engines run
    one after the other; by default each run starts its own and joins it when it ends.
    """

    interrupt_resume_enabled = True  # Ignite's switch; interrupt() always resumes here
    # the keys every state_dict has, and the groups of which it has one (Ignite's names)
    _state_dict_all_req_keys: tuple[str, ...] = ("epoch_length", "iteration")
    _state_dict_one_of_opt_keys: tuple[tuple[str, ...], ...] = (("max_epochs", "max_iters"),)

    def __init__(self, process_function: Callable[..., Any], *, device: Any = None,
                 worker: ComputeWorker | None = None) -> None:
        if process_function is None or not callable(process_function):
            raise ValueError("Engine must be given a processing function in order to run: "
                             f"got {process_function!r}")
        check_signature(process_function, "process_function", None, None)
        self.logger = logging.getLogger(f"{__name__}.{type(self).__name__}")
        self._process_function = process_function
        self._async_step = inspect.iscoroutinefunction(process_function)
        self.device = torch.device(device) if device is not None else None
        self._worker = worker
        self._bus = EventBus()
        self.state = State()
        self.should_terminate: bool | str = False
        self.should_terminate_single_epoch: bool | str = False
        self.should_interrupt = False
        self.last_event_name: EventKey | None = None  # the event being (or last) fired
        self._state_dict_user_keys: list[str] = []
        self._event_counts: dict[EventKey, int] = {}
        self._observers: dict[EventKey, list[Observer]] = {}
        self._pending: set[Any] = set()
        self._write_error: BaseException | None = None
        self._running = False
        self._bridge: LoopBridge | None = None
        self._feed: Feed | None = None
        self._driver: Driver | None = None
        self._data_epoch = 0
        self._data_pos = 0
        self._owed: list[Any] = []  # ITERATION_COMPLETED handlers a cancel left unrun
        self._continuing = False  # the last run was interrupted: the next one continues it
        self._held: Any = None  # the interrupted run's data iterator (a sync source's)
        self._epoch_done = False  # inside EPOCH_COMPLETED: a state_dict now is a finished epoch
        self._epoch_open = False  # state.epoch already counts the epoch in progress

    # handlers -------------------------------------------------------------------------------
    def add_event_handler(self, event: Any, handler: Callable[..., Any], *args: Any,
                          priority: int = 0, **kwargs: Any) -> RemovableHandle:
        """Attach ``handler(engine, *args, **kwargs)`` (or ``handler(*args, **kwargs)``) to
        ``event``; sync (compute thread) or ``async def`` (loop)."""
        keys = {key for key, _ in resolve_events(event)}
        lead = (Exception(),) if keys == {Events.EXCEPTION_RAISED} else ()
        return self._bus.add(event, handler, args, kwargs, priority=priority, event_args=lead,
                             engine=self)

    def on(self, event: Any, handler: Any = None, *args: Any, priority: int = 0,
           **kwargs: Any) -> Any:
        """Decorator (``@engine.on(Events.X)``) or call (``engine.on(Events.X, fn)``)."""
        if handler is not None and not callable(handler):
            args, handler = (handler, *args), None
        if handler is None:
            def decorator(fn: Callable[..., Any]) -> Callable[..., Any]:
                self.add_event_handler(event, fn, *args, priority=priority, **kwargs)
                return fn
            return decorator
        return self.add_event_handler(event, handler, *args, priority=priority, **kwargs)

    def remove_event_handler(self, handler: Callable[..., Any], event: Any) -> None:
        """Detach ``handler`` from ``event`` (a filtered event names its base event)."""
        self._bus.remove(handler, event)

    def has_event_handler(self, handler: Callable[..., Any], event: Any = None) -> bool:
        """True when ``handler`` is attached to ``event`` (or to any event)."""
        return self._bus.has(handler, event)

    def add_compute_hook(self, event: Any, fn: Callable[..., Any], *args: Any,
                         priority: int = 0) -> RemovableHandle:
        """Run ``fn(engine, *args)`` when ``event`` fires, before the event's ordinary handlers
        whatever their priority: metric updates, so every handler sees this event's values."""
        return self._bus.add(event, fn, args, priority=priority, first=True, engine=self)

    def register_events(self, *events: Any, event_to_attr: dict[Any, str] | None = None) -> None:
        """Allow custom events (``engine.register_events(*MyEvents)``, or strings).
        ``event_to_attr`` names the State attribute each one's filters count."""
        if event_to_attr is not None and not isinstance(event_to_attr, dict):
            raise ValueError(f"event_to_attr must be a dict, got {type(event_to_attr).__name__}")
        self._bus.register_events(*events)
        for ev, attr in (event_to_attr or {}).items():
            State.event_to_attr[resolve_key(ev)] = attr
        self.state.update_attrs()

    def has_registered_events(self, event: Any) -> bool:
        """True when ``event`` may be fired and handled on this engine."""
        return event in self._bus.allowed

    @property
    def _allowed_events(self) -> Any:
        # Ignite's handlers (its tqdm ProgressBar) check membership here before attaching
        return self._bus.allowed

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

    def interrupt(self) -> None:
        """Return from ``run`` after the current iteration (INTERRUPT fires); the next ``run``
        continues where this one stopped, without firing STARTED again."""
        if not self.interrupt_resume_enabled:
            raise RuntimeError("Engine 'interrupt/resume' feature is disabled. Please, set "
                               "Engine.interrupt_resume_enabled=True to enable it")
        self.should_interrupt = True

    def set_data(self, data: Iterable[Any]) -> None:
        """Read ``data`` from now on (from its first batch), also in the middle of a run."""
        if not isinstance(data, Iterable | AsyncSource):
            raise TypeError(f"data must be iterable, got {type(data).__name__}")
        self.state.dataloader = data
        if self._feed is not None:
            self._feed.replace(data)

    def fire_event(self, event: Any, *args: Any) -> None:
        """Fire ``event`` from sync code: on the compute thread sync handlers run inline and
        async ones on the loop while the thread waits; elsewhere only sync handlers can run."""
        key = resolve_key(event)
        if key not in self._bus.allowed:
            raise ValueError(f"event {event!r} is not registered; call engine.register_events first")
        bridge = current_bridge()
        if bridge is not None and bridge is self._bridge and self._driver is not None:
            self._driver.fire(key, *args)
            return
        count = self._count(key)
        due = self._due(key, count)
        if due:
            call_handlers(due, self, args, None if bridge is None or bridge.on_loop() else bridge)
        if self._observers:
            self._notify(key, count)

    async def afire_event(self, event: Any, *args: Any) -> None:
        """Fire ``event`` from a coroutine on the loop; awaits async handlers."""
        key = resolve_key(event)
        if key not in self._bus.allowed:
            raise ValueError(f"event {event!r} is not registered; call engine.register_events first")
        count = self._count(key)
        await acall_handlers(self._due(key, count), self, args)
        if self._observers:
            self._notify(key, count)

    def _fire_event(self, event: Any, *args: Any) -> None:
        """Ignite's override point: a subclass that defines it sees every event the driver fires
        (and calls ``super()._fire_event`` to run the handlers)."""
        if self._driver is not None:
            self._driver.fire_now(resolve_key(event), *args)
        else:
            self.fire_event(event, *args)

    def _due(self, key: EventKey, count: int) -> list[Any]:
        self.last_event_name = key
        return [e for e in self._bus.entries.get(key, ()) if e.filter is None or e.filter(self, count)]

    def _count(self, key: EventKey) -> int:
        attr = State.event_to_attr.get(key)
        if attr is not None:
            return getattr(self.state, attr)
        n = self._event_counts.get(key, 0) + 1
        self._event_counts[key] = n
        return n

    # observers ------------------------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def observe(self, *events: Any, maxsize: int = 256) -> AsyncIterator[AsyncIterator[Snapshot]]:
        """``async with engine.observe(Events.X) as stream: async for snap in stream`` — one
        Snapshot per event. The queue keeps the newest ``maxsize`` snapshots and drops the oldest,
        so a slow observer never slows training. The stream ends when the engine's run ends."""
        obs = Observer(maxsize)
        keys = set()
        for ev in events or (Events.ITERATION_COMPLETED,):
            for key, flt in resolve_events(ev):
                obs.filters[key] = flt
                keys.add(key)
                self._observers.setdefault(key, []).append(obs)
        self._bus.touch()
        try:
            yield obs
        finally:
            for key in keys:
                self._observers[key].remove(obs)
                if not self._observers[key]:
                    del self._observers[key]
            self._bus.touch()

    def _notify(self, event: EventKey, count: int) -> None:
        observers = self._observers.get(event)
        if not observers:
            return
        wanted = [o for o in observers if o.wants(self, event, count)]
        if not wanted:
            return
        snap = Snapshot(getattr(event, "name", str(event)), self.state.epoch, self.state.iteration,
                        scalars(self.state.output), plain(self.state.metrics), time.time())
        bridge = self._bridge
        for obs in wanted:
            if bridge is None:
                obs.push(snap)
            else:
                bridge.notify(obs.push, snap)

    # state ----------------------------------------------------------------------------------
    @property
    def state_dict_user_keys(self) -> list[str]:
        """State attributes saved by ``state_dict`` besides the run's position (Ignite's list)."""
        return self._state_dict_user_keys

    def state_dict(self) -> OrderedDict[str, Any]:
        """Ignite's keys (iteration, epoch_length, max_epochs or max_iters, user keys) and
        ``resume``: the exact position, data order and RNG states, for bit-exact resume."""
        st = self.state
        term = "max_iters" if st.max_iters is not None else "max_epochs"
        sd: OrderedDict[str, Any] = OrderedDict(
            [("epoch_length", st.epoch_length), ("iteration", st.iteration),
             (term, getattr(st, term))])
        for key in self._state_dict_user_keys:
            sd[key] = getattr(st, key)
        feed = self._feed
        sd["resume"] = {
            "epoch": st.epoch, "epoch_iteration": 0 if self._epoch_done else st.epoch_iteration,
            "seed": st.seed, "data_epoch": feed.epoch if feed else self._data_epoch,
            "data_pos": feed.pos if feed else self._data_pos, "rng": rng_state()}
        return sd

    def load_state_dict(self, sd: Mapping[str, Any]) -> None:
        """Restore a ``state_dict`` (also one of Ignite's, by epoch or by iteration): the next
        ``run`` resumes from that exact iteration. Errors use Ignite's wording."""
        if not isinstance(sd, Mapping):
            raise TypeError(f"Argument state_dict should be a dictionary, but given {type(sd)}")
        if self._running:
            raise RuntimeError("cannot load a state_dict while the engine is running")
        resume = sd.get("resume")
        if resume is None and "iteration" in sd and "epoch" in sd:
            raise ValueError("State dictionary should contain only one of 'iteration' or 'epoch' "
                             f"keys. Found both: iteration={sd['iteration']}, epoch={sd['epoch']}")
        for key in ("epoch_length", "iteration" if "epoch" not in sd else "epoch"):
            if key not in sd:
                raise ValueError(f"Required state attribute '{key}' is absent in provided "
                                 f"state_dict {sorted(sd)}")
        if ("max_epochs" in sd) == ("max_iters" in sd):
            raise ValueError("state_dict should contain exactly one of "
                             f"'{('max_epochs', 'max_iters')}': it has {sorted(sd)}")
        for key in self._state_dict_user_keys:
            if key not in sd:
                raise ValueError(f"Required user state attribute '{key}' is absent in provided "
                                 f"state_dict {sorted(sd)}")
        length = sd["epoch_length"]
        progress = sd.get("iteration", sd.get("epoch"))
        if progress and (length is None or length <= 0):
            raise ValueError("epoch_length must be a positive integer to calculate missing "
                             f"'iteration' or 'epoch' key. Input state_dict: {dict(sd)}")
        iteration = int(sd["iteration"]) if "iteration" in sd else int(sd["epoch"]) * (length or 0)
        if resume is not None:
            epoch, epoch_iteration = int(resume["epoch"]), int(resume["epoch_iteration"])
        else:  # Ignite's: epoch counts finished epochs, the next run starts the partial one
            epoch, epoch_iteration = divmod(iteration, length) if length else (0, 0)
        for name, progress_name, reached in (("max_epochs", "epoch", epoch),
                                             ("max_iters", "iteration", iteration)):
            value = sd.get(name)
            if value is not None and value < reached:
                raise ValueError(f"Argument {name} should be greater than or equal to the start "
                                 f"{progress_name} defined in the state: {value} vs {reached}")
        st = self.state
        for key in self._state_dict_user_keys:
            setattr(st, key, sd[key])
        st.iteration, st.epoch, st.epoch_iteration, st.epoch_length = \
            iteration, epoch, epoch_iteration, length
        st.max_epochs, st.max_iters = sd.get("max_epochs"), sd.get("max_iters")
        self._continuing, self._owed, self._held = False, [], None
        self._epoch_open = resume is not None and epoch_iteration > 0
        if resume is not None:
            st.seed = resume.get("seed")
            self._data_epoch, self._data_pos = int(resume["data_epoch"]), int(resume["data_pos"])
            if "rng" in resume:
                set_rng_state(resume["rng"])
        else:
            self._data_epoch, self._data_pos = epoch, epoch_iteration

    # running --------------------------------------------------------------------------------
    def run_sync(self, data: Any = None, max_epochs: int | None = None,
                 max_iters: int | None = None, epoch_length: int | None = None,
                 seed: int | None = None) -> State:
        """``run`` for sync code. In a sync handler of a running engine (its compute thread) it
        runs this engine to completion while the loop keeps serving data, and returns its State;
        in a plain script it runs its own event loop (uvloop when installed)."""
        coro = self._arun(data, max_epochs, max_iters, epoch_length, seed, TorchModes.capture())
        bridge = current_bridge()
        if bridge is not None:
            return bridge.cross(coro)
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            from ..runtime import run

            return run(coro)
        coro.close()
        raise RuntimeError("run_sync() called inside a running event loop; use 'await engine.run(...)'")

    def run(self, data: Any = None, max_epochs: int | None = None, max_iters: int | None = None,
            epoch_length: int | None = None, seed: int | None = None) -> Coroutine[Any, Any, State]:
        """Run (or resume) over ``data``: ``await engine.run(...)`` returns the State.

        ``data``: an AsyncLoader, any iterable (list, torch DataLoader) or async iterable; None
        with ``epoch_length`` runs steps on ``batch=None`` (or on what ``set_data`` gives).
        The caller's grad mode, inference mode and autocast apply to the whole run. Cancelling
        the awaiting task stops after the step in flight, waits for pending writes, leaves no
        thread behind and re-raises CancelledError.
        """
        coro = self._arun(data, max_epochs, max_iters, epoch_length, seed, TorchModes.capture())
        note_run_created(coro)
        return coro

    async def _arun(self, data: Any, max_epochs: int | None, max_iters: int | None,
                    epoch_length: int | None, seed: int | None, modes: TorchModes) -> State:
        if self._running:
            raise RuntimeError("this engine is already running")
        self._prepare(data, max_epochs, max_iters, epoch_length, seed)
        st = self.state
        bridge = LoopBridge(asyncio.get_running_loop(), modes)
        source = st.dataloader if st.dataloader is not None else NoData(st.epoch_length or 0)
        held, self._held = (self._held if self._continuing else None), None
        feed = Feed(source, bridge.cross, self._data_epoch, self._data_pos, lambda: bridge.cancelled,
                    held)
        driver = Driver(self, bridge, feed, watched=type(self)._fire_event is not Engine._fire_event)
        self._bridge, self._feed, self._driver = bridge, feed, driver
        self._running, self._write_error = True, None
        worker = self._worker or ComputeWorker(device=self.device)
        own = self._worker is None
        worker.start()
        try:
            await self._await_driver(worker.submit(self._drive, driver, modes))
        finally:
            write_error = await self._finish(own, worker)
        if write_error is not None:  # the run itself succeeded, but a pending write did not
            raise write_error
        return self.state

    def _drive(self, driver: Driver, modes: TorchModes) -> None:
        try:
            with modes.applied():
                driver.drive()
        finally:
            self._data_epoch, self._data_pos = driver.feed.epoch, driver.feed.pos
            self._held = driver.feed.it if self._continuing else None

    @property
    def _dataloader_iter(self) -> Any:
        # Ignite's name: the data iterator a run is reading, or that an interrupted run left to
        # continue (None otherwise; a streaming source is reopened at its position instead)
        return self._feed.it if self._feed is not None else self._held

    def _prepare(self, data: Any, max_epochs: int | None, max_iters: int | None,
                 epoch_length: int | None, seed: int | None) -> None:
        for name, value in (("max_epochs", max_epochs), ("max_iters", max_iters),
                            ("epoch_length", epoch_length)):
            if value is not None:
                check_int(name, value)
        if max_epochs is not None and max_iters is not None:
            raise ValueError("Arguments max_iters and max_epochs are mutually exclusive. "
                             "Please provide only max_epochs or max_iters.")
        if data is not None and not isinstance(data, Iterable | AsyncSource):
            raise TypeError(f"Argument data should be iterable, got {type(data).__name__}")
        st = self.state
        if max_iters is not None and st.max_epochs is not None:
            raise ValueError("To switch from max_epochs to max_iters mode during resume, you must "
                             "first reset by setting 'engine.state.max_epochs = None' before "
                             "calling run().")
        if max_epochs is not None and st.max_iters is not None:
            raise ValueError("To switch from max_iters to max_epochs mode during resume, you must "
                             "first reset by setting 'engine.state.max_iters = None' before "
                             "calling run().")
        for name, value, progress in (("max_epochs", max_epochs, st.epoch),
                                      ("max_iters", max_iters, st.iteration)):
            if value is not None and getattr(st, name) is not None:
                if value < progress:
                    raise ValueError(f"Argument {name} should be greater than or equal to the start "
                                     f"{name[4:-1]} defined in the state: {value} vs {progress}. "
                                     f"Please, set engine.state.{name} = None before calling "
                                     "engine.run() in order to restart the training from the beginning.")
                setattr(st, name, value)  # a finished run asked for more continues (resume)
        n_batches = sized_len(data) if data is not None else None
        if n_batches == 0:
            raise ValueError("data source is empty: Input data has zero size. Please provide "
                             "non-empty data")
        if (st.max_epochs is None and st.max_iters is None) or (self._finished() and not self._continuing):
            if data is None and epoch_length is None and st.epoch_length is None:
                raise ValueError("epoch_length should be provided if data is None")
            st.iteration = st.epoch = st.epoch_iteration = 0
            st.max_iters = max_iters
            st.max_epochs = None if max_iters is not None else (max_epochs or 1)
            st.epoch_length = epoch_length or n_batches or st.epoch_length
            st.seed = seed
            self._data_epoch = self._data_pos = 0
            self._owed, self._continuing, self._epoch_open = [], False, False
            if seed is not None:
                seed_everything(seed)
        else:
            if epoch_length is not None and st.epoch_length is not None and epoch_length != st.epoch_length:
                raise ValueError("Argument epoch_length should be same as in the state, but given "
                                 f"{epoch_length} vs {st.epoch_length}")
            st.epoch_length = st.epoch_length or epoch_length or n_batches
            if data is None and st.epoch_length is None and st.dataloader is None:
                raise ValueError("epoch_length should be provided if data is None")
        if st.max_iters is not None and st.epoch_length:
            st.max_epochs = None
        if data is not None:
            st.dataloader = data
        self.should_terminate = self.should_terminate_single_epoch = self.should_interrupt = False

    def _finished(self) -> bool:
        st = self.state
        if st.max_iters is not None:
            return st.iteration >= st.max_iters
        return (st.max_epochs is not None and st.epoch >= st.max_epochs
                and st.epoch_iteration == 0)

    async def _await_driver(self, fut: cf.Future[Any]) -> None:
        try:
            await await_future(fut, on_cancel=self._request_cancel)
        except asyncio.CancelledError:
            # a real error the driver hit while stopping wins over the cancellation it caused
            if fut.done() and not fut.cancelled():
                exc = fut.exception()
                if exc is not None and not isinstance(exc, Cancelled):
                    raise exc from None
            raise

    def _request_cancel(self) -> None:
        if self._bridge is not None:
            self._bridge.cancel()
        if self._feed is not None:
            self._feed.interrupt()

    async def _finish(self, own_worker: bool, worker: ComputeWorker) -> BaseException | None:
        """Close the data stream, wait for pending writes, stop the worker: also on error/cancel.
        Returns the first exception a pending write raised, if any."""
        try:
            if self._feed is not None:
                await self._feed.aclose()
            cancelled: asyncio.CancelledError | None = None
            while self._pending:
                pending = [asyncio.wrap_future(f) if isinstance(f, cf.Future) else f
                           for f in list(self._pending)]
                gathered = asyncio.gather(*pending, return_exceptions=True)
                while not gathered.done():
                    try:
                        await asyncio.shield(gathered)
                    except asyncio.CancelledError as exc:
                        # a write in flight cannot be stopped: return once it is durable
                        cancelled = exc
            error, self._write_error = self._write_error, None
            if cancelled is not None:
                raise cancelled
            return error
        finally:
            self._feed = self._bridge = self._driver = None
            self._running = False
            for observers in list(self._observers.values()):
                for obs in observers:
                    obs.close()
            if own_worker:
                await worker.astop()
