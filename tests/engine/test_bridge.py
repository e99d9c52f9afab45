"""The threading rule: sync code on the compute thread, async code on the loop; the caller's
torch modes reach the steps and handlers; nested engine runs from sync handlers."""

from __future__ import annotations

import asyncio
import threading

import pytest
import torch

from aiotrain import AsyncLoader, Engine, Events


def test_sync_handlers_run_inline_on_the_compute_thread_async_ones_on_the_loop():
    where = {}

    async def main():
        loop_thread = threading.get_ident()

        def step(engine, batch):
            where.setdefault("step", threading.get_ident())

        engine = Engine(step)
        engine.on(Events.ITERATION_COMPLETED, lambda e: where.setdefault("sync", threading.get_ident()))

        @engine.on(Events.EPOCH_COMPLETED)
        async def publish(e):
            where["async"] = threading.get_ident()

        await engine.run([1, 2])
        return loop_thread

    loop_thread = asyncio.run(main())
    assert where["async"] == loop_thread
    assert where["sync"] == where["step"] != loop_thread


@pytest.mark.parametrize("mode", ["no_grad", "inference", "autocast", "default"])
def test_callers_torch_modes_apply_in_steps_and_both_kinds_of_handler(mode):
    seen = []

    def modes(tag):
        seen.append((tag, torch.is_grad_enabled(), torch.is_inference_mode_enabled(),
                     torch.is_autocast_enabled("cpu")))

    engine = Engine(lambda e, b: modes("step"))
    engine.on(Events.ITERATION_COMPLETED, lambda e: modes("sync"))

    @engine.on(Events.EPOCH_COMPLETED)
    async def on_loop(e):
        modes("async")

    async def main():
        contexts = {"no_grad": torch.no_grad, "inference": torch.inference_mode,
                    "autocast": lambda: torch.autocast("cpu", dtype=torch.bfloat16)}
        ctx = contexts.get(mode)
        if ctx is None:
            await engine.run([1])
            return
        with ctx():
            await engine.run([1])
        # the loop thread's own modes are back once the run is over
        modes("after")

    asyncio.run(main())
    expected = {"no_grad": (False, False, False), "inference": (False, True, False),
                "autocast": (True, False, True), "default": (True, False, False)}[mode]
    assert [s[1:] for s in seen if s[0] != "after"] == [expected] * 3
    assert [s[0] for s in seen] == ["step", "sync", "async", *(["after"] if mode != "default" else [])]
    if mode != "default":
        assert seen[-1][1:] == (True, False, False)


class SlowDataset:
    def __len__(self):
        return 4

    async def aget(self, i):
        await asyncio.sleep(0.001)  # served by the loop while the trainer's thread waits
        return torch.tensor([float(i)])


def test_nested_run_sync_from_sync_handler_with_an_async_loader():
    evaluator = Engine(lambda e, b: float(b.sum()))
    totals = []
    evaluator.on(Events.ITERATION_COMPLETED, lambda e: totals.append(e.state.output))
    trainer = Engine(lambda e, b: None)
    states = []

    @trainer.on(Events.EPOCH_COMPLETED)
    def validate(engine):
        with torch.no_grad():
            state = evaluator.run_sync(AsyncLoader(SlowDataset(), 2))
        states.append((state.iteration, torch.is_grad_enabled()))

    trainer.run_sync([1, 2], max_epochs=2)
    assert states == [(2, True), (2, True)]
    assert totals == [1.0, 5.0, 1.0, 5.0]


def test_run_in_a_sync_handler_runs_to_completion_and_returns_the_state_as_in_ignite():
    evaluator = Engine(lambda e, b: b)
    order, seen = [], []
    evaluator.on(Events.COMPLETED, lambda e: order.append(("eval", e.state.iteration)))

    @evaluator.on(Events.EPOCH_COMPLETED)
    def score(e):
        e.state.metrics["total"] = sum(range(7, 7 + e.state.iteration))

    trainer = Engine(lambda e, b: order.append(("train", b)))

    @trainer.on(Events.ITERATION_COMPLETED(every=2))
    def validate(engine):
        state = evaluator.run([7, 8, 9])  # Ignite's habit: blocks, then the metrics are there
        seen.append((state is evaluator.state, evaluator.state.metrics["total"]))

    trainer.on(Events.EPOCH_COMPLETED, lambda e: evaluator.run([1]))  # returned: still works
    trainer.run_sync([1, 2, 3, 4])
    assert order == [("train", 1), ("train", 2), ("eval", 3), ("train", 3), ("train", 4),
                     ("eval", 3), ("eval", 1)]
    assert seen == [(True, 24), (True, 24)]


def test_run_outside_any_event_loop_runs_to_completion_as_in_ignite():
    trainer = Engine(lambda e, b: b * 2)
    state = trainer.run([1, 2, 3], max_epochs=2)  # a plain script, no loop: Ignite's blocking run
    assert state is trainer.state
    assert (state.epoch, state.iteration, state.output) == (2, 6, 6)  # (no thread left: conftest)


def test_run_on_a_loop_is_a_coroutine_and_run_sync_there_refuses_at_once():
    async def main():
        engine = Engine(lambda e, b: b)
        coro = engine.run([1, 2])
        assert asyncio.iscoroutine(coro)
        state = await coro
        with pytest.raises(RuntimeError, match=r"run_sync\(\) called inside a running event loop"):
            engine.run_sync([1])
        return state.iteration

    assert asyncio.run(main()) == 2


def test_a_run_dropped_by_a_sync_handler_on_the_loop_thread_is_an_error_naming_it():
    evaluator = Engine(lambda e, b: b)
    trainer = Engine(lambda e, b: None)

    def validate(engine):
        evaluator.run([1, 2])  # on the loop's thread a coroutine, and nobody awaits it

    trainer.on(Events.EPOCH_COMPLETED, validate)

    async def main():
        trainer.fire_event(Events.EPOCH_COMPLETED)  # sync code on the loop thread

    with pytest.raises(RuntimeError, match=r"validate.*dropped the coroutine.*async def"):
        asyncio.run(main())


def test_resume_after_cancel_runs_the_iteration_completed_handlers_of_the_step_in_flight():
    """A cancel while an ITERATION_COMPLETED handler is in flight: the step ran, so its
    handlers (the interrupted one and those after it) run when run() is called again."""
    counted = []
    gate = {}

    async def main():
        engine = Engine(lambda e, b: b)
        gate["hit"] = asyncio.Event()

        @engine.on(Events.ITERATION_COMPLETED)
        async def slow(e):
            if e.state.iteration == 2 and "cancelled" not in gate:
                gate["hit"].set()
                await asyncio.sleep(30)
            counted.append(("slow", e.state.iteration))

        engine.on(Events.ITERATION_COMPLETED, lambda e: counted.append(("count", e.state.iteration)),
                  priority=-1)
        task = asyncio.create_task(engine.run([1, 2, 3, 4]))
        await gate["hit"].wait()
        gate["cancelled"] = True
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert engine.state.iteration == 2
        await engine.run([1, 2, 3, 4])

    asyncio.run(main())
    assert counted == [("slow", 1), ("count", 1), ("slow", 2), ("count", 2), ("slow", 3),
                       ("count", 3), ("slow", 4), ("count", 4)]


def test_resume_after_cancel_with_sync_handlers_misses_no_iteration():
    counted = []

    async def main():
        engine = Engine(lambda e, b: b)
        release = asyncio.Event()

        @engine.on(Events.ITERATION_STARTED(once=3))
        async def hold(e):
            await release.wait()

        loop, reached = asyncio.get_running_loop(), asyncio.Event()

        @engine.on(Events.ITERATION_COMPLETED)
        def count(e):  # compute thread: tell the loop through call_soon_threadsafe
            counted.append(e.state.iteration)
            if e.state.iteration == 2:
                loop.call_soon_threadsafe(reached.set)

        task = asyncio.create_task(engine.run(list(range(5))))
        await reached.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # cancelled before step 3 ran: the iteration is undone and its batch taken again
        assert engine.state.iteration == 2
        hold_done = asyncio.get_running_loop().call_soon(release.set)
        await engine.run(list(range(5)))
        del hold_done

    asyncio.run(main())
    assert counted == [1, 2, 3, 4, 5]


def test_a_step_that_fails_in_a_cancelled_run_is_not_counted():
    """Cancelled while the step is in flight, and the step then fails (a collective whose peer
    is gone): the iteration is undone, so a stop-point checkpoint names the last step that
    completed and a resumed run takes the failed step's batch again."""
    seen = []

    async def main():
        loop, started = asyncio.get_running_loop(), asyncio.Event()
        cancelled = threading.Event()

        def step(engine, batch):
            if batch == 3 and not started.is_set():
                loop.call_soon_threadsafe(started.set)
                cancelled.wait(10)
                raise RuntimeError("Connection closed by peer")
            seen.append(batch)
            return batch

        engine = Engine(step)
        task = asyncio.create_task(engine.run([1, 2, 3, 4]))
        await started.wait()
        task.cancel()
        loop.call_later(0.05, cancelled.set)
        with pytest.raises((asyncio.CancelledError, RuntimeError)):
            await task
        assert engine.state.iteration == 2
        seen.append("resumed")
        await engine.run([1, 2, 3, 4])

    asyncio.run(main())
    assert seen == [1, 2, "resumed", 3, 4]
