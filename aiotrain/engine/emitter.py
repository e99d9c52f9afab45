"""Emitter: an engine's events — its handlers, how often each event fired, and its observers.

Every way of firing an event comes here: the driver on the compute thread, ``fire_event`` from
sync code elsewhere, ``afire_event`` from a coroutine. ``fire`` sets ``last_event_name``, counts
the event (what filters see), runs the due handlers in order (sync ones inline, async ones on the
loop through a bridge) and gives each interested observer a Snapshot.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from ..events import EventBus, EventKey, HandlerEntry, resolve_events
from .bridge import LoopBridge, acall_handlers, call_handlers
from .observe import Observer, Snapshot, plain, scalars
from .state import State
from .view import EngineView

__all__ = ["Emitter"]


class Emitter:
    """The events of one engine (see the module docstring)."""

    def __init__(self, engine: EngineView) -> None:
        self.engine = engine
        self.bus = EventBus()
        self.entries = self.bus.entries  # the hot path reads the dict directly
        self.counts: dict[EventKey, int] = {}  # firings of events with no State counter
        self.observers: dict[EventKey, list[Observer]] = {}

    # firing ---------------------------------------------------------------------------------
    def count(self, event: EventKey) -> int:
        """What filters see: the state attribute the event maps to (iteration or epoch for the
        built-in events, as Ignite), else how many times it fired (this firing included)."""
        attr = State.event_to_attr.get(event)
        if attr is not None:
            value: int = getattr(self.engine.state, attr)
            return value
        n = self.counts.get(event, 0) + 1
        self.counts[event] = n
        return n

    def due(self, event: EventKey, count: int) -> list[HandlerEntry]:
        """The handlers of ``event`` whose filters pass at ``count``, in order."""
        eng = self.engine
        eng.last_event_name = event
        return [e for e in self.entries.get(event, ()) if e.filter is None or e.filter(eng, count)]

    def fire(self, bridge: LoopBridge | None, event: EventKey, *args: object) -> None:
        """Fire ``event``: due handlers in order (async ones across ``bridge``), then observers.

        The driver's hot path (``due`` inlined): an event's hash is Python code, so it is looked
        up in the handlers once, and an event with no handler, no observer and a State counter
        costs nothing more."""
        eng = self.engine
        eng.last_event_name = event
        entries = self.entries.get(event)
        if entries is None and not self.observers and event in State.event_to_attr:
            return
        count = self.count(event)
        if entries:
            due = [e for e in entries if e.filter is None or e.filter(eng, count)]
            if due:
                call_handlers(due, eng, args, bridge)
        if self.observers:
            self.notify(event, count)

    async def afire(self, event: EventKey, args: tuple[object, ...]) -> None:
        """Fire ``event`` on the loop: sync handlers called, async ones awaited, then observers."""
        count = self.count(event)
        await acall_handlers(self.due(event, count), self.engine, args)
        if self.observers:
            self.notify(event, count)

    # observers ------------------------------------------------------------------------------
    def watch(self, obs: Observer, events: Iterable[object]) -> list[EventKey]:
        """Give ``obs`` a Snapshot of each of ``events`` (filters kept); returns the keys."""
        keys: list[EventKey] = []
        for ev in events:
            for key, flt in resolve_events(ev):
                obs.filters[key] = flt
                keys.append(key)
                self.observers.setdefault(key, []).append(obs)
        self.bus.touch()
        return keys

    def unwatch(self, obs: Observer, keys: Iterable[EventKey]) -> None:
        for key in keys:
            watching = self.observers.get(key, [])
            if obs in watching:
                watching.remove(obs)
            if not watching:
                self.observers.pop(key, None)
        self.bus.touch()

    def notify(self, event: EventKey, count: int) -> None:
        """A Snapshot of the engine now, for each observer of ``event`` whose filter passes."""
        observers = self.observers.get(event)
        if not observers:
            return
        eng = self.engine
        wanted = [o for o in observers if o.wants(eng, event, count)]
        if not wanted:
            return
        st = eng.state
        snap = Snapshot(getattr(event, "name", str(event)), st.epoch, st.iteration,
                        scalars(st.output), plain(st.metrics), time.time())
        for obs in wanted:
            obs.offer(snap)

    def end_streams(self) -> None:
        """The run ended: every observer's stream ends (a later run can be observed again)."""
        for observers in list(self.observers.values()):
            for obs in observers:
                obs.close()
