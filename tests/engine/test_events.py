"""Events, filters and the EventBus's ordering rules."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from aiotrain import Engine, EventEnum, Events
from aiotrain.events import EventsList


def _run(engine: Engine, data, **kw):
    return engine.run_sync(data, **kw)


def _fired_at(filtered, n_iters=12):
    engine = Engine(lambda e, b: None)
    seen = []
    engine.add_event_handler(filtered, lambda e: seen.append(e.state.iteration))
    _run(engine, range(n_iters), max_epochs=1)
    return seen


def test_every_once_before_after_and_custom_filter():
    assert _fired_at(Events.ITERATION_COMPLETED(every=4)) == [4, 8, 12]
    assert _fired_at(Events.ITERATION_COMPLETED(once=5)) == [5]
    assert _fired_at(Events.ITERATION_COMPLETED(once=[2, 7])) == [2, 7]
    assert _fired_at(Events.ITERATION_COMPLETED(before=4)) == [1, 2, 3]
    assert _fired_at(Events.ITERATION_COMPLETED(after=9)) == [10, 11, 12]
    assert _fired_at(Events.ITERATION_COMPLETED(every=2, after=3, before=10)) == [4, 6, 8]
    odd = Events.ITERATION_COMPLETED(event_filter=lambda e, n: n % 2 == 1)
    assert _fired_at(odd) == [1, 3, 5, 7, 9, 11]


def test_epoch_filters_count_epochs():
    engine = Engine(lambda e, b: None)
    seen = []
    engine.add_event_handler(Events.EPOCH_COMPLETED(every=2), lambda e: seen.append(e.state.epoch))
    _run(engine, range(3), max_epochs=6)
    assert seen == [2, 4, 6]


def test_or_attaches_to_both():
    engine = Engine(lambda e, b: None)
    seen = []
    ev = Events.STARTED | Events.COMPLETED | Events.ITERATION_COMPLETED(once=2)
    assert isinstance(ev, EventsList)
    engine.add_event_handler(ev, lambda e: seen.append(e.state.iteration))
    _run(engine, range(3), max_epochs=1)
    assert seen == [0, 2, 3]


@pytest.mark.parametrize("kwargs, message", [
    ({"every": 0}, "every must be a positive integer"),
    ({"every": -3}, "every must be a positive integer"),
    ({"once": 2, "every": 3}, "Only one of the input arguments"),
    ({}, "Only one of the input arguments"),
    ({"before": -1}, "before must be a non-negative integer"),
    ({"after": 1.5}, "after must be a non-negative integer"),
])
def test_bad_filter_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Events.ITERATION_COMPLETED(**kwargs)


def test_priority_then_registration_order():
    engine = Engine(lambda e, b: None)
    order = []
    engine.add_event_handler(Events.STARTED, lambda e: order.append("a0"))
    engine.add_event_handler(Events.STARTED, lambda e: order.append("b10"), priority=10)
    engine.add_event_handler(Events.STARTED, lambda e: order.append("c0"))
    engine.add_event_handler(Events.STARTED, lambda e: order.append("d-5"), priority=-5)
    engine.add_event_handler(Events.STARTED, lambda e: order.append("e10"), priority=10)
    _run(engine, [0], max_epochs=1)
    assert order == ["b10", "e10", "a0", "c0", "d-5"]


def test_handler_of_wrong_shape_rejected_with_its_name():
    engine = Engine(lambda e, b: None)

    def needs_two(engine, required):
        pass

    with pytest.raises(ValueError, match="needs_two"):
        engine.add_event_handler(Events.STARTED, needs_two)
    with pytest.raises(ValueError, match="takes_three"):
        def takes_three(a, b, c):
            pass
        engine.add_event_handler(Events.STARTED, takes_three)
    engine.add_event_handler(Events.STARTED, needs_two, 5)  # extra arg supplied: fine
    with pytest.raises(TypeError, match="must be callable"):
        engine.add_event_handler(Events.STARTED, 42)


def test_decorator_with_args_remove_and_has():
    engine = Engine(lambda e, b: None)
    seen = []

    @engine.on(Events.EPOCH_COMPLETED, "tag")
    def mark(e, tag):
        seen.append(tag)

    assert engine.has_event_handler(mark)
    assert engine.has_event_handler(mark, Events.EPOCH_COMPLETED)
    assert not engine.has_event_handler(mark, Events.STARTED)
    _run(engine, [1], max_epochs=2)
    assert seen == ["tag", "tag"]
    engine.remove_event_handler(mark, Events.EPOCH_COMPLETED)
    assert not engine.has_event_handler(mark)
    with pytest.raises(ValueError, match="Input event name"):
        engine.remove_event_handler(mark, Events.EPOCH_COMPLETED)
    handle = engine.add_event_handler(Events.EPOCH_COMPLETED, mark, "x")
    handle.remove()
    _run(engine, [1], max_epochs=2)  # done: a fresh run
    assert seen == ["tag", "tag"]


class BackpropEvents(EventEnum):
    BACKWARD_COMPLETED = "backward_completed"


def test_handlers_attached_or_removed_mid_run_take_effect_at_the_next_event():
    # the driver caches which per-iteration events anyone listens to: a change must reach it
    seen: list[tuple[str, int]] = []

    def step(e, b):
        if e.state.iteration == 5:  # a step that attaches: from this iteration's completion on
            e.add_event_handler(Events.ITERATION_STARTED, lambda e: seen.append(("started", e.state.iteration)))

    engine = Engine(step)

    def late(e):
        seen.append(("completed", e.state.iteration))

    def attach(e):
        if e.state.iteration == 2:  # GET_BATCH_STARTED of iteration 3: as Ignite, same iteration
            e.add_event_handler(Events.ITERATION_COMPLETED, late)
        if e.state.iteration == 4:
            e.remove_event_handler(late, Events.ITERATION_COMPLETED)

    engine.add_event_handler(Events.GET_BATCH_STARTED, attach)
    _run(engine, range(7), max_epochs=1)
    assert seen == [("completed", 3), ("completed", 4), ("started", 6), ("started", 7)]


def test_observer_started_mid_run_sees_the_following_iterations():
    async def main():
        engine = Engine(lambda e, b: None)
        stack = contextlib.AsyncExitStack()
        streams = []

        async def open_stream(e):
            streams.append(await stack.enter_async_context(engine.observe(Events.GET_BATCH_STARTED)))

        engine.add_event_handler(Events.EPOCH_COMPLETED(once=1), open_stream)
        async with stack:
            await engine.run(range(3), max_epochs=2)
            return [s.iteration async for s in streams[0]]

    assert asyncio.run(main()) == [3, 4, 5]


def test_custom_event_fired_from_sync_step_runs_inline_on_the_compute_thread():
    import threading

    loop_thread = threading.get_ident()
    calls = []

    def step(engine, batch):
        engine.fire_event(BackpropEvents.BACKWARD_COMPLETED)
        calls.append(("step-after-fire", batch))
        return batch

    engine = Engine(step)
    engine.register_events(*BackpropEvents)

    @engine.on(BackpropEvents.BACKWARD_COMPLETED(every=2))
    def on_backward(e):
        calls.append(("handler", e.state.iteration, threading.get_ident() != loop_thread))

    _run(engine, [10, 20, 30, 40], max_epochs=1)
    assert calls == [("step-after-fire", 10), ("handler", 2, True), ("step-after-fire", 20),
                     ("step-after-fire", 30), ("handler", 4, True), ("step-after-fire", 40)]


def test_unregistered_custom_event_is_an_error():
    engine = Engine(lambda e, b: None)
    with pytest.raises(ValueError, match="register_events"):
        engine.add_event_handler(BackpropEvents.BACKWARD_COMPLETED, lambda e: None)
