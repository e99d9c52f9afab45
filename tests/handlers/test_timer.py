"""Timer: pause/resume/step arithmetic with a fake clock, and attached to a real Engine."""

from __future__ import annotations

import pytest

from aiotrain.engine import Engine
from aiotrain.events import Events
from aiotrain.handlers import timer as timer_mod
from aiotrain.handlers.timer import Timer


@pytest.fixture
def clock(monkeypatch):
    now = [100.0]
    monkeypatch.setattr(timer_mod.time, "perf_counter", lambda: now[0])
    return now


def test_pause_resume_and_average(clock):
    t = Timer(average=True)
    clock[0] += 2.0
    t.pause()
    clock[0] += 50.0  # paused: not counted
    assert t.value() == pytest.approx(2.0)
    t.pause()  # second pause is a no-op
    t.resume()
    clock[0] += 4.0
    assert t.value() == pytest.approx(6.0)  # no steps yet: divided by 1
    t.step()
    t.step()
    t.step()
    assert t.value() == pytest.approx(2.0)
    t.resume()  # already running: must not restart the clock
    clock[0] += 3.0
    assert t.value() == pytest.approx(3.0)
    t.reset()
    assert t.value() == 0.0 and t.step_count == 0 and t.running


def test_not_averaged_ignores_steps(clock):
    t = Timer()
    t.step()
    t.step()
    clock[0] += 5.0
    assert t.value() == pytest.approx(5.0)


async def test_attached_counts_iterations_and_excludes_paused_time(clock):
    def step(engine, batch):
        clock[0] += 0.5  # the step takes 0.5 "seconds"

    trainer = Engine(step)
    t = Timer(average=True).attach(trainer, start=Events.EPOCH_STARTED,
                                   resume=Events.ITERATION_STARTED,
                                   pause=Events.ITERATION_COMPLETED,
                                   step=Events.ITERATION_COMPLETED)

    @trainer.on(Events.ITERATION_COMPLETED)
    def slow_handler(engine):
        clock[0] += 10.0  # runs after the pause hook of the same event: not timed

    seen = []
    trainer.on(Events.EPOCH_COMPLETED, lambda e: seen.append((t.value(), t.step_count)))
    await trainer.run(range(4), max_epochs=2)
    assert seen == [(pytest.approx(0.5), 4), (pytest.approx(0.5), 4)]


async def test_default_attach_times_the_whole_run(clock):
    def step(engine, batch):
        clock[0] += 1.0

    trainer = Engine(step)
    t = Timer().attach(trainer)
    await trainer.run(range(3), max_epochs=2)
    assert not t.running
    assert t.value() == pytest.approx(6.0)
