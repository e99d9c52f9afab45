"""Engine: Ignite parity, terminate/resume, exceptions, cancellation, observers, the loop."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
import torch
from ignite.engine import Engine as IgniteEngine
from ignite.engine import Events as IgniteEvents

from aiotrain import AsyncLoader, Engine, Events


def _record(engine, events_cls, log):
    for ev in events_cls:
        if ev.name == "INTERRUPT":
            continue
        engine.add_event_handler(
            ev, lambda e, *a, name=ev.name: log.append((name, e.state.epoch, e.state.iteration)))


@pytest.mark.parametrize("data, kwargs", [
    ([1, 2, 3], {"max_epochs": 3}),
    (list(range(7)), {"max_epochs": 2, "epoch_length": 3}),
    ([5], {"max_epochs": 4}),
])
def test_event_order_and_counts_match_ignite(data, kwargs):
    ours, theirs = [], []
    engine = Engine(lambda e, b: b)
    _record(engine, Events, ours)
    engine.run_sync(data, **kwargs)
    ig = IgniteEngine(lambda e, b: b)
    _record(ig, IgniteEvents, theirs)
    ig.run(data, **kwargs)
    assert ours == theirs


def test_unsized_iterator_epoch_length_like_ignite():
    ours, theirs = [], []
    engine = Engine(lambda e, b: b)
    _record(engine, Events, ours)
    engine.run_sync(iter(range(4)), max_epochs=1)
    ig = IgniteEngine(lambda e, b: b)
    _record(ig, IgniteEvents, theirs)
    ig.run(iter(range(4)), max_epochs=1)
    assert ours == theirs
    assert engine.state.epoch_length == 4


def test_terminate_matches_ignite_events_then_resume_continues_exactly():
    seen = []

    def step(e, b):
        seen.append((e.state.epoch, e.state.iteration, b))

    engine = Engine(step)
    log = []
    _record(engine, Events, log)
    engine.add_event_handler(Events.ITERATION_COMPLETED(once=14), lambda e: e.terminate())
    state = engine.run_sync(list(range(10)), max_epochs=4)
    assert (state.epoch, state.iteration) == (2, 14)
    assert [n for n, *_ in log[-3:]] == ["ITERATION_COMPLETED", "TERMINATE", "COMPLETED"]
    engine.run_sync(list(range(10)), max_epochs=4)
    # the interrupted epoch continues at its 5th batch (Ignite would skip to epoch 3)
    assert seen[14] == (2, 15, 4)
    assert len(seen) == 40
    assert [b for *_, b in seen] == list(range(10)) * 4
    assert engine.state.iteration == 40


def test_terminate_epoch_moves_to_next_epoch():
    seen = []
    engine = Engine(lambda e, b: seen.append((e.state.epoch, b)))
    engine.add_event_handler(Events.ITERATION_COMPLETED(once=2), lambda e: e.terminate_epoch())
    fired = []
    engine.add_event_handler(Events.TERMINATE_SINGLE_EPOCH, lambda e: fired.append(e.state.iteration))
    engine.run_sync([0, 1, 2, 3], max_epochs=2)
    assert seen == [(1, 0), (1, 1), (2, 0), (2, 1), (2, 2), (2, 3)]
    assert fired == [2]


class StepError(Exception):
    pass


def test_exception_keeps_type_and_traceback():
    def step(e, b):
        if b == 2:
            raise StepError("bad batch 2")

    engine = Engine(step)
    with pytest.raises(StepError, match="bad batch 2") as info:
        engine.run_sync([0, 1, 2, 3])
    assert any(frame.name == "step" for frame in info.traceback)


def test_handler_exception_keeps_type():
    engine = Engine(lambda e, b: None)
    engine.add_event_handler(Events.ITERATION_COMPLETED(once=2), lambda e: {}["missing"])
    with pytest.raises(KeyError, match="missing"):
        engine.run_sync(range(5))


def test_exception_raised_handler_receives_it_and_swallows():
    engine = Engine(lambda e, b: 1 / 0 if b == 1 else b)
    got = []
    engine.add_event_handler(Events.EXCEPTION_RAISED, lambda e, exc: got.append(type(exc)))
    engine.run_sync(range(3))
    assert got == [ZeroDivisionError]


def test_async_handler_finishes_before_next_step_and_async_step_awaited():
    order = []

    async def slow_handler(e):
        await asyncio.sleep(0.01)
        order.append(("handler", e.state.iteration))

    async def astep(e, b):
        await asyncio.sleep(0)
        order.append(("step", b))
        return b

    engine = Engine(astep)
    engine.add_event_handler(Events.ITERATION_COMPLETED, slow_handler)
    engine.run_sync([0, 1, 2])
    assert order == [("step", 0), ("handler", 1), ("step", 1), ("handler", 2), ("step", 2),
                     ("handler", 3)]


@pytest.mark.parametrize("bad", [0, -1, 1.5, True])
def test_bad_max_epochs(bad):
    with pytest.raises(ValueError, match="max_epochs must be a positive integer"):
        Engine(lambda e, b: None).run_sync([1], max_epochs=bad)


def test_empty_data_sources_are_clear_errors():
    with pytest.raises(ValueError, match="data source is empty"):
        Engine(lambda e, b: None).run_sync([])
    with pytest.raises(ValueError, match="data source is empty"):
        Engine(lambda e, b: None).run_sync(iter([]))
    with pytest.raises(ValueError, match="epoch_length should be provided if data is None"):
        Engine(lambda e, b: None).run_sync(None)
    with pytest.raises(TypeError, match="Argument data should be iterable"):
        Engine(lambda e, b: None).run_sync(42)
    with pytest.raises(ValueError, match="Engine must be given a processing function"):
        Engine(None)
    with pytest.raises(ValueError, match="process_function"):
        Engine(lambda: None)


def test_run_sync_inside_a_loop_is_refused():
    async def main():
        with pytest.raises(RuntimeError, match="await engine.run"):
            Engine(lambda e, b: None).run_sync([1])

    asyncio.run(main())


def test_cancellation_is_prompt_leaves_no_thread_and_resumes():
    steps = []

    def step(e, b):
        time.sleep(0.01)
        steps.append(b)

    async def main():
        before = threading.active_count()
        engine = Engine(step)
        task = asyncio.create_task(engine.run(list(range(1000)), max_epochs=1))
        await asyncio.sleep(0.1)
        t0 = time.perf_counter()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert time.perf_counter() - t0 < 0.5
        done = len(steps)
        assert 0 < done < 1000
        assert engine.state.iteration == done
        assert threading.active_count() <= before
        await asyncio.sleep(0.05)
        assert len(steps) == done, "a step ran after cancellation returned"
        # running again resumes at the exact next batch
        engine2_steps = len(steps)
        task = asyncio.create_task(engine.run(list(range(1000)), max_epochs=1))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert steps[engine2_steps] == engine2_steps

    asyncio.run(main())


def test_cancel_while_async_handler_runs_and_while_waiting_for_data():
    class Slow:
        def __len__(self):
            return 100

        async def aget(self, i):
            await asyncio.sleep(10 if i > 3 else 0)
            return i

    async def main():
        engine = Engine(lambda e, b: None)
        task = asyncio.create_task(engine.run(AsyncLoader(Slow(), 2), max_epochs=1))
        await asyncio.sleep(0.2)
        t0 = time.perf_counter()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert time.perf_counter() - t0 < 1.0
        assert engine.state.iteration == 2

        blocker = Engine(lambda e, b: None)

        async def hang(e):
            await asyncio.sleep(10)

        blocker.add_event_handler(Events.ITERATION_COMPLETED, hang)
        task = asyncio.create_task(blocker.run([1, 2]))
        await asyncio.sleep(0.1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())


def test_heartbeat_keeps_ticking_while_a_cpu_model_trains():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(256, 512), torch.nn.ReLU(), torch.nn.Linear(512, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = torch.randn(64, 256), torch.randint(0, 10, (64,))

    def step(e, b):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        return loss.item()

    async def main():
        gaps, stop = [], asyncio.Event()

        async def heartbeat():
            last = time.perf_counter()
            while not stop.is_set():
                await asyncio.sleep(0.005)
                now = time.perf_counter()
                gaps.append(now - last)
                last = now

        hb = asyncio.create_task(heartbeat())
        engine = Engine(step)
        t0 = time.perf_counter()
        await engine.run(range(300), max_epochs=1)
        elapsed = time.perf_counter() - t0
        stop.set()
        await hb
        return gaps, elapsed

    gaps, elapsed = asyncio.run(main())
    # a blocked loop would give ~one gap as long as the whole run; ticking gives many short ones
    assert len(gaps) > elapsed / 0.05
    assert max(gaps) < max(0.5, elapsed / 2)


def test_observe_streams_snapshots_and_ends_with_the_run():
    async def main():
        engine = Engine(lambda e, b: {"loss": torch.tensor(float(b))})
        got = []

        async def watch():
            async with engine.observe(Events.ITERATION_COMPLETED(every=2)) as stream:
                async for snap in stream:
                    got.append(snap)

        watcher = asyncio.create_task(watch())
        await asyncio.sleep(0)
        await engine.run([1, 2, 3, 4], max_epochs=1)
        await asyncio.wait_for(watcher, 2)
        return got

    got = asyncio.run(main())
    assert [(s.event, s.iteration, s.output) for s in got] == [
        ("ITERATION_COMPLETED", 2, {"loss": 2.0}), ("ITERATION_COMPLETED", 4, {"loss": 4.0})]
    assert got[0].to_dict()["output"] == {"loss": 2.0}


def test_slow_observer_drops_oldest_and_never_slows_training():
    async def main():
        engine = Engine(lambda e, b: b)
        async with engine.observe(Events.ITERATION_COMPLETED, maxsize=5) as stream:
            await engine.run(range(100), max_epochs=1)  # nobody reads during the run
            return [s.iteration async for s in stream]

    assert asyncio.run(main()) == [96, 97, 98, 99, 100]


def test_state_dict_roundtrip_restores_rng_and_position():
    engine = Engine(lambda e, b: torch.rand(1).item())
    engine.add_event_handler(Events.ITERATION_COMPLETED(once=3), lambda e: e.terminate())
    engine.run_sync(list(range(5)), max_epochs=2)
    sd = engine.state_dict()
    expected = Engine(lambda e, b: torch.rand(1).item())
    outs_a = []
    engine_a = Engine(lambda e, b: outs_a.append(torch.rand(1).item()))
    engine_a.load_state_dict(sd)
    engine_a.run_sync(list(range(5)))
    outs_b = []
    engine_b = Engine(lambda e, b: outs_b.append(torch.rand(1).item()))
    engine_b.load_state_dict(sd)
    engine_b.run_sync(list(range(5)))
    assert outs_a == outs_b and len(outs_a) == 7
    assert engine_a.state.iteration == 10
    with pytest.raises(ValueError, match="Required state attribute .epoch_length. is absent"):
        expected.load_state_dict({"epoch": 1})


def test_compute_hook_runs_on_compute_thread_without_crossing():
    names = []
    engine = Engine(lambda e, b: b)
    engine.add_compute_hook(Events.ITERATION_COMPLETED,
                            lambda e: names.append(threading.current_thread().name))
    engine.run_sync(range(3))
    assert len(names) == 3 and all(n.startswith("aiotrain-compute") for n in names)


def test_seed_makes_runs_repeatable():
    def collect(seed):
        out = []
        Engine(lambda e, b: out.append(torch.rand(1).item())).run_sync(range(3), seed=seed)
        return out

    assert collect(7) == collect(7) != collect(8)


def test_state_repr_does_not_format_the_data():
    data = [torch.zeros(3)] * 50
    state = Engine(lambda e, b: b).run_sync(data)
    text = repr(state)
    assert "tensor" not in text and "iteration: 50" in text


def test_state_dict_taken_at_epoch_completed_resumes_at_next_epoch():
    saved = {}
    engine = Engine(lambda e, b: None)
    engine.add_event_handler(Events.EPOCH_COMPLETED(once=2), lambda e: saved.update(e.state_dict()))
    engine.run_sync([1, 2, 3], max_epochs=4)
    log = []
    resumed = Engine(lambda e, b: None)
    _record(resumed, Events, log)
    resumed.load_state_dict(saved)
    resumed.run_sync([1, 2, 3])
    assert [(n, ep) for n, ep, _ in log if n.startswith("EPOCH")] == [
        ("EPOCH_STARTED", 3), ("EPOCH_COMPLETED", 3), ("EPOCH_STARTED", 4), ("EPOCH_COMPLETED", 4)]
    assert resumed.state.iteration == 12


def test_finished_run_continues_when_asked_for_more_epochs_and_restarts_otherwise():
    seen = []
    engine = Engine(lambda e, b: seen.append(e.state.epoch))
    engine.run_sync([1, 2], max_epochs=2)
    engine.run_sync([1, 2], max_epochs=3)
    assert seen == [1, 1, 2, 2, 3, 3] and engine.state.iteration == 6
    engine.run_sync([1, 2], max_epochs=3)  # done for 3: a fresh run
    assert seen[6:] == [1, 1, 2, 2, 3, 3]
    with pytest.raises(ValueError, match="should be greater than or equal to the start epoch defined in the state: 1 vs 2"):
        engine.add_event_handler(Events.ITERATION_COMPLETED(once=3), lambda e: e.terminate())
        engine.run_sync([1, 2], max_epochs=3)
        engine.run_sync([1, 2], max_epochs=1)


def test_failed_pending_write_is_raised_from_run_and_last_event_name():
    import concurrent.futures as cf

    names = []
    engine = Engine(lambda e, b: names.append(e.last_event_name))

    @engine.on(Events.COMPLETED)
    def write(e):
        fut = cf.Future()
        fut.set_exception(OSError("disk full"))
        e.add_pending(fut)

    with pytest.raises(OSError, match="disk full"):
        engine.run_sync([1, 2])
    assert names == [Events.ITERATION_STARTED] * 2
    assert engine.last_event_name == Events.COMPLETED
