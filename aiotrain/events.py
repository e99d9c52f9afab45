"""Events, event filters and the EventBus that holds an engine's handlers.

Events are string enums (``Events.ITERATION_COMPLETED == "iteration_completed"``). Calling an
event makes a filtered event (``Events.ITERATION_COMPLETED(every=100)``) and ``A | B`` a list
of events to attach one handler to. The bus keeps handlers sorted by priority (higher first)
then registration order, and tells the engine which are due for an event; it never decides
which thread a handler runs on: that is the engine's job.
"""

from __future__ import annotations

import bisect
import inspect
import itertools
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from .values import check_int

__all__ = [
    "EventBus",
    "EventEnum",
    "Events",
    "EventsList",
    "FilteredEvent",
    "RemovableHandle",
]

EventFilter = Callable[[Any, int], bool]


class EventEnum(str, Enum):
    """Base class for event enums; subclass it to declare custom events.

    ``class MyEvents(EventEnum): BACKWARD_COMPLETED = "backward_completed"`` then
    ``engine.register_events(*MyEvents)``.
    """

    def __call__(self, event_filter: EventFilter | None = None, *, every: int | None = None,
                 once: int | Iterable[int] | None = None, before: int | None = None,
                 after: int | None = None) -> FilteredEvent:
        """A filtered form of this event: the handler runs only when the filter passes."""
        return FilteredEvent(self, *_make_filter(event_filter, every, once, before, after))

    def __or__(self, other: object) -> EventsList:
        return EventsList([self]) | other

    def __str__(self) -> str:
        return self.name


class Events(EventEnum):
    """The events every Engine fires (Ignite's names and order)."""

    STARTED = "started"
    EPOCH_STARTED = "epoch_started"
    GET_BATCH_STARTED = "get_batch_started"
    GET_BATCH_COMPLETED = "get_batch_completed"
    ITERATION_STARTED = "iteration_started"
    ITERATION_COMPLETED = "iteration_completed"
    EPOCH_COMPLETED = "epoch_completed"
    COMPLETED = "completed"
    EXCEPTION_RAISED = "exception_raised"
    TERMINATE = "terminate"
    TERMINATE_SINGLE_EPOCH = "terminate_single_epoch"
    DATALOADER_STOP_ITERATION = "dataloader_stop_iteration"


@dataclass(frozen=True)
class FilteredEvent:
    """An event with a filter ``fn(engine, event_count) -> bool``."""

    event: EventEnum
    filter: EventFilter
    label: str = ""

    def __or__(self, other: object) -> EventsList:
        return EventsList([self]) | other

    def __repr__(self) -> str:
        return f"{self.event.name}({self.label})"


@dataclass
class EventsList:
    """Several events (plain or filtered) that one handler is attached to: ``A | B``."""

    events: list[EventEnum | FilteredEvent] = field(default_factory=list)

    def __or__(self, other: object) -> EventsList:
        if isinstance(other, EventsList):
            return EventsList(self.events + other.events)
        if isinstance(other, EventEnum | FilteredEvent):
            return EventsList([*self.events, other])
        return NotImplemented

    def __iter__(self) -> Iterator[EventEnum | FilteredEvent]:
        return iter(self.events)


def _make_filter(event_filter: EventFilter | None, every: int | None,
                 once: int | Iterable[int] | None, before: int | None,
                 after: int | None) -> tuple[EventFilter, str]:
    """Build one filter function from Ignite's keyword arguments."""
    given = {k: v for k, v in dict(every=every, once=once, before=before, after=after).items()
             if v is not None}
    if event_filter is not None:
        if given:
            raise ValueError("event_filter cannot be combined with every/once/before/after")
        if not callable(event_filter):
            raise TypeError(f"event_filter must be callable, got {event_filter!r}")
        _check_signature(event_filter, "event_filter", None, 0)
        return event_filter, getattr(event_filter, "__name__", "event_filter")
    if not given:
        raise ValueError("a filtered event needs event_filter, every, once, before or after")
    if once is not None:
        if len(given) > 1:
            raise ValueError("once cannot be combined with every/before/after")
        wanted = frozenset([check_int("once", once)] if isinstance(once, int)
                           else [check_int("once", n) for n in once])
        return (lambda _e, n: n in wanted), f"once={sorted(wanted)}"
    n_every = check_int("every", every) if every is not None else None
    lo = check_int("after", after, minimum=0) if after is not None else None
    hi = check_int("before", before) if before is not None else None

    def fn(_engine: Any, n: int) -> bool:
        return ((n_every is None or n % n_every == 0) and (lo is None or n > lo)
                and (hi is None or n < hi))

    return fn, ", ".join(f"{k}={v}" for k, v in given.items())


def _check_signature(fn: Callable[..., Any], what: str, *args: Any, **kwargs: Any) -> None:
    """Raise ValueError naming ``fn`` when it cannot be called with ``args`` / ``kwargs``."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):  # builtins without a signature: trust them
        return
    try:
        sig.bind(*args, **kwargs)
    except TypeError as exc:
        name = getattr(fn, "__qualname__", repr(fn))
        shown = ", ".join(["engine", *(repr(a) for a in args[1:]),
                           *(f"{k}={v!r}" for k, v in kwargs.items())])
        raise ValueError(f"{what} {name}{sig} cannot be called as {what}({shown}): {exc}") from None


@dataclass(eq=False)
class _Entry:
    """One attached handler: what, with which arguments, where (loop or compute thread)."""

    event: EventEnum
    handler: Callable[..., Any]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    filter: EventFilter | None
    priority: int
    seq: int
    on_compute: bool
    is_async: bool

    @property
    def key(self) -> tuple[int, int]:
        return (-self.priority, self.seq)


class RemovableHandle:
    """Returned by ``add_event_handler``; ``remove()`` (or leaving a ``with``) detaches it."""

    def __init__(self, bus: EventBus, entries: list[_Entry]) -> None:
        self._bus, self._entries = bus, entries

    def remove(self) -> None:
        for entry in self._entries:
            self._bus._discard(entry)
        self._entries = []

    def __enter__(self) -> RemovableHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


class EventBus:
    """Handlers per event, in the order they must run; knows which are due for an event count."""

    def __init__(self, allowed: Iterable[EventEnum] = Events) -> None:
        self._allowed: set[EventEnum] = set(allowed)
        self._entries: dict[EventEnum, list[_Entry]] = {}
        self._seq = itertools.count()

    def register_events(self, *events: EventEnum) -> None:
        """Allow custom events on this bus."""
        for ev in events:
            if not isinstance(ev, EventEnum):
                raise TypeError(f"custom events must be EventEnum members, got {ev!r}")
            self._allowed.add(ev)

    def add(self, event: EventEnum | FilteredEvent | EventsList, handler: Callable[..., Any],
            args: Sequence[Any] = (), kwargs: dict[str, Any] | None = None, *, priority: int = 0,
            on_compute: bool = False, signature_args: Sequence[Any] = ()) -> RemovableHandle:
        """Attach ``handler`` to ``event``; ``signature_args`` are extra leading call arguments
        the engine passes for this event (EXCEPTION_RAISED passes the exception)."""
        if not callable(handler):
            raise TypeError(f"handler must be callable, got {handler!r}")
        kwargs = dict(kwargs or {})
        entries = []
        for ev, flt in _flatten(event):
            if ev not in self._allowed:
                raise ValueError(f"event {ev!r} is not registered on this engine; "
                                 f"call engine.register_events(...) first")
            _check_signature(handler, "handler", None, *signature_args, *args, **kwargs)
            entries.append(_Entry(ev, handler, tuple(args), kwargs, flt, priority,
                                  next(self._seq), on_compute, _is_async(handler)))
        for entry in entries:
            lst = self._entries.setdefault(entry.event, [])
            lst.insert(bisect.bisect([e.key for e in lst], entry.key), entry)
        return RemovableHandle(self, entries)

    def _discard(self, entry: _Entry) -> None:
        lst = self._entries.get(entry.event, [])
        if entry in lst:
            lst.remove(entry)
        if not lst:
            self._entries.pop(entry.event, None)

    def remove(self, handler: Callable[..., Any], event: EventEnum) -> None:
        """Detach every attachment of ``handler`` to ``event``; ValueError if there is none."""
        found = [e for e in self._entries.get(event, []) if _same(e.handler, handler)]
        if not found:
            raise ValueError(f"handler {handler!r} is not attached to {event!r}")
        for entry in found:
            self._discard(entry)

    def has(self, handler: Callable[..., Any], event: EventEnum | None = None) -> bool:
        """True when ``handler`` is attached (to ``event``, or to any event)."""
        lists = [self._entries.get(event, [])] if event is not None else self._entries.values()
        return any(_same(e.handler, handler) for lst in lists for e in lst)

    def entries(self, event: EventEnum) -> list[_Entry] | None:
        """The handlers of ``event`` in run order, or None (the engine's fast path)."""
        return self._entries.get(event)

    @property
    def allowed(self) -> set[EventEnum]:
        return self._allowed


def _flatten(event: Any) -> list[tuple[EventEnum, EventFilter | None]]:
    if isinstance(event, EventsList):
        return [pair for ev in event.events for pair in _flatten(ev)]
    if isinstance(event, FilteredEvent):
        return [(event.event, event.filter)]
    if isinstance(event, EventEnum):
        return [(event, None)]
    raise TypeError(f"expected an event (Events.X, Events.X(every=N) or A | B), got {event!r}")


def _is_async(fn: Callable[..., Any]) -> bool:
    target = getattr(fn, "func", fn)  # functools.partial
    return inspect.iscoroutinefunction(target) or inspect.iscoroutinefunction(
        getattr(type(target), "__call__", None))  # noqa: B004 - the method itself, not callability


def _same(a: Callable[..., Any], b: Callable[..., Any]) -> bool:
    return a == b or getattr(a, "__wrapped__", None) == b
