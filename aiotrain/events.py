"""Events, event filters and the EventBus that holds an engine's handlers.

Events are string enums (``Events.ITERATION_COMPLETED == "iteration_completed"``). Calling an
event makes a filtered event (``Events.ITERATION_COMPLETED(every=100)``) and ``A | B`` a list
of events to attach one handler to. Filter arithmetic is Ignite's, and a filtered event compares
equal to its base event, so ``has_event_handler`` / ``remove_event_handler`` accept either.

Events of other Ignite-shaped libraries (pytorch-ignite's own ``Events`` and ``EventEnum``
members, its filtered events and event lists) are accepted wherever an event is: a built-in one
maps onto the aiotrain event of the same value, any other is a custom event keyed by itself.

The bus keeps handlers sorted by band (compute hooks first), priority (higher first), then
registration order, and says which are due for an event count; it never decides which thread a
handler runs on: that is the engine's job.
"""

from __future__ import annotations

import bisect
import inspect
import itertools
import numbers
import weakref
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Protocol, TypeGuard, runtime_checkable

from .values import check_int

__all__ = [
    "EventBus",
    "EventEnum",
    "EventKey",
    "Events",
    "EventsList",
    "FilteredEvent",
    "RemovableHandle",
    "resolve_events",
]

EventFilter = Callable[[Any, int], bool]
EventKey = Hashable  # an EventEnum member, a registered string, or a foreign enum member


class EventEnum(str, Enum):
    """Base class for event enums; subclass it to declare custom events.

    ``class MyEvents(EventEnum): BACKWARD_COMPLETED = "backward_completed"`` then
    ``engine.register_events(*MyEvents)``.
    """

    def __call__(self, event_filter: EventFilter | None = None, *, every: int | None = None,
                 once: int | Sequence[int] | None = None, before: int | None = None,
                 after: int | None = None) -> FilteredEvent:
        """A filtered form of this event: the handler runs only when the filter passes."""
        return FilteredEvent(self, *make_filter(event_filter, every, once, before, after))

    def __or__(self, other: object) -> EventsList:
        return EventsList([self]) | other

    def __str__(self) -> str:
        return self.name

    @property
    def filter(self) -> EventFilter | None:
        """An unfiltered event has no filter (Ignite's attribute)."""
        return None

    def __eq__(self, other: object) -> bool:
        # equal to its value (``"iteration_completed"``) and, as Ignite's events, to its name
        if isinstance(other, FilteredEvent):
            return other.event is self
        if not isinstance(other, str):
            return NotImplemented
        return str.__eq__(self, other) or other == self.name

    def __hash__(self) -> int:
        return hash(self.name)


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
    INTERRUPT = "interrupt"
    DATALOADER_STOP_ITERATION = "dataloader_stop_iteration"


@dataclass(frozen=True, eq=False)
class FilteredEvent:
    """An event with a filter ``fn(engine, event_count) -> bool``; equal to its base event."""

    event: EventKey
    filter: EventFilter | None
    label: str = ""

    @property
    def name(self) -> str:
        return getattr(self.event, "name", str(self.event))

    @property
    def value(self) -> object:
        return getattr(self.event, "value", self.event)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, FilteredEvent):
            return self.event == other.event
        return bool(self.event == other)

    def __hash__(self) -> int:
        return hash(self.event)

    def __or__(self, other: object) -> EventsList:
        return EventsList([self]) | other

    def __repr__(self) -> str:
        return f"{self.name}({self.label})"


@dataclass
class EventsList:
    """Several events (plain or filtered) that one handler is attached to: ``A | B``."""

    events: list[object] = field(default_factory=list)

    def __or__(self, other: object) -> EventsList:
        if isinstance(other, EventsList):
            return EventsList(self.events + other.events)
        if isinstance(other, EventEnum | FilteredEvent) or _is_foreign_event(other):
            return EventsList([*self.events, other])
        return NotImplemented

    def __iter__(self) -> Iterator[object]:
        return iter(self.events)

    def __len__(self) -> int:
        return len(self.events)

    def __getitem__(self, index: int) -> object:
        return self.events[index]


@runtime_checkable
class ForeignEvent(Protocol):
    """An event of another Ignite-shaped library: an enum member with an optional ``filter``."""

    @property
    def name(self) -> str: ...

    @property
    def value(self) -> object: ...

    def __hash__(self) -> int: ...


def _is_foreign_event(obj: object) -> TypeGuard[ForeignEvent]:
    return (not isinstance(obj, str | EventEnum | FilteredEvent) and isinstance(obj, ForeignEvent)
            and isinstance(getattr(obj, "name", None), str))


def make_filter(event_filter: EventFilter | None, every: int | None,
                once: int | Sequence[int] | None, before: int | None,
                after: int | None) -> tuple[EventFilter | None, str]:
    """One filter function from Ignite's keyword arguments, with Ignite's arithmetic: ``every``
    counts from ``after`` (``every=5, after=8`` fires at 9, 14, 19, ...), ``before`` is exclusive."""
    given = {k: v for k, v in dict(every=every, once=once, before=before, after=after).items()
             if v is not None}
    kinds = (event_filter is not None) + (once is not None) + \
        (every is not None or before is not None or after is not None)
    if kinds != 1:
        raise ValueError("Only one of the input arguments should be specified, except before, "
                         f"after and every: give event_filter, once, or every/before/after "
                         f"(got {sorted(given) + (['event_filter'] if event_filter else [])})")
    if event_filter is not None:
        if not callable(event_filter):
            raise TypeError(f"Argument event_filter should be a callable, got {event_filter!r}")
        check_signature(event_filter, "event_filter", None, 0)
        return event_filter, getattr(event_filter, "__name__", "event_filter")
    label = ", ".join(f"{k}={v}" for k, v in given.items())
    if once is not None:
        values = [once] if isinstance(once, numbers.Integral) else list(once)  # type: ignore[arg-type]
        wanted = frozenset(check_int("event filter argument once", n) for n in values)
        if not wanted:
            raise ValueError("event filter argument once must not be an empty list")
        return (lambda _e, n: n in wanted), label
    n_every = check_int("event filter argument every", every) if every is not None else 1
    if before is None and after is None:
        if n_every == 1:
            return None, label  # every=1: Ignite drops the filter
        return (lambda _e, n: n % n_every == 0), label
    lo = check_int("event filter argument after", after, minimum=0) if after is not None else 0
    hi = check_int("event filter argument before", before, minimum=0) if before is not None else None

    def fn(_engine: object, n: int) -> bool:
        return lo < n and (hi is None or n < hi) and (n - lo - 1) % n_every == 0

    return fn, label


def check_signature(fn: Callable[..., object], what: str, *args: object, **kwargs: object) -> None:
    """Raise ValueError naming ``fn`` when it cannot be called with ``args`` / ``kwargs``."""
    if not _binds(fn, args, kwargs):
        sig = inspect.signature(fn)
        name = getattr(fn, "__qualname__", repr(fn))
        shown = ["engine" if a is None and i == 0 else repr(a) for i, a in enumerate(args)]
        shown += [f"{k}={v!r}" for k, v in kwargs.items()]
        raise ValueError(f"Error adding {what} '{name}': takes parameters {list(sig.parameters)} "
                         f"but will be called with ({', '.join(shown)})")


def _binds(fn: Callable[..., object], args: Sequence[object], kwargs: Mapping[str, object]) -> bool:
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):  # builtins without a signature: trust them
        return True
    try:
        sig.bind(*args, **kwargs)
    except TypeError:
        return False
    return True


def resolve_events(event: object) -> list[tuple[EventKey, EventFilter | None]]:
    """``(key, filter)`` pairs for an event, a filtered event or a list of them (``A | B``)."""
    if isinstance(event, EventsList):
        return [pair for ev in event.events for pair in resolve_events(ev)]
    if isinstance(event, FilteredEvent):
        return [(event.event, event.filter)]
    if isinstance(event, EventEnum):
        return [(event, None)]
    if isinstance(event, str):
        return [(Events._value2member_map_.get(event) or Events.__members__.get(event, event), None)]
    if _is_foreign_event(event):
        key = Events._value2member_map_.get(event.value, event)
        return [(key, getattr(event, "filter", None))]
    if isinstance(event, Iterable):  # a foreign events list
        return [pair for ev in event for pair in resolve_events(ev)]
    raise TypeError(f"expected an event (Events.X, Events.X(every=N) or A | B), got {event!r}")


def resolve_key(event: object) -> EventKey:
    """The key one (unfiltered or filtered) event is stored under."""
    pairs = resolve_events(event)
    if len(pairs) != 1:
        raise TypeError(f"expected a single event, got {event!r}")
    return pairs[0][0]


@dataclass(eq=False)
class HandlerEntry:
    """One attached handler: what, with which arguments, how it is called."""

    event: EventKey
    handler: Callable[..., object]
    args: tuple[object, ...]
    kwargs: dict[str, object]
    filter: EventFilter | None
    key: tuple[int, int, int]
    takes_engine: bool
    is_async: bool

    def invoke(self, engine: object, event_args: tuple[object, ...]) -> object:
        if self.takes_engine:
            return self.handler(engine, *event_args, *self.args, **self.kwargs)
        return self.handler(*event_args, *self.args, **self.kwargs)

    def __repr__(self) -> str:
        return f"handler {getattr(self.handler, '__qualname__', self.handler)!r} of {self.event}"


class RemovableHandle:
    """Returned by ``add_event_handler``; ``remove()`` (or leaving a ``with``) detaches it."""

    def __init__(self, bus: EventBus, entries: list[HandlerEntry], engine: object = None) -> None:
        self._bus, self._entries = bus, entries
        # weak references, as Ignite's handle: ``handle.engine()``, ``handle.handler()``
        self.engine = _weak(engine)
        self.handler = _weak(entries[0].handler if entries else None)
        self.event_name = entries[0].event if len(entries) == 1 else [e.event for e in entries]

    def remove(self) -> None:
        for entry in self._entries:
            self._bus.discard(entry)
        self._entries = []

    def __enter__(self) -> RemovableHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


class AllowedEvents(set[EventKey]):
    """The events an engine accepts; membership resolves Ignite-shaped events and filters."""

    def __contains__(self, event: object) -> bool:
        try:
            pairs = resolve_events(event)
        except TypeError:
            return False
        return bool(pairs) and all(set.__contains__(self, key) for key, _ in pairs)


class EventBus:
    """Handlers per event, in the order they must run."""

    def __init__(self, allowed: Iterable[EventKey] = Events) -> None:
        self.allowed = AllowedEvents(allowed)
        self.entries: dict[EventKey, list[HandlerEntry]] = {}
        # bumped whenever the handlers change (or, through touch(), the engine's observers): a
        # running driver recomputes which per-iteration events it must fire only then
        self.version = 0
        self._seq = itertools.count()

    def touch(self) -> None:
        """Someone started or stopped listening outside the bus (an observer)."""
        self.version += 1

    def register_events(self, *events: object) -> None:
        """Allow custom events on this bus: EventEnum members, strings or foreign enum members."""
        for index, ev in enumerate(events):
            if not (isinstance(ev, str | EventEnum) or _is_foreign_event(ev)):
                raise TypeError(f"Value at {index} of event_names should be a str or EventEnum, "
                                f"got {ev!r}")
            set.add(self.allowed, resolve_key(ev))

    def add(self, event: object, handler: Callable[..., object], args: Sequence[object] = (),
            kwargs: Mapping[str, object] | None = None, *, priority: int = 0, first: bool = False,
            event_args: Sequence[object] = (), engine: object = None) -> RemovableHandle:
        """Attach ``handler`` to ``event``. It is called ``handler(engine, *event_args, *args,
        **kwargs)``, or without ``engine`` when its signature takes none (as Ignite decides).
        ``first`` puts it before every ordinary handler of the event (metric updates)."""
        if not callable(handler):
            raise TypeError(f"handler must be callable, got {handler!r}")
        kwargs = dict(kwargs or {})
        pairs = resolve_events(event)
        for key, _ in pairs:
            if key not in self.allowed:
                raise ValueError(f"Event {key!r} is not a valid event for this Engine: "
                                 "call engine.register_events(...) first")
        takes_engine = _binds(handler, (None, *event_args, *args), kwargs)
        if not takes_engine and not _binds(handler, (*event_args, *args), kwargs):
            check_signature(handler, "handler", None, *event_args, *args, **kwargs)
        is_async = _is_async(handler)
        entries = [HandlerEntry(key, handler, tuple(args), kwargs, flt,
                                (0 if first else 1, -priority, next(self._seq)), takes_engine,
                                is_async) for key, flt in pairs]
        for entry in entries:
            lst = self.entries.setdefault(entry.event, [])
            lst.insert(bisect.bisect([e.key for e in lst], entry.key), entry)
        self.version += 1
        return RemovableHandle(self, entries, engine)

    def discard(self, entry: HandlerEntry) -> None:
        lst = self.entries.get(entry.event, [])
        if entry in lst:
            lst.remove(entry)
        if not lst:
            self.entries.pop(entry.event, None)
        self.version += 1

    def remove(self, handler: Callable[..., object], event: object) -> None:
        """Detach every attachment of ``handler`` to ``event``; ValueError if there is none."""
        key = resolve_key(event)
        if key not in self.entries:
            raise ValueError(f"Input event name '{key}' does not exist: no handler is attached to it")
        found = [e for e in self.entries[key] if _same(e.handler, handler)]
        if not found:
            raise ValueError(f"Input handler '{handler!r}' is not found among registered event "
                             f"handlers of '{key}'")
        for entry in found:
            self.discard(entry)

    def has(self, handler: Callable[..., object], event: object = None) -> bool:
        """True when ``handler`` is attached (to ``event``, or to any event)."""
        lists = [self.entries.get(resolve_key(event), [])] if event is not None \
            else self.entries.values()
        return any(_same(e.handler, handler) for lst in lists for e in lst)


def _weak(obj: object) -> Callable[[], object]:
    try:
        return weakref.ref(obj)
    except TypeError:  # not weakly referenceable (None, some builtins): a strong one
        return lambda: obj


def _is_async(fn: Callable[..., object]) -> bool:
    target = getattr(fn, "func", fn)  # functools.partial
    return inspect.iscoroutinefunction(target) or inspect.iscoroutinefunction(
        getattr(type(target), "__call__", None))  # noqa: B004 - the method itself, not callability


def _same(a: Callable[..., object], b: Callable[..., object]) -> bool:
    return a == b or getattr(a, "__wrapped__", None) == b
