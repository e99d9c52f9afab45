"""The wiring of a TrainJob as an explicit, ordered list of small parts.

Each part attaches its handlers to the trainer when the job starts; parts attach in list order
and the engine runs the handlers of one event in registration order, so the order of
``default_parts()`` below is the order things happen at the end of an epoch: evaluate, tell the
score listeners, early stopping, the best checkpoint, the epoch's LR step, tracking, progress,
the caller's and the Task's parts, and last the ``last`` checkpoint, which therefore captures the
effects of everything before it. A service or a Task adds parts (``TrainJob(parts=...)``,
``Task.handlers``); they run after the built-in ones and before the ``last`` checkpoint.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, TypeAlias, runtime_checkable

from ..events import Events, FilteredEvent
from ..handlers import Checkpoint, EarlyStopping, LRScheduler, ProgressBar, TrackingHandler
from ..values import as_number
from .protocol import EvaluationHook, ScoreListener
from .step import NonFiniteError, TrainStep

if TYPE_CHECKING:
    from ..engine import Engine
    from ..tracking.run import Run
    from .identity import RunIdentity
    from .settings import TrainSettings
    from .task import Task

__all__ = ["HISTORY", "BestCheckpoint", "EarlyStop", "Evaluate", "HistoryPosition", "JobContext",
           "LastCheckpoint", "On", "Part", "Progress", "Schedule", "ScoreListeners", "SkippedSteps",
           "PartSpec", "TrackTrain", "default_parts"]

HISTORY = "history"  # the ``last`` checkpoint's entry for the tracked run's history position

@dataclass
class JobContext:
    """What parts attach to: the settings, the task, both engines, the tracked run (None when
    tracking is off or on a non-zero rank), the run's identity, and shared state."""

    settings: TrainSettings
    task: Task
    trainer: Engine
    evaluator: Engine
    run: Run | None
    identity: RunIdentity
    echo: Callable[[str], None]
    main: bool
    stop: Callable[[str], None]  # stop training after this step, with a reason that is echoed
    to_save: dict[str, Any] = field(default_factory=dict)  # what the ``last`` checkpoint holds
    score_listeners: list[ScoreListener] = field(default_factory=list)
    on_evaluation: EvaluationHook | None = None
    train_step: TrainStep | None = None  # the built-in step (None when the task has its own)
    best: Checkpoint | None = None
    last: Checkpoint | None = None

    @property
    def evaluates(self) -> bool:
        return self.task.val_loader is not None and bool(self.task.metrics)

    @property
    def eval_event(self) -> FilteredEvent:
        return Events.EPOCH_COMPLETED(every=self.settings.train.eval_every)

    @property
    def sign(self) -> float:
        """+1 when a higher score is better, -1 when lower is."""
        return 1.0 if self.task.score_mode == "max" else -1.0

    def score(self) -> float:
        """The latest validation score, as the metric reports it (not negated)."""
        assert self.task.score_name is not None  # parts score only when the task names one
        return float(self.evaluator.state.metrics[self.task.score_name])


@runtime_checkable
class Part(Protocol):
    """One piece of the wiring: attaches its handlers to ``ctx.trainer`` (or the evaluator)."""

    def attach(self, ctx: JobContext) -> None: ...


@dataclass
class On:
    """A plain handler as a part: ``On(Events.EPOCH_COMPLETED, fn)``."""

    event: object
    handler: Callable[..., object]

    def attach(self, ctx: JobContext) -> None:
        ctx.trainer.add_event_handler(self.event, self.handler)


PartSpec: TypeAlias = "Part | tuple[object, Callable[..., object]]"
"""What ``TrainJob(parts=...)`` and ``Task.handlers`` take: a Part, or an ``(event, handler)``
pair (attached as :class:`On`)."""


class Evaluate:
    """Every ``train.eval_every`` epochs: run the evaluator, publish ``val/*`` metrics in the
    trainer's state (so ``observe`` snapshots carry them), log them, echo one line. A non-finite
    score stops a run under ``train.on_nan = stop``."""

    def attach(self, ctx: JobContext) -> None:
        if not ctx.evaluates:
            return

        async def evaluate(engine: Engine) -> None:
            await ctx.evaluator.run(ctx.task.val_loader, max_epochs=1)
            metrics = {f"val/{k}": _number(v) for k, v in ctx.evaluator.state.metrics.items()}
            engine.state.metrics.update(metrics)
            if ctx.run is not None:
                ctx.run.log(metrics, step=engine.state.iteration)
            if ctx.main:
                shown = "  ".join(f"{k}={v:.4f}" for k, v in metrics.items()
                                  if isinstance(v, float))
                ctx.echo(f"epoch {engine.state.epoch}: {shown}")
            score = ctx.score()
            if not math.isfinite(score) and ctx.settings.train.on_nan == "stop":
                raise NonFiniteError(f"the validation score val/{ctx.task.score_name}", score,
                                     engine.state.epoch, engine.state.iteration)

        ctx.trainer.add_event_handler(ctx.eval_event, evaluate)


class ScoreListeners:
    """After each evaluation, ``listener(epoch, score, metrics)`` for every listener, then the
    job's ``on_evaluation(epoch, metrics)`` hook (each sync or async); a true answer from the
    hook stops the run after this epoch's handlers (e.g. a sweep's pruner)."""

    def attach(self, ctx: JobContext) -> None:
        if not ctx.evaluates:
            return

        async def notify(engine: Engine) -> None:
            metrics = {k: _number(v) for k, v in ctx.evaluator.state.metrics.items()}
            epoch = engine.state.epoch
            for listener in ctx.score_listeners:
                result = listener(epoch, ctx.score(), metrics)
                if inspect.isawaitable(result):
                    await result
            if ctx.on_evaluation is not None:
                verdict = ctx.on_evaluation(epoch, metrics)
                if inspect.isawaitable(verdict):
                    verdict = await verdict
                if verdict:
                    ctx.stop(f"on_evaluation asked to stop after epoch {epoch}")

        ctx.trainer.add_event_handler(ctx.eval_event, notify)


class EarlyStop:
    """``train.patience`` evaluations without an improvement of more than ``train.min_delta``
    stop the run, and say so."""

    def attach(self, ctx: JobContext) -> None:
        s = ctx.settings.train
        if not (s.patience and ctx.evaluates):
            return
        # the part stops the run itself, with a reason, so the stopper gets a quiet trainer
        stopper = EarlyStopping(s.patience, lambda _: ctx.sign * ctx.score(), _Quiet(),
                                min_delta=s.min_delta)
        ctx.to_save["early_stopping"] = stopper

        async def check(engine: Engine) -> None:
            stopper(ctx.evaluator)
            if stopper.counter >= stopper.patience:
                best = ctx.sign * stopper.best_score if stopper.best_score is not None else math.nan
                ctx.stop(f"early stopping: val/{ctx.task.score_name} has not improved on "
                         f"{best:.4f} (by more than {s.min_delta:g}) for {s.patience} evaluations")

        ctx.trainer.add_event_handler(ctx.eval_event, check)


class BestCheckpoint:
    """Keep the ``checkpoint.n_saved`` best models by score, named with the real score; a
    non-finite score is never saved."""

    def attach(self, ctx: JobContext) -> None:
        if not (ctx.task.score_name and ctx.evaluates):
            return
        # ranked by ``sign * score``; the file names show the score itself (loss=0.4120)
        best = Checkpoint({"model": ctx.task.model}, str(ctx.identity.dir),
                          filename_prefix="best", n_saved=ctx.settings.checkpoint.n_saved,
                          score_function=lambda _: ctx.sign * ctx.score(),
                          score_name=ctx.task.score_name, score_sign=ctx.sign,
                          global_step_transform=lambda *_: ctx.trainer.state.epoch)
        ctx.best = best

        async def save(engine: Engine) -> None:
            score = ctx.score()
            if not math.isfinite(score):
                if ctx.main:
                    ctx.echo(f"best: not saved, val/{ctx.task.score_name} is {score}")
                return
            await best(engine)

        ctx.trainer.add_event_handler(ctx.eval_event, save)


class Schedule:
    """The Task's LR scheduler: per epoch (after evaluation, so ReduceLROnPlateau sees the new
    score) or, with ``scheduler.per = iteration``, after every optimizer step (inside the built-in
    train step; a Task's own ``train_step`` gets it as an iteration compute hook)."""

    def __init__(self, in_step: bool) -> None:
        self.in_step = in_step  # the built-in step steps it per iteration

    def attach(self, ctx: JobContext) -> None:
        sched = ctx.task.scheduler
        if sched is None:
            return
        ctx.to_save["scheduler"] = sched
        per = ctx.settings.scheduler.per
        if per == "iteration":
            if not self.in_step:
                LRScheduler(sched).attach(ctx.trainer, Events.ITERATION_COMPLETED)
            return
        handler = LRScheduler(sched)
        if handler.plateau:
            metric = ctx.settings.scheduler.metric or ctx.task.score_name
            handler = LRScheduler(sched, metric_name=metric, metric_engine=ctx.evaluator)
            handler.attach(ctx.trainer, ctx.eval_event)
        else:
            handler.attach(ctx.trainer, Events.EPOCH_COMPLETED)


class TrackTrain:
    """Log the step's scalars (loss, lr, grad_norm) as ``train/*`` every ``train.log_every``
    iterations: the step's output only, never ``trainer.state.metrics`` (which carries the last
    evaluation's ``val/*``: logged once, by ``Evaluate``, at the step they were computed)."""

    def attach(self, ctx: JobContext) -> None:
        if not ctx.main or ctx.settings.tracking.mode == "disabled":
            return
        handlers: list[TrackingHandler] = []

        def log(engine: Engine) -> None:  # ctx.run is set once a resumed run's checkpoint loaded
            if ctx.run is None:
                return
            if not handlers:
                handlers.append(TrackingHandler(ctx.run, tag="train", output_transform=_scalars))
            handlers[0](engine)

        ctx.trainer.add_event_handler(Events.ITERATION_COMPLETED(every=ctx.settings.train.log_every), log)


class SkippedSteps:
    """Under ``train.on_nan = skip_step``: at the end of each epoch that skipped optimizer
    steps, say how many (the running count is logged as ``train/skipped`` with the loss)."""

    def attach(self, ctx: JobContext) -> None:
        step = ctx.train_step
        if step is None or ctx.settings.train.on_nan != "skip_step" or not ctx.main:
            return

        async def report(engine: Engine) -> None:  # async: echo is the loop's
            if step.epoch_skipped:
                ctx.echo(f"epoch {engine.state.epoch}: skipped {step.epoch_skipped} optimizer "
                         f"steps (non-finite loss or gradient norm); {step.skipped} in all")

        ctx.trainer.add_event_handler(Events.EPOCH_COMPLETED, report)


class Progress:
    """A progress bar on the main rank (``progress=False`` leaves it out)."""

    def attach(self, ctx: JobContext) -> None:
        if ctx.main:
            ProgressBar(persist=True).attach(ctx.trainer, output_transform=dict)


class HistoryPosition:
    """What a ``last`` checkpoint says of the tracked run: how many of its history's records it
    covers (``Run.position`` at the save), so a resume cuts exactly what was logged after it
    (``Run(rewind=...)``) and the run's history holds each step once."""

    def __init__(self, ctx: JobContext) -> None:
        self.ctx = ctx
        self.loaded: int | None = None  # what the loaded checkpoint said

    def state_dict(self) -> dict[str, int | None]:
        return {"records": self.ctx.run.position if self.ctx.run is not None else None}

    def load_state_dict(self, state: Mapping[str, object]) -> None:
        records = state.get("records")
        self.loaded = records if isinstance(records, int) and not isinstance(records, bool) else None


class LastCheckpoint:
    """The ``last`` checkpoint (what ``--resume`` loads): everything in ``ctx.to_save`` and the
    tracked run's history position, each epoch or every ``checkpoint.every`` iterations; also
    written at a stop (``TrainJob``)."""

    def attach(self, ctx: JobContext) -> None:
        ctx.to_save[HISTORY] = HistoryPosition(ctx)
        every = ctx.settings.checkpoint.every
        last = Checkpoint(ctx.to_save, str(ctx.identity.dir), filename_prefix="last", n_saved=1)
        ctx.last = last
        event = Events.ITERATION_COMPLETED(every=every) if every else Events.EPOCH_COMPLETED
        ctx.trainer.add_event_handler(event, last)


def default_parts(*, progress: bool, in_step_schedule: bool, extra: list[Part]) -> list[Part]:
    """The built-in wiring, in the order it runs; ``extra`` goes before the last checkpoint."""
    parts: list[Part] = [Evaluate(), ScoreListeners(), EarlyStop(), BestCheckpoint(),
                        Schedule(in_step_schedule), TrackTrain(), SkippedSteps()]
    if progress:
        parts.append(Progress())
    return [*parts, *extra, LastCheckpoint()]


class _Quiet:
    """EarlyStopping's trainer stand-in: the EarlyStop part stops the run with a message."""

    def terminate(self) -> None:
        pass


def _scalars(output: object) -> dict[str, object]:
    """The scalar entries of a step's output (a number alone is ``output``)."""
    items = output.items() if isinstance(output, Mapping) else [("output", output)]
    return {k: v for k, v in items if as_number(v) is not None}


def _number(value: Any) -> Any:
    """Scalar metrics (numbers, 0-d tensors) as floats; anything else as it is."""
    try:
        return float(value)
    except (TypeError, ValueError, RuntimeError):
        return value

