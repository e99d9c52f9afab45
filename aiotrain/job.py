"""TrainJob: the config-driven training pipeline behind ``aiotrain train`` and embedding services.

A config names a task factory (``task: package.module:function``) that receives the resolved
config and returns a :class:`Task` (model, optimizer, loss, loaders, optional scheduler and
metrics). TrainJob then validates per mode, wires the Engine with metrics, progress, evaluation
every epoch, checkpoints (the latest for resume, the best by score), early stopping, the LR
schedule and tracking, and trains. It is a library object so that a service can run one as a task
and observe its ``trainer`` (``examples/service.py``); the CLI is a thin shell around it.

The CLI and services share this pipeline, so it is a module of its own (TrainJob, Task,
TrainSettings; see docs/architecture.md).
"""

from __future__ import annotations

import asyncio
import functools
import importlib
import inspect
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import torch

from . import distributed as dist
from .config import Conf, Config, ConfigError
from .engine import Engine, State
from .events import Events
from .handlers import Checkpoint, EarlyStopping, LRScheduler, ProgressBar, TrackingHandler
from .runtime import to_compute, to_io
from .tracking import Track
from .validation import RuntimeValidator, ValidationMode, ValidationReport

__all__ = ["JobResult", "Task", "TrainJob", "TrainSettings"]


class TrainSection(msgspec.Struct):
    max_epochs: int = 10
    eval_every: int = 1
    log_every: int = 50
    patience: int | None = None
    min_delta: float = 0.0
    device: str | None = None


class CheckpointSection(msgspec.Struct):
    dir: str | None = None
    n_saved: int = 1
    every: int | None = None  # iterations between "last" checkpoints; None: each epoch


class TrackingSection(msgspec.Struct):
    project: str = "default"
    name: str | None = None
    dir: str | None = None
    tags: list[str] = []
    notes: str = ""
    mode: str = "offline"


class ValidationSection(msgspec.Struct):
    timeout: float = 30.0
    memory_budget: int | None = None
    allow_unused: list[str] = []


class TrainSettings(msgspec.Struct):
    """The part of a training config the runtime reads; the task reads the rest."""

    task: str
    seed: int = 0
    train: TrainSection = msgspec.field(default_factory=TrainSection)
    checkpoint: CheckpointSection = msgspec.field(default_factory=CheckpointSection)
    tracking: TrackingSection = msgspec.field(default_factory=TrackingSection)
    validation: ValidationSection = msgspec.field(default_factory=ValidationSection)


@dataclass
class Task:
    """What a task factory returns. ``metrics`` are evaluated on ``val_loader`` each epoch;
    ``score_name`` (one of them) picks the best checkpoint and drives early stopping."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    loss_fn: Callable[..., torch.Tensor]
    train_loader: Any
    val_loader: Any = None
    scheduler: Any = None
    metrics: dict[str, Any] = field(default_factory=dict)
    prepare_batch: Callable[[Any, torch.device], tuple[Any, Any]] | None = None
    score_name: str | None = None
    score_mode: str = "max"
    resources: list[Any] = field(default_factory=list)


@dataclass
class JobResult:
    """How a job ended: exit code (0 ok, 1 validation errors, 130 interrupted) and where things are."""

    exit_code: int
    run_dir: str | None = None
    checkpoint_dir: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    report: ValidationReport | None = None
    state: State | None = None


def default_prepare_batch(batch: Any, device: torch.device) -> tuple[Any, Any]:
    """``(x, y)`` tuples/lists or ``{"x"/"input", "y"/"label"/"target"}`` dicts, moved to ``device``."""
    if isinstance(batch, dict):
        x = next((batch[k] for k in ("x", "input", "inputs") if k in batch), None)
        y = next((batch[k] for k in ("y", "label", "labels", "target") if k in batch), None)
        if x is None or y is None:
            raise ValueError(f"cannot find inputs and targets in batch keys {sorted(batch)}")
    elif isinstance(batch, list | tuple) and len(batch) == 2:
        x, y = batch
    else:
        raise ValueError(f"a batch must be (x, y) or a dict; got {type(batch).__name__}: "
                         "give the Task a prepare_batch")
    nb = device.type == "cuda"
    return x.to(device, non_blocking=nb), y.to(device, non_blocking=nb)


class TrainJob:
    """One training job from a resolved Config. ``await job.run()`` returns a JobResult.

    ``trainer`` and ``evaluator`` exist once ``run`` has built the task, so a service can
    ``observe`` them; ``ready`` is set at that moment.
    """

    def __init__(self, cfg: Config, *, mode: ValidationMode | str = ValidationMode.TRAIN_ONLY,
                 resume: bool = False, progress: bool = True,
                 echo: Callable[[str], None] = print) -> None:
        self.cfg = cfg
        self.settings: TrainSettings = Conf.validate(TrainSettings, cfg, strict=False)
        self.mode = ValidationMode(mode)
        self.resume, self.progress, self.echo = resume, progress, echo
        self.trainer: Engine | None = None
        self.evaluator: Engine | None = None
        self.ready = asyncio.Event()
        tr = self.settings.tracking
        self.root = Path(tr.dir or os.environ.get("AIOTRAIN_DIR", ".aiotrain"))
        self.checkpoint_dir = Path(self.settings.checkpoint.dir or
                                   self.root / "checkpoints" / tr.project / (tr.name or "default"))

    async def run(self) -> JobResult:
        s = self.settings
        dist.init()
        torch.manual_seed(s.seed)
        task = await self._build_task()
        try:
            device = torch.device(s.train.device or ("cuda" if torch.cuda.is_available() else "cpu"))
            task.model.to(device)
            validator = RuntimeValidator(self.mode, timeout=s.validation.timeout,
                                         memory_budget=s.validation.memory_budget,
                                         allow_unused=tuple(s.validation.allow_unused))
            report = None
            if validator.should_check():
                report = await validator.validate_all(
                    task.model, task.train_loader, task.optimizer, task.loss_fn,
                    prepare_batch=task.prepare_batch or default_prepare_batch)
                if dist.is_main():
                    report.print()
                if not validator.should_train_after(report):
                    return JobResult(report.exit_code, report=report)
            result = await self._train(task, device)
            result.report = report
            return result
        finally:
            for res in task.resources:
                (getattr(res, "cleanup", None) or res.close)()

    async def _build_task(self) -> Task:
        factory = await to_io(_import_factory, self.settings.task)  # imports can take seconds
        if inspect.iscoroutinefunction(factory):
            task = await factory(self.cfg)
        else:  # model building is compute: keep it off the loop
            task = await to_compute(factory, self.cfg)
        if isinstance(task, dict):
            task = Task(**task)
        if not isinstance(task, Task):
            raise ConfigError(f"task: {self.settings.task} returned {type(task).__name__}, "
                              "expected aiotrain.job.Task or a dict of its fields")
        if task.score_name is None and task.metrics:
            task.score_name = next(iter(task.metrics))
        return task

    async def _train(self, task: Task, device: torch.device) -> JobResult:
        s = self.settings
        net = task.model
        if dist.world_size() > 1:
            net = torch.nn.parallel.DistributedDataParallel(
                task.model, device_ids=[device.index] if device.type == "cuda" else None)
        prepare = task.prepare_batch or default_prepare_batch
        trainer = Engine(_train_step(net, task.optimizer, task.loss_fn, prepare, device))
        evaluator = Engine(_eval_step(net, prepare, device))
        evaluator.add_metrics(task.metrics)
        self.trainer, self.evaluator = trainer, evaluator
        main = dist.is_main()
        run = None
        if main and s.tracking.mode != "disabled":  # creating a run writes (and fsyncs) files
            run = await to_io(functools.partial(
                Track.run, s.tracking.project, name=s.tracking.name, config=Conf.to_dict(self.cfg),
                tags=tuple(s.tracking.tags), notes=s.tracking.notes, dir=str(self.root)))
        last, best = self._attach(trainer, evaluator, task, run)
        if self.resume:  # finds, CRC-checks and loads files: off the loop
            await to_io(self._resume, last)
        self.ready.set()
        if main:
            self.echo(f"checkpoints: {self.checkpoint_dir}")
            if run is not None:
                self.echo(f"run: {run.dir}")
        try:
            state = await trainer.run(task.train_loader, max_epochs=s.train.max_epochs)
        except BaseException as exc:
            if run is not None:  # the run is marked, whatever stopped it (Ctrl-C included)
                interrupted = isinstance(exc, KeyboardInterrupt | asyncio.CancelledError)
                await asyncio.shield(run.afinish("interrupted" if interrupted else "crashed",
                                                 error=f"{type(exc).__name__}: {exc}"))
            raise
        if run is not None:
            if best is not None and best.last_checkpoint is not None:
                art = Track.Artifact(f"{s.tracking.project}-model", type="model",
                                     metadata={"score_name": task.score_name,
                                               **{k: float(v) for k, v in evaluator.state.metrics.items()}})
                art.add_file(str(best.last_checkpoint))
                await run.alog_artifact(art, aliases=["best"])
            run.summary.update({f"val/{k}": v for k, v in evaluator.state.metrics.items()})
            await run.afinish()
        return JobResult(0, run_dir=str(run.dir) if run is not None else None,
                         checkpoint_dir=str(self.checkpoint_dir),
                         metrics=dict(evaluator.state.metrics), state=state)

    def _attach(self, trainer: Engine, evaluator: Engine, task: Task, run: Any) -> tuple[Any, Any]:
        """Evaluation, schedule, early stopping, checkpoints, progress and tracking."""
        s = self.settings
        sign = 1.0 if task.score_mode == "max" else -1.0

        def score(engine: Engine) -> float:
            assert task.score_name is not None  # attached only when the task names a score
            return sign * float(engine.state.metrics[task.score_name])

        if task.val_loader is not None and task.metrics:
            @trainer.on(Events.EPOCH_COMPLETED(every=s.train.eval_every), priority=100)
            async def evaluate(engine: Engine) -> None:
                await evaluator.run(task.val_loader, max_epochs=1)
                metrics = {f"val/{k}": v for k, v in evaluator.state.metrics.items()}
                if run is not None:
                    run.log(metrics, step=engine.state.iteration)
                if dist.is_main():
                    shown = "  ".join(f"{k}={float(v):.4f}" for k, v in metrics.items())
                    self.echo(f"epoch {engine.state.epoch}: {shown}")

        if task.scheduler is not None:
            LRScheduler(task.scheduler).attach(trainer)
        stopper = None
        if s.train.patience and task.score_name:
            stopper = EarlyStopping(s.train.patience, score, trainer, min_delta=s.train.min_delta)
            evaluator.add_event_handler(Events.COMPLETED, stopper)
        to_save: dict[str, Any] = {"model": task.model, "optimizer": task.optimizer,
                                   "trainer": trainer, "train_loader": task.train_loader}
        if task.scheduler is not None:
            to_save["scheduler"] = task.scheduler
        if stopper is not None:
            to_save["early_stopping"] = stopper
        last = Checkpoint(to_save, str(self.checkpoint_dir), filename_prefix="last", n_saved=1)
        every = Events.ITERATION_COMPLETED(every=s.checkpoint.every) if s.checkpoint.every \
            else Events.EPOCH_COMPLETED
        trainer.add_event_handler(every, last, priority=-100)
        best = None
        if task.score_name and task.val_loader is not None:
            best = Checkpoint({"model": task.model}, str(self.checkpoint_dir), filename_prefix="best",
                              n_saved=s.checkpoint.n_saved, score_function=lambda _: score(evaluator),
                              score_name=task.score_name,
                              global_step_transform=lambda *_: trainer.state.epoch)
            # on the trainer, after evaluation: the evaluator never waits for a write
            trainer.add_event_handler(Events.EPOCH_COMPLETED(every=s.train.eval_every), best,
                                      priority=50)
        if run is not None:
            TrackingHandler(run, tag="train").attach(  # logs the step's scalar outputs
                trainer, Events.ITERATION_COMPLETED(every=s.train.log_every))
        if self.progress and dist.is_main():
            ProgressBar(persist=True).attach(trainer, output_transform=dict)
        return last, best

    def _resume(self, last: Checkpoint) -> None:
        path = Checkpoint.latest(str(self.checkpoint_dir), filename_prefix="last")
        if path is None:
            self.echo(f"resume: no checkpoint in {self.checkpoint_dir}; starting fresh")
            return
        Checkpoint.load_objects(last.to_save, path)
        trainer = self.trainer
        assert trainer is not None  # built before resuming
        self.echo(f"resume: from {path} (epoch {trainer.state.epoch}, "
                  f"iteration {trainer.state.iteration})")


def _train_step(net: torch.nn.Module, optimizer: Any, loss_fn: Any, prepare: Any,
                device: torch.device) -> Callable[[Engine, Any], dict[str, torch.Tensor]]:
    def train_step(engine: Engine, batch: Any) -> dict[str, torch.Tensor]:
        net.train()
        x, y = prepare(batch, device)
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(net(x), y)
        loss.backward()
        optimizer.step()
        return {"loss": loss.detach()}

    return train_step


def _eval_step(net: torch.nn.Module, prepare: Any, device: torch.device) -> Callable[[Engine, Any], Any]:
    def eval_step(engine: Engine, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
        net.eval()
        with torch.no_grad():
            x, y = prepare(batch, device)
            return net(x), y

    return eval_step


def _import_factory(spec: str) -> Callable[..., Any]:
    """``package.module:function`` -> the function; ConfigError naming the ``task`` key if not."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(f"task: expected 'package.module:function', got {spec!r}")
    if os.getcwd() not in sys.path:  # task modules resolve from the working directory, as with
        sys.path.insert(0, os.getcwd())  # `python -m` (and uvicorn's app loading)
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"task: cannot import module {module_name!r}: {exc}") from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ConfigError(f"task: module {module_name!r} has no function {attr!r}")
    return fn
