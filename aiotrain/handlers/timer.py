"""Timer: wall-clock time between engine events (Ignite's Timer)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from ..events import Events

if TYPE_CHECKING:
    from ..engine import Engine

__all__ = ["Timer"]


class Timer:
    """Measures time from ``start`` with pauses, optionally averaged over ``step`` counts.

    ``Timer(average=True).attach(trainer, start=Events.EPOCH_STARTED,
    resume=Events.ITERATION_STARTED, pause=Events.ITERATION_COMPLETED,
    step=Events.ITERATION_COMPLETED)`` gives the mean step time of the current epoch.
    Its hooks are compute hooks: they run on the engine's compute thread when the event fires
    (before that event's loop handlers), so timing each iteration costs no loop crossing. A
    handler reading ``value()`` at the same event therefore already sees the update.
    """

    def __init__(self, average: bool = False) -> None:
        self._average = bool(average)
        self.reset()

    def attach(self, engine: Engine, start: object = Events.STARTED, pause: object = Events.COMPLETED,
               resume: object = None, step: object = None) -> Timer:
        """Reset at ``start``; pause, resume and count a step at the given events (None: never)."""
        engine.add_compute_hook(start, self.reset)
        for event, fn in ((pause, self.pause), (resume, self.resume), (step, self.step)):
            if event is not None:
                engine.add_compute_hook(event, fn)
        return self

    def reset(self, *args: object) -> Timer:
        """Restart from zero, running."""
        self._t0 = time.perf_counter()
        self.total = 0.0
        self.step_count = 0
        self.running = True
        return self

    def pause(self, *args: object) -> None:
        """Stop the clock (no-op when paused)."""
        if self.running:
            self.total += time.perf_counter() - self._t0
            self.running = False

    def resume(self, *args: object) -> None:
        """Restart the clock without clearing the total (no-op when running)."""
        if not self.running:
            self.running = True
            self._t0 = time.perf_counter()

    def step(self, *args: object) -> None:
        """Count one step (the denominator of ``value()`` with ``average=True``)."""
        self.step_count += 1

    def value(self) -> float:
        """Seconds measured so far, divided by the step count (at least 1) when averaging."""
        total = self.total + (time.perf_counter() - self._t0 if self.running else 0.0)
        return total / (max(self.step_count, 1) if self._average else 1)
