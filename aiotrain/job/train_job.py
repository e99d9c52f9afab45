"""TrainJob: the config-driven training pipeline behind ``aiotrain train`` and services.

``await TrainJob(cfg).run()``: check the runtime's config sections (settings.py), give the run
its identity (identity.py: its own id and checkpoint folder, or the run ``resume`` names),
build the task (task.py), validate per mode, wire the engines from an ordered list of parts
(parts.py) and train. Whatever stops it, it ends in one known state: ``finished`` (done, or
stopped early, with the reason echoed), ``failed`` (a non-finite loss or score under
``train.on_nan = stop``: no best checkpoint or alias from it), ``interrupted`` (cancelled:
Ctrl-C, SIGTERM, a service's cancel; a final ``last`` checkpoint is written at the stop point
first) or ``crashed`` (an exception). Everything the job says goes to ``echo``.
"""

from __future__ import annotations

import asyncio
import functools
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .. import distributed as dist
from ..config import Conf, Config, ConfigError
from ..engine import Engine, State
from ..handlers import Checkpoint, CheckpointError
from ..parallel import parallelize
from ..runtime import to_io
from ..tracking import Track
from ..tracking.run import LiveRunError, Run
from ..validation import RuntimeValidator, ValidationMode, ValidationReport
from .identity import (
    ResumeError,
    RunIdentity,
    check_resumable,
    config_diff,
    find_attempt,
    find_run,
    launch_id,
)
from .parts import HISTORY, HistoryPosition, JobContext, On, Part, PartSpec, default_parts
from .protocol import EvaluationHook, ScoreListener
from .settings import TrainSettings, load_settings, resolved_device
from .sharding import shard_train_loader
from .step import EvalStep, GradientState, NonFiniteError, TrainStep
from .task import Task, build_task, close_resources, default_prepare_batch

__all__ = ["JobResult", "TrainJob"]

EXIT_OK, EXIT_FAILED = 0, 1


@dataclass
class JobResult:
    """How a job ended: exit code (0 ok, 1 validation errors or a failed run), status
    (finished, failed, checked, or the validation failure), where things are, the last
    validation metrics and, when it stopped early, why."""

    exit_code: int
    status: str = "finished"
    run_id: str | None = None
    run_dir: str | None = None
    checkpoint_dir: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    report: ValidationReport | None = None
    state: State | None = None
    stop_reason: str | None = None


class TrainJob:
    """One training job from a config: ``result = await TrainJob(cfg).run()`` (a JobResult).

    The config names a task factory (``task: package.module:function``) that builds the model,
    optimizer, loss and loaders (a :class:`~aiotrain.job.Task`) from the config; the runtime's
    own sections (``train``, ``checkpoint``, ``tracking``, ``validation``, ``scheduler``) are
    checked when the job is created (SchemaError, one line) and ``job.cfg`` is the config with
    every default filled in. The job validates per ``mode``, wires the engines from an ordered
    list of parts, trains, and ends in one known state (see the module docstring). A TrainJob is
    a ``Job`` (``protocol.py``), as ``ProcessJob`` is.

    Args:
        cfg: the job's config (``aiotrain.cli.train.load_config`` reads a file with overrides).
        mode: ``train_only``, ``check_only`` or ``check_and_train`` (the pre-flight checks).
        resume: False (a new run, or what ``train.resume`` says), True (the newest run of the
            project, or of ``tracking.name``), a run id / name, or ``"auto"`` (this run's
            earlier attempt if it has one: see ``identity.find_attempt``; a restart under
            torchrun).
        progress: show a progress bar on the main rank.
        echo: receives every line the job says (the validation report included).
        force: resume despite a config that differs.
        parts: extra parts (``aiotrain.job.parts.Part`` or ``(event, handler)`` pairs), attached
            after the built-in ones and before the ``last`` checkpoint.
        on_score: ``on_score(epoch, score, metrics)`` (sync or async) after every evaluation.
        on_evaluation: ``on_evaluation(epoch, metrics)`` after the score listeners; a true
            answer stops the run after that epoch.

    ``job.stop(reason)`` ends the run after the step in flight. ``trainer`` and ``evaluator``
    exist once ``run`` has built the task; ``ready`` is set once the run's identity and tracked
    run exist too.

    Example::

        >>> import asyncio, sys, tempfile, textwrap
        >>> from pathlib import Path
        >>> from aiotrain.config import Conf
        >>> from aiotrain.job import TrainJob
        >>> tmp = tempfile.TemporaryDirectory()
        >>> folder = Path(tmp.name)
        >>> _ = (folder / "line_task.py").write_text(textwrap.dedent('''
        ...     import torch
        ...     from aiotrain import AsyncLoader
        ...     from aiotrain.job import Task
        ...     from aiotrain.metrics import Loss
        ...
        ...     def build(cfg):                     # the task factory: the config -> a Task
        ...         x = torch.linspace(-1, 1, 32).unsqueeze(1)
        ...         data = list(zip(x, 3 * x))
        ...         model = torch.nn.Linear(1, 1)
        ...         return Task(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=cfg.lr),
        ...                     loss_fn=torch.nn.MSELoss(), train_loader=AsyncLoader(data, 8),
        ...                     val_loader=AsyncLoader(data, 8),
        ...                     metrics={"mse": Loss(torch.nn.MSELoss())}, score_mode="min")
        ... '''))
        >>> sys.path.insert(0, str(folder))               # where ``task`` is imported from
        >>> cfg = Conf.from_dict({"task": "line_task:build", "lr": 0.5, "seed": 0,
        ...                       "train": {"max_epochs": 3},
        ...                       "tracking": {"project": "line", "dir": str(folder / "runs")}})
        >>> log = []
        >>> result = asyncio.run(TrainJob(cfg, progress=False, echo=log.append).run())
        >>> result.status, result.exit_code, result.state.epoch
        ('finished', 0, 3)
        >>> result.metrics["mse"] < 0.1
        True
        >>> [line.split(":")[0] for line in log if line.startswith("epoch")]
        ['epoch 1', 'epoch 2', 'epoch 3']
        >>> sys.path.remove(str(folder)); tmp.cleanup()
    """

    def __init__(self, cfg: Config, *, mode: ValidationMode | str = ValidationMode.TRAIN_ONLY,
                 resume: bool | str = False, progress: bool = True,
                 echo: Callable[[str], None] = print, force: bool = False,
                 parts: Sequence[PartSpec] = (), on_score: ScoreListener | None = None,
                 on_evaluation: EvaluationHook | None = None) -> None:
        self.settings: TrainSettings
        self.settings, self.cfg = load_settings(cfg)
        self.mode = ValidationMode(mode)
        self.resume, self.force, self.progress, self.echo = resume, force, progress, echo
        self.parts = list(parts)
        self.score_listeners: list[ScoreListener] = [on_score] if on_score is not None else []
        self.on_evaluation = on_evaluation
        self.trainer: Engine | None = None
        self.evaluator: Engine | None = None
        self.identity: RunIdentity | None = None
        self.run_dir: str | None = None  # the tracked run's folder, once ``ready``
        self.ready = asyncio.Event()
        self.stop_reason: str | None = None
        self.stop_checkpoint: Path | None = None
        tr = self.settings.tracking
        self.root = Path(tr.dir or os.environ.get("AIOTRAIN_DIR", ".aiotrain"))
        self.runs_root = Path(self.settings.checkpoint.dir or self.root / "checkpoints" / tr.project)

    @property
    def checkpoint_dir(self) -> Path | None:
        """This run's checkpoint folder (known once ``run`` has started)."""
        return self.identity.dir if self.identity is not None else None

    def stop(self, reason: str) -> None:
        """End training after the step in flight; ``reason`` is echoed and kept in the result."""
        self.stop_reason = reason
        if self.trainer is not None:
            self.trainer.terminate()

    async def run(self) -> JobResult:
        s = self.settings
        dist.init()
        torch.manual_seed(s.seed)
        device = resolved_device(s)
        task = await build_task(s.task, self.cfg)
        try:
            self._check_task(task)
            note = shard_train_loader(task.train_loader)
            if note and dist.is_main():
                self.echo(note)
            task.model.to(device)
            report = None
            validator = RuntimeValidator(self.mode, timeout=s.validation.timeout,
                                         memory_budget=s.validation.memory_budget,
                                         allow_unused=tuple(s.validation.allow_unused))
            if validator.should_check():
                report = await validator.validate_all(
                    task.model, task.train_loader, task.optimizer, task.loss_fn,
                    prepare_batch=task.prepare_batch or default_prepare_batch)
                if dist.is_main():
                    self._show(report)
                if not validator.should_train_after(report):
                    status = "checked" if report.exit_code == 0 else "invalid"
                    return JobResult(report.exit_code, status=status, report=report)
            result = await self._train(task, device)
            result.report = report
            return result
        finally:
            await close_resources(task.resources)

    # set-up -----------------------------------------------------------------------------------
    def _check_task(self, task: Task) -> None:
        t = self.settings.train
        if task.train_step is not None:
            builtin = {"train.grad_clip": t.grad_clip is not None, "train.accumulate": t.accumulate > 1,
                       "train.precision": t.precision != 32, "train.on_nan": t.on_nan == "skip_step"}
            used = [k for k, on in builtin.items() if on]
            if used:
                raise ConfigError(f"{used[0]}: applied by the built-in train step, but the task "
                                  "supplies its own train_step; do it there or remove the key")
        if self.settings.scheduler.per == "iteration" and task.scheduler is not None and \
                isinstance(task.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            raise ConfigError("scheduler.per = iteration: ReduceLROnPlateau steps on a validation "
                              "metric, so it can only step per epoch")

    def _show(self, report: ValidationReport) -> None:
        if self.echo is print:  # the terminal gets the coloured report
            report.print()
        else:
            self.echo(report.render().rstrip())

    async def _identity(self, run: Run | None) -> RunIdentity:
        """This run's identity: the resumed one, or a new one named after the tracked run."""
        tr = self.settings.tracking
        if run is not None:
            run_id = run.id
        else:
            run_id = Run(tr.project, mode="disabled").id  # same id scheme, nothing written
        # every rank must name the same folder: rank 0's id wins (a collective: off the loop)
        run_id = await to_io(dist.broadcast_object, run_id)
        return RunIdentity(run_id, tr.project, tr.name, self.runs_root / run_id, {})

    async def _open_run(self, resume_id: str | None, rewind: int | None = None) -> Run | None:
        s = self.settings
        if not dist.is_main() or s.tracking.mode == "disabled":
            return None
        make = functools.partial(Run, s.tracking.project, name=s.tracking.name,
                                 config=Conf.to_dict(self.cfg), tags=tuple(s.tracking.tags),
                                 notes=s.tracking.notes, dir=str(self.root), mode="offline",
                                 mlflow_uri=s.tracking.mlflow_uri)
        if resume_id is None:
            run = await to_io(make)
        else:
            try:
                run = await to_io(functools.partial(make, resume=resume_id, rewind=rewind))
            except LiveRunError as exc:
                raise ResumeError(str(exc)) from None
            except ValueError:  # the earlier run was not tracked (tracking was disabled)
                self.echo(f"resume: run {resume_id} has no tracked run under {self.root}; "
                          "tracking it as a new run")
                run = await to_io(make)
        # its folder exists from now on (a SIGKILL leaves it resumable); periodic flush, sampler
        await run.astart()
        return run

    # training ---------------------------------------------------------------------------------
    async def _train(self, task: Task, device: torch.device) -> JobResult:
        s = self.settings
        main = dist.is_main()
        resumed, load = await self._resumed()
        net = self._wrap(task.model, device, task.optimizer)
        prepare = task.prepare_batch or default_prepare_batch
        step = None
        if task.train_step is None:
            per_iteration = task.scheduler if s.scheduler.per == "iteration" else None
            step = TrainStep(net, task.optimizer, task.loss_fn, prepare, device,
                             grad_clip=s.train.grad_clip, accumulate=s.train.accumulate,
                             precision=s.train.precision, on_nan=s.train.on_nan,
                             iteration_scheduler=per_iteration, skip_limit=s.train.skip_limit)
        process = step if step is not None else task.train_step
        assert process is not None  # the built-in step, or the task's own
        trainer = Engine(process)
        evaluator = Engine(EvalStep(net, prepare, device, s.train.precision))
        evaluator.add_metrics(task.metrics)
        self.trainer, self.evaluator = trainer, evaluator
        # a new run is named after its tracked run; a resumed one reopens its tracked run only
        # once its checkpoint has loaded, so a refused resume leaves that run as it was
        run = await self._open_run(None) if resumed is None else None
        identity = resumed or await self._identity(run)
        self.identity = identity
        ctx = JobContext(s, task, trainer, evaluator, run, identity, self.echo, main, self.stop,
                         score_listeners=self.score_listeners, on_evaluation=self.on_evaluation,
                         train_step=step)
        ctx.to_save.update(model=task.model, optimizer=task.optimizer, trainer=trainer,
                           train_loader=task.train_loader)
        if step is not None:
            ctx.to_save["step"] = step
            if s.train.accumulate > 1:
                ctx.to_save["gradients"] = GradientState(task.model)
        extra = [p if isinstance(p, Part) else On(*p) for p in (*self.parts, *task.handlers)]
        for part in default_parts(progress=self.progress, in_step_schedule=step is not None,
                                  extra=extra):
            part.attach(ctx)
        if resumed is not None:
            cut: int | None = 0  # an attempt that left no checkpoint: its history goes too
            if load:  # finds, CRC-checks and loads files: off the loop
                await to_io(self._load_last, ctx)
                history = ctx.to_save[HISTORY]
                assert isinstance(history, HistoryPosition)
                cut = history.loaded
            elif main:
                self.echo(f"resume: run {resumed.id} left no checkpoint; it starts over")
            run = ctx.run = await self._open_run(resumed.id, cut)
            if run is not None and run.rewound and main:
                self.echo(f"resume: {run.rewound} records logged after that checkpoint moved to "
                          f"{run.dir / 'metrics.rewound.jsonl'}; those steps are logged again")
            self._check_world(resumed)
        self.run_dir = str(run.dir) if run is not None else None
        if main:
            await to_io(identity.write, "running", config=Conf.to_dict(self.cfg),
                        run_dir=self.run_dir, launch=launch_id(), world_size=dist.world_size())
        self.ready.set()
        if main:
            self.echo(f"run: {identity.id}  checkpoints: {identity.dir}")
            if run is not None:
                self.echo(f"tracking: {run.dir}")
        try:
            state = await trainer.run(task.train_loader, max_epochs=s.train.max_epochs)
        except NonFiniteError as exc:
            await self._end(ctx, "failed", str(exc))
            if main:
                self.echo(f"failed: {exc}; no best checkpoint from it; "
                          f"last good checkpoint: {ctx.last.last_checkpoint if ctx.last else None}")
            return self._result(ctx, EXIT_FAILED, "failed", trainer.state)
        except BaseException as exc:
            interrupted = isinstance(exc, KeyboardInterrupt | asyncio.CancelledError)
            if interrupted:
                await asyncio.shield(self._save_stop_point(ctx))
            await asyncio.shield(self._end(ctx, "interrupted" if interrupted else "crashed",
                                           f"{type(exc).__name__}: {exc}"))
            raise
        if self.stop_reason and main:
            self.echo(f"stopped: {self.stop_reason} (epoch {state.epoch}, iteration {state.iteration})")
        await self._end(ctx, "finished", None)
        return self._result(ctx, EXIT_OK, "finished", state)

    async def _resumed(self) -> tuple[RunIdentity | None, bool]:
        """The run this job continues (``resume``, else ``train.resume``) and whether it loads
        that run's checkpoint; refused in one line when it cannot be continued."""
        s = self.settings
        how = self.resume or s.train.resume
        if not how:
            return None, False
        if how == "auto":  # rank 0 decides, so that every rank continues the same run (or none)
            choice, note = await to_io(self._attempt)
            if note:
                self.echo(note)
            if choice is None:
                return None, False
            run_id, load = choice
            resumed = await to_io(find_run, self.runs_root, run_id, None)
        else:
            ref = how if isinstance(how, str) else None
            resumed, load = await to_io(find_run, self.runs_root, ref, s.tracking.name), True
        check_resumable(resumed, Conf.to_dict(self.cfg), self.force)
        return resumed, load

    def _attempt(self) -> tuple[tuple[str, bool] | None, str | None]:
        """On rank 0: this run's earlier attempt (its id, and whether it left a checkpoint),
        then the same answer on every rank (a collective: I/O thread); and a line to say, when
        an attempt is passed over."""
        choice, note = None, None
        if dist.is_main():
            found = find_attempt(self.runs_root, self.settings.tracking.name)
            differ = config_diff(found.record.get("config") or {}, Conf.to_dict(self.cfg)) \
                if found is not None else []
            if found is not None and differ and not self.force:
                note = (f"resume: auto: run {found.id} had another config ({differ[0]}); "
                        "starting a new run")
            elif found is not None:
                choice = (found.id, any(found.dir.glob("last_*")))
        return dist.broadcast_object(choice), note

    def _check_world(self, resumed: RunIdentity) -> None:
        """A resume on another number of ranks: resharded, and said to be so."""
        before, now = resumed.record.get("world_size"), dist.world_size()
        if dist.is_main() and isinstance(before, int) and before != now:
            self.echo(f"resume: warning: the world size changed from {before} to {now}: "
                      "modules and optimizers are resharded (sharded checkpoints; a single-file "
                      "one is whole), but each rank's data share and RNG state differ, so this is "
                      "not the run an unchanged world would have trained")

    def _wrap(self, model: torch.nn.Module, device: torch.device,
              optimizer: torch.optim.Optimizer) -> torch.nn.Module:
        """The module the steps call under torchrun, for ``train.strategy``: ``model`` itself
        alone, its DistributedDataParallel wrapper, or ``model`` sharded in place by FSDP2
        (the one place that decides how a model is distributed; see aiotrain.parallel)."""
        s = self.settings.train
        return parallelize(model, s.strategy, s.precision, device, optimizer=optimizer)

    def _load_last(self, ctx: JobContext) -> None:
        """Load the resumed run's newest loadable ``last`` checkpoint; an error naming the file
        and why when there is none (never a silent fresh start)."""
        folder = ctx.identity.dir
        path = Checkpoint.latest(str(folder), filename_prefix="last")
        if path is None:
            files = sorted(folder.glob("last_*.pt"), key=lambda p: p.stat().st_mtime_ns)
            if not files:
                raise ResumeError(f"resume: run {ctx.identity.id} has no checkpoint in {folder} "
                                  "(it stopped before its first save); start a new run")
            path = files[-1]
        try:
            try:
                Checkpoint.load_objects(ctx.to_save, path)
            except CheckpointError:  # from before checkpoints held the history position?
                Checkpoint.load_objects({k: v for k, v in ctx.to_save.items() if k != HISTORY}, path)
        except CheckpointError as exc:
            raise ResumeError(f"resume: cannot load {exc}") from None
        except (RuntimeError, KeyError, ValueError, TypeError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ResumeError(f"resume: {path} does not fit this job ({first})") from None
        st = ctx.trainer.state
        if dist.is_main():
            self.echo(f"resume: run {ctx.identity.id} from {path} (epoch {st.epoch}, "
                      f"iteration {st.iteration})")

    async def _save_stop_point(self, ctx: JobContext) -> None:
        """After a cancel: the ``last`` checkpoint at the stop point, durable before returning."""
        if ctx.last is None or not dist.is_main() or ctx.trainer.state.iteration == 0:
            return
        try:
            await ctx.last(ctx.trainer)
            await ctx.last.aflush()
        except Exception as exc:  # the run is still marked; say why nothing was kept
            self.echo(f"interrupted: the final checkpoint failed: {exc}")
            return
        self.stop_checkpoint = ctx.last.last_checkpoint
        st = ctx.trainer.state
        self.echo(f"interrupted after iteration {st.iteration} (epoch {st.epoch}): saved "
                  f"{self.stop_checkpoint}; continue with --resume {ctx.identity.id}")

    async def _end(self, ctx: JobContext, status: str, error: str | None) -> None:
        """Mark the run (tracked and ``run.sdn``) and, when it finished, log the best model;
        say how many optimizer steps ``on_nan = skip_step`` skipped (also in the summary)."""
        run, st = ctx.run, ctx.trainer.state
        skipped = ctx.train_step.skipped if ctx.train_step is not None else 0
        if skipped and ctx.main:
            self.echo(f"skipped: {skipped} optimizer steps in all (train.on_nan = skip_step)")
        if ctx.main:
            await to_io(functools.partial(ctx.identity.write, status, epoch=st.epoch,
                                          iteration=st.iteration, error=error,
                                          stop_reason=self.stop_reason))
        if run is None:
            return
        best = ctx.best.last_checkpoint if ctx.best is not None else None
        if status == "finished" and best is not None:
            metrics = {k: float(v) for k, v in ctx.evaluator.state.metrics.items()}
            art = Track.Artifact(f"{self.settings.tracking.project}-model", type="model",
                                 metadata={"score_name": ctx.task.score_name, "run": ctx.identity.id,
                                           **metrics})
            (art.add_dir if best.is_dir() else art.add_file)(str(best))  # a folder when sharded
            await run.alog_artifact(art, aliases=["best"])
        run.summary.update({f"val/{k}": v for k, v in ctx.evaluator.state.metrics.items()})
        if self.settings.train.on_nan == "skip_step":
            run.summary["train/skipped"] = skipped
        await run.afinish(status, error=error)

    def _result(self, ctx: JobContext, code: int, status: str, state: State) -> JobResult:
        return JobResult(code, status=status, run_id=ctx.identity.id,
                         run_dir=str(ctx.run.dir) if ctx.run is not None else None,
                         checkpoint_dir=str(ctx.identity.dir),
                         metrics=dict(ctx.evaluator.state.metrics), state=state,
                         stop_reason=self.stop_reason)
