"""Engine: Ignite's Engine API, a facade over the run's parts (see docs/engine.md).

The facade keeps the API and what lasts between runs (State, the Cursor, the Emitter with the
handlers); each run hands the Cursor to a Driver on the engine's compute thread and takes it back
when the run is over. Sync code runs on the compute thread, async code on the loop: the process
function and every sync handler run inline on the engine's ComputeWorker thread in priority
order, as in Ignite; ``async def`` handlers and process functions are awaited on the loop.
``run`` carries the caller's grad mode, inference mode and autocast to wherever the engine's
code runs, and blocks from sync code as Ignite's does (a coroutine on an event loop).

Deviation from Ignite, on purpose: ``run`` on an engine whose state is part way resumes from that
exact iteration, with the same data order (Ignite restarts the data iterator).
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import contextlib
import logging
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Iterator, Mapping
from typing import Any, Protocol, TypeVar, cast, overload, runtime_checkable

import torch

from ..data.loader import sized_len
from ..events import (
    AllowedEvents,
    EventKey,
    Events,
    RemovableHandle,
    check_signature,
    resolve_events,
    resolve_key,
)
from ..runtime import ComputeWorker, await_future
from ..values import check_int
from .bridge import Cancelled, LoopBridge, current_bridge, note_run_created
from .cursor import Cursor
from .driver import Driver
from .emitter import Emitter
from .feed import AsyncSource, NoData
from .modes import TorchModes
from .observe import Observer, Snapshot
from .rng import rng_state, seed_everything, set_rng_state
from .state import State

__all__ = ["Attachable", "Engine"]

H = TypeVar("H", bound=Callable[..., object])


@runtime_checkable
class Attachable(Protocol):
    """What ``add_metric`` attaches: a Metric (aiotrain's or Ignite's)."""

    def attach(self, engine: Engine, name: str, /) -> object: ...


def _drive(driver: Driver, modes: TorchModes) -> None:
    """The compute thread's part of a run: the driver, under the caller's torch modes."""
    with modes.applied():
        driver.drive()


def _loop_running() -> bool:
    """True on a thread whose event loop is running (where a run must be awaited)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


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

    def __init__(self, process_function: Callable[..., Any], *,
                 device: torch.device | str | int | None = None,
                 worker: ComputeWorker | None = None) -> None:
        if process_function is None or not callable(process_function):
            raise ValueError("Engine must be given a processing function in order to run: "
                             f"got {process_function!r}")
        check_signature(process_function, "process_function", None, None)
        self.logger = logging.getLogger(f"{__name__}.{type(self).__name__}")
        self._process_function = process_function
        self.device = torch.device(device) if device is not None else None
        self._worker = worker
        self.state = State()
        self.should_terminate: bool | str = False
        self.should_terminate_single_epoch: bool | str = False
        self.should_interrupt = False
        self.last_event_name: EventKey | None = None  # the event being (or last) fired
        self._state_dict_user_keys: list[str] = []
        self._events = Emitter(self)  # handlers, event counts, observers
        self._pending: set[cf.Future[Any] | asyncio.Future[Any]] = set()
        self._write_error: BaseException | None = None
        self._running = False
        self._cursor = Cursor()  # between runs; a run's driver owns it and hands it back
        self._driver: Driver | None = None  # the run in progress

    # handlers -------------------------------------------------------------------------------
    def add_event_handler(self, event: object, handler: Callable[..., object], *args: object,
                          priority: int = 0, **kwargs: object) -> RemovableHandle:
        """Attach ``handler(engine, *args, **kwargs)`` (or ``handler(*args, **kwargs)``) to
        ``event``; sync (compute thread) or ``async def`` (loop)."""
        keys = {key for key, _ in resolve_events(event)}
        lead = (Exception(),) if keys == {Events.EXCEPTION_RAISED} else ()
        return self._events.bus.add(event, handler, args, kwargs, priority=priority,
                                    event_args=lead, engine=self)

    @overload
    def on(self, event: object, handler: None = None, *args: object, priority: int = 0,
           **kwargs: object) -> Callable[[H], H]: ...

    @overload
    def on(self, event: object, handler: Callable[..., object], *args: object, priority: int = 0,
           **kwargs: object) -> RemovableHandle: ...

    def on(self, event: object, handler: object = None, *args: object, priority: int = 0,
           **kwargs: object) -> Callable[[H], H] | RemovableHandle:
        """Decorator (``@engine.on(Events.X)``) or call (``engine.on(Events.X, fn)``)."""
        if handler is not None and not callable(handler):
            args, handler = (handler, *args), None
        if handler is None:
            def decorator(fn: H) -> H:
                self.add_event_handler(event, fn, *args, priority=priority, **kwargs)
                return fn
            return decorator
        assert callable(handler)  # narrowed above: a non-callable went into args
        return self.add_event_handler(event, handler, *args, priority=priority, **kwargs)

    def remove_event_handler(self, handler: Callable[..., object], event: object) -> None:
        """Detach ``handler`` from ``event`` (a filtered event names its base event)."""
        self._events.bus.remove(handler, event)

    def has_event_handler(self, handler: Callable[..., object], event: object = None) -> bool:
        """True when ``handler`` is attached to ``event`` (or to any event)."""
        return self._events.bus.has(handler, event)

    def add_compute_hook(self, event: object, fn: Callable[..., object], *args: object,
                         priority: int = 0) -> RemovableHandle:
        """Run ``fn(engine, *args)`` when ``event`` fires, before the event's ordinary handlers
        whatever their priority: metric updates, so every handler sees this event's values."""
        return self._events.bus.add(event, fn, args, priority=priority, first=True, engine=self)

    def register_events(self, *events: object,
                        event_to_attr: dict[Any, str] | None = None) -> None:
        """Allow custom events (``engine.register_events(*MyEvents)``, or strings).
        ``event_to_attr`` names the State attribute each one's filters count."""
        if event_to_attr is not None and not isinstance(event_to_attr, dict):
            raise ValueError(f"event_to_attr must be a dict, got {type(event_to_attr).__name__}")
        self._events.bus.register_events(*events)
        for ev, attr in (event_to_attr or {}).items():
            State.event_to_attr[resolve_key(ev)] = attr
        self.state.update_attrs()

    def has_registered_events(self, event: object) -> bool:
        """True when ``event`` may be fired and handled on this engine."""
        return event in self._events.bus.allowed

    @property
    def _allowed_events(self) -> AllowedEvents:
        # Ignite's handlers (its tqdm ProgressBar) check membership here before attaching
        return self._events.bus.allowed

    def add_metric(self, metric: Attachable | object, name: str) -> None:
        """Attach ``metric`` under ``name``: its value lands in ``state.metrics[name]``.
        aiotrain's and Ignite's metrics attach themselves; a torchmetrics ``Metric`` or
        ``MetricCollection`` is wrapped in :class:`aiotrain.metrics.TorchMetric`."""
        from ..metrics.adapter import as_metric

        as_metric(metric).attach(self, name)

    def add_metrics(self, metrics: Mapping[str, Attachable]) -> None:
        """Attach several metrics: ``{"acc": Accuracy(), ...}``."""
        for name, metric in metrics.items():
            self.add_metric(metric, name)

    def add_pending(self, fut: cf.Future[Any] | asyncio.Future[Any]) -> None:
        """Register work (a checkpoint write) that ``run`` must see finished before it returns."""
        self._pending.add(fut)
        fut.add_done_callback(self._settled)

    def _settled(self, fut: cf.Future[Any] | asyncio.Future[Any]) -> None:
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
        if self._driver is not None:
            self._driver.feed.replace(data)

    def fire_event(self, event: object, *args: object) -> None:
        """Fire ``event`` from sync code: on the compute thread sync handlers run inline and
        async ones on the loop while the thread waits; elsewhere only sync handlers can run."""
        key = self._allowed_key(event)
        bridge = current_bridge()
        driver = self._driver
        if driver is not None and bridge is driver.bridge:
            driver.fire(key, *args)
            return
        self._events.fire(None if bridge is None or bridge.on_loop() else bridge, key, *args)

    async def afire_event(self, event: object, *args: object) -> None:
        """Fire ``event`` from a coroutine on the loop; awaits async handlers."""
        await self._events.afire(self._allowed_key(event), args)

    def _allowed_key(self, event: object) -> EventKey:
        key = resolve_key(event)
        if key not in self._events.bus.allowed:
            raise ValueError(f"event {event!r} is not registered; call engine.register_events first")
        return key

    def _fire_event(self, event: object, *args: object) -> None:
        """Ignite's override point: a subclass that defines it sees every event the driver fires
        (and calls ``super()._fire_event`` to run the handlers)."""
        if self._driver is not None:
            self._driver.fire_now(resolve_key(event), *args)
        else:
            self.fire_event(event, *args)

    # observers ------------------------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def observe(self, *events: object,
                      maxsize: int = 256) -> AsyncIterator[AsyncIterator[Snapshot]]:
        """``async with engine.observe(Events.X) as stream: async for snap in stream`` — one
        Snapshot per event. The queue keeps the newest ``maxsize`` snapshots and drops the oldest,
        so a slow observer never slows training. The stream ends when the engine's run ends."""
        obs = Observer(maxsize)
        keys = self._events.watch(obs, events or (Events.ITERATION_COMPLETED,))
        try:
            yield obs
        finally:
            self._events.unwatch(obs, keys)

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
        cur = self._driver.position() if self._driver is not None else self._cursor
        sd["resume"] = {
            "epoch": st.epoch, "epoch_iteration": 0 if cur.epoch_done else st.epoch_iteration,
            "seed": st.seed, "data_epoch": cur.data_epoch, "data_pos": cur.data_pos,
            "rng": rng_state()}
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
        if resume is not None:
            st.seed = resume.get("seed")
            self._cursor = Cursor(int(resume["data_epoch"]), int(resume["data_pos"]),
                                  epoch_open=epoch_iteration > 0)
            if "rng" in resume:
                set_rng_state(resume["rng"])
        else:
            self._cursor = Cursor(epoch, epoch_iteration)

    # running --------------------------------------------------------------------------------
    def run_sync(self, data: object = None, max_epochs: int | None = None,
                 max_iters: int | None = None, epoch_length: int | None = None,
                 seed: int | None = None) -> State:
        """``run`` for sync code, always blocking. In a sync handler of a running engine (its
        compute thread) it runs this engine to completion while the loop keeps serving data, and
        returns its State; in a plain script it runs its own event loop (uvloop when installed)."""
        if _loop_running():
            raise RuntimeError("run_sync() called inside a running event loop; use "
                               "'await engine.run(...)'")
        return self._run_blocking(self._arun(data, max_epochs, max_iters, epoch_length, seed,
                                             TorchModes.capture()))

    def run(self, data: object = None, max_epochs: int | None = None, max_iters: int | None = None,
            epoch_length: int | None = None, seed: int | None = None) -> Coroutine[Any, Any, State]:
        """Run (or resume) the engine over ``data`` and give its State.

        On an event loop ``run`` returns a coroutine: ``state = await engine.run(...)``. From sync
        code it behaves as Ignite's ``run``: it runs to completion and returns the State, in a
        sync handler (a nested evaluation on the engine's compute thread, while the loop keeps
        serving data) and in a plain script (on an event loop of its own). The annotation is the
        awaited form; typed sync code calls ``run_sync``, the same call with the State's type.

        Args:
            data: an AsyncLoader, any iterable (list, torch DataLoader) or async iterable; None
                with ``epoch_length`` runs steps on ``batch=None`` (or on what ``set_data`` gives).
            max_epochs: epochs to run (default 1); more on a finished engine continues it.
            max_iters: iterations to run instead of epochs (exclusive with ``max_epochs``).
            epoch_length: iterations per epoch (default: ``len(data)``).
            seed: seeds ``random``, numpy and torch when the run starts afresh.

        The caller's grad mode, inference mode and autocast apply to the whole run. Cancelling
        the awaiting task stops after the step in flight, waits for pending writes, leaves no
        thread behind and re-raises CancelledError. An engine whose state is part way resumes
        from the exact next iteration.

        Example::

            >>> from aiotrain import Engine, Events
            >>> trainer = Engine(lambda engine, batch: batch * 2)
            >>> evaluator = Engine(lambda engine, batch: batch)
            >>> @trainer.on(Events.EPOCH_COMPLETED)
            ... def validate(engine):
            ...     state = evaluator.run([10, 20, 30])   # nested, as in Ignite
            ...     print(f"epoch {engine.state.epoch}: evaluated {state.iteration} batches")
            >>> state = trainer.run([1, 2, 3], max_epochs=2)   # a plain script: blocks
            epoch 1: evaluated 3 batches
            epoch 2: evaluated 3 batches
            >>> state.iteration, state.output
            (6, 6)
            >>> import asyncio
            >>> async def main():
            ...     return await evaluator.run([4, 5])   # on a loop: awaited
            >>> asyncio.run(main()).output
            5
        """
        coro = self._arun(data, max_epochs, max_iters, epoch_length, seed, TorchModes.capture())
        if _loop_running():
            note_run_created(coro)
            return coro
        # sync code: Ignite's blocking run (the annotation is the awaited form, see above)
        return cast("Coroutine[Any, Any, State]", self._run_blocking(coro))

    def _run_blocking(self, coro: Coroutine[Any, Any, State]) -> State:
        """Run ``coro`` to completion from sync code: across the bridge on a compute thread,
        on an event loop of its own elsewhere."""
        bridge = current_bridge()
        if bridge is not None:
            result: State = bridge.cross(coro)
            return result
        from ..runtime import run

        return run(coro)

    async def _arun(self, data: object, max_epochs: int | None, max_iters: int | None,
                    epoch_length: int | None, seed: int | None, modes: TorchModes) -> State:
        if self._running:
            raise RuntimeError("this engine is already running")
        self._prepare(data, max_epochs, max_iters, epoch_length, seed)
        st = self.state
        bridge = LoopBridge(asyncio.get_running_loop(), modes)
        source = st.dataloader if st.dataloader is not None else NoData(st.epoch_length or 0)
        watched = type(self)._fire_event is not Engine._fire_event
        driver = Driver(self, self._events, bridge, source, self._cursor, self._process_function,
                        self.device, fire=self._fire_event if watched else None)
        self._driver = driver  # it owns the cursor until the run is over
        self._running, self._write_error = True, None
        worker = self._worker or ComputeWorker(device=self.device)
        own = self._worker is None
        worker.start()
        try:
            await self._await_driver(worker.submit(_drive, driver, modes))
        finally:
            self._cursor = driver.release()
            write_error = await self._finish(driver, own, worker)
        if write_error is not None:  # the run itself succeeded, but a pending write did not
            raise write_error
        return self.state

    @property
    def _dataloader_iter(self) -> Iterator[Any] | None:
        # Ignite's name: the data iterator a run is reading, or that an interrupted run left to
        # continue (None otherwise; a streaming source is reopened at its position instead)
        return self._driver.feed.it if self._driver is not None else self._cursor.held

    def _prepare(self, data: object, max_epochs: int | None, max_iters: int | None,
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
        if (st.max_epochs is None and st.max_iters is None) or \
                (self._finished() and not self._cursor.continuing):
            if data is None and epoch_length is None and st.epoch_length is None:
                raise ValueError("epoch_length should be provided if data is None")
            st.iteration = st.epoch = st.epoch_iteration = 0
            st.max_iters = max_iters
            st.max_epochs = None if max_iters is not None else (max_epochs or 1)
            st.epoch_length = epoch_length or n_batches or st.epoch_length
            st.seed = seed
            self._cursor = Cursor()
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

    async def _await_driver(self, fut: cf.Future[None]) -> None:
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
        if self._driver is not None:
            self._driver.bridge.cancel()
            self._driver.feed.interrupt()

    async def _finish(self, driver: Driver, own_worker: bool,
                      worker: ComputeWorker) -> BaseException | None:
        """Close the data stream, wait for pending writes, stop the worker: also on error/cancel.
        Returns the first exception a pending write raised, if any."""
        try:
            await driver.feed.aclose()
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
            self._driver = None
            self._running = False
            self._events.end_streams()
            if own_worker:
                await worker.astop()
