"""``Job``: the one face of a training job, whether it runs here (TrainJob) or in a worker
process of its own (ProcessJob), so a service or a sweep uses either without asking which.

A job is made from a config (checked strictly when it is made), runs once with ``await
job.run()`` and returns a ``JobResult``. While it runs: ``ready`` is set once its engines exist,
``trainer`` and ``evaluator`` are views of them (``state``, ``observe``, ``terminate``),
``identity`` names its run (id and checkpoint folder) and ``run_dir`` its tracked run's folder;
``stop(reason)`` ends it after the step in flight. ``on_evaluation(epoch, metrics)``, when set
before ``run``, is called after every evaluation; a true answer stops the job after that epoch's
handlers (its checkpoints are written), as ``stop`` would.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from ..config import Config
    from ..engine import Snapshot, State
    from ..validation import ValidationMode
    from .identity import RunIdentity
    from .settings import TrainSettings
    from .train_job import JobResult

__all__ = ["EngineView", "EvaluationHook", "Job", "ScoreListener"]

EvaluationHook = Callable[[int, dict[str, Any]], "bool | Awaitable[bool]"]  # metrics: the user's
"""``on_evaluation(epoch, metrics) -> stop?`` (sync or async), called after each evaluation."""

ScoreListener = Callable[[int, float, dict[str, float]], "Awaitable[None] | None"]
"""``on_score(epoch, score, metrics)`` (sync or async), called after each evaluation."""


@runtime_checkable
class EngineView(Protocol):
    """What a job shows of an engine: its state, its events as a stream, and a way to stop it."""

    @property
    def state(self) -> State: ...

    @contextlib.asynccontextmanager
    async def observe(self, *events: object, maxsize: int = 256) -> AsyncIterator[AsyncIterator[Snapshot]]:
        """``async with view.observe(Events.X) as stream: async for snapshot in stream``."""
        raise NotImplementedError
        yield  # an async generator, as the engines' own: what asynccontextmanager wraps

    def terminate(self) -> None: ...


@runtime_checkable
class Job(Protocol):
    """A training job (see the module docstring); ``TrainJob`` and ``ProcessJob`` are jobs."""

    cfg: Config
    settings: TrainSettings
    mode: ValidationMode
    resume: bool | str
    force: bool
    progress: bool
    echo: Callable[[str], None]
    on_evaluation: EvaluationHook | None
    ready: asyncio.Event
    stop_reason: str | None

    @property
    def trainer(self) -> EngineView | None: ...

    @property
    def evaluator(self) -> EngineView | None: ...

    @property
    def identity(self) -> RunIdentity | None: ...

    @property
    def run_dir(self) -> str | None: ...

    async def run(self) -> JobResult: ...

    def stop(self, reason: str) -> None: ...
