"""Task: what a config's task factory returns, and how the factory is found and called.

While the factory builds, the reads of its config are recorded (``aiotrain.config.node.ReadLog``):
a top-level key that neither the runtime nor the factory reads is an error, and when the factory
fails, :class:`TaskError` names the key whose value the failing call was using (or the file it
could not open) in one line, followed by the user's own frames of the traceback.
"""

from __future__ import annotations

import importlib
import inspect
import os
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import torch

# The first optimizer construction imports torch._dynamo (some 800 modules: seconds on a busy
# machine), holding the GIL in long stretches, so no thread of the process, the event loop's
# included, gets to run meanwhile; doing it in a worker thread does not help. Importing it with
# the pipeline pays that once, before a service starts serving, not during its first job.
import torch._dynamo  # noqa: F401, E402, I001

from ..config import Config, ConfigError
from ..config.node import ReadLog, ValueRead, recording_reads
from ..errors import ExitCode, missing_extra, own_frames
from ..runtime import to_compute, to_io
from ..validation.context import Batch, PrepareBatch
from .settings import check_top_level

if TYPE_CHECKING:
    from torch.optim.lr_scheduler import LRScheduler

    from ..engine import Engine
    from ..engine.engine import Attachable
    from .parts import PartSpec

__all__ = ["Task", "TaskError", "build_task", "close_resources", "default_prepare_batch"]


class TaskError(ConfigError):
    """The task factory failed while it built from the config.

    ``msg`` is one line that starts with what it was about: the key(s) whose value the failing
    call was using (``optim.lr = 'fast': ...``, ``full_key`` the first), the file it could not
    read (``path``), or else the factory; ``frames`` is the traceback of the user's own code
    only (aiotrain's, the standard library's and installed packages' frames left out);
    ``exit_code`` is 2 (a config or input error) when a key or a file is named, else 1. The
    factory's exception is the ``__cause__``."""

    def __init__(self, msg: str, *, full_key: str | None = None, path: str | None = None,
                 frames: str = "", exit_code: int = ExitCode.FAILED) -> None:
        super().__init__(msg, full_key=full_key, path=path)
        self.frames, self.exit_code = frames, exit_code


@dataclass
class Task:
    """What a task factory returns. ``metrics`` are evaluated on ``val_loader`` every
    ``train.eval_every`` epochs; ``score_name`` (one of them; default the first) picks the best
    checkpoint and drives early stopping, higher is better unless ``score_mode = "min"``.

    ``train_step(engine, batch)`` replaces the built-in step (which then cannot apply
    ``train.grad_clip`` / ``accumulate`` / ``precision`` / ``on_nan = skip_step`` for it: those
    settings are refused with it). ``handlers`` are parts (objects with ``attach(ctx)``, see
    ``aiotrain.job.parts``) or ``(event, handler)`` pairs, run after the built-in parts and
    before the ``last`` checkpoint. ``resources`` are closed when the job ends (``aclose()``,
    ``cleanup()`` or ``close()``; awaited when they are coroutines)."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    loss_fn: Callable[..., torch.Tensor]
    train_loader: object
    val_loader: object = None
    scheduler: LRScheduler | None = None  # ReduceLROnPlateau is one too
    metrics: dict[str, Attachable] = field(default_factory=dict)
    prepare_batch: PrepareBatch | None = None
    score_name: str | None = None
    score_mode: str = "max"
    resources: list[object] = field(default_factory=list)
    train_step: Callable[[Engine, Any], object] | None = None  # (engine, batch) -> output
    handlers: list[PartSpec] = field(default_factory=list)


def default_prepare_batch(batch: object, device: torch.device) -> Batch:
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


async def build_task(spec: str, cfg: Config) -> Task:
    """Import ``package.module:function`` (off the loop), call it with ``cfg`` (an async factory
    on the loop, a sync one on a compute thread) and check what it returns."""
    factory = await to_io(_import_factory, spec)
    await to_io(_warm_up)
    with recording_reads(cfg) as log:
        try:
            if inspect.iscoroutinefunction(factory):
                task = await factory(cfg)
            else:  # model building is compute: keep it off the loop
                task = await to_compute(factory, cfg)
        except Exception as exc:
            if missing_extra(exc) is not None:  # already one line, naming the extra to install
                raise
            raise _task_error(exc, spec, log) from exc
    if isinstance(task, dict):
        try:
            task = Task(**task)
        except TypeError as exc:
            raise ConfigError(f"task: {spec} returned a dict that is not a Task: {exc}") from None
    if not isinstance(task, Task):
        raise ConfigError(f"task: {spec} returned {type(task).__name__}, "
                          "expected aiotrain.job.Task or a dict of its fields")
    try:
        _check(task, spec)
        check_top_level([str(k) for k in cfg.keys()], log.top, spec)
    except ConfigError:
        await close_resources(task.resources)
        raise
    return task


def _task_error(exc: Exception, spec: str, log: ReadLog) -> TaskError:
    """The TaskError for ``exc`` raised by the factory ``spec``: the key or file it was about
    first, the user's own frames after."""
    frames = "".join(traceback.format_list(own_frames(exc.__traceback__)))
    what = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    failure = f"{type(exc).__name__}: {what}" if what else type(exc).__name__
    if isinstance(exc, ConfigError):  # a key the factory read that is missing, a bad value, ...
        return TaskError(f"{exc.msg} (in the task {spec})", full_key=exc.full_key, path=exc.path,
                         frames=frames, exit_code=ExitCode.USAGE)
    if isinstance(exc, OSError) and exc.filename is not None:  # a missing or unreadable input
        source = _source_of(str(exc.filename), log)
        from_key = f" ({source.key} = {source.value!r})" if source is not None else ""
        return TaskError(f"{exc.filename}: {exc.strerror or what}{from_key} "
                         f"(in the task {spec})", full_key=source.key if source else None,
                         frames=frames, exit_code=ExitCode.USAGE)
    culprits = _culprits(exc, log)
    if not culprits:
        return TaskError(f"the task {spec} failed: {failure}", frames=frames)
    shown = " or ".join(f"{r.key} = {r.value!r}" for r in culprits)
    return TaskError(f"{shown}: the task {spec} failed on {'it' if len(culprits) == 1 else 'them'}:"
                     f" {failure}", full_key=culprits[0].key, frames=frames,
                     exit_code=ExitCode.USAGE)


def _culprits(exc: BaseException, log: ReadLog) -> list[ValueRead]:
    """The config values the failing call of the user's code was using: the innermost frame of
    the traceback whose failing expression read config values, those values."""
    tb = exc.__traceback__
    frames = []
    while tb is not None:
        frames.append((tb.tb_frame.f_code, tb.tb_lasti))
        tb = tb.tb_next
    for code, lasti in reversed(frames):
        found = log.read_within(code, lasti)
        if found:
            return found
    return []


def _source_of(filename: str, log: ReadLog) -> ValueRead | None:
    """The config value a file name came from: the path itself, a folder holding it, or a path
    inside it (a folder that could not be made); the longest when several match."""
    best: ValueRead | None = None
    longest = -1
    for read in log.values:
        raw = read.value if isinstance(read.value, str) else ""
        value = raw.rstrip("/")
        if value and (filename == value or filename.startswith(value + "/")
                      or value.startswith(filename.rstrip("/") + "/")) and len(raw) > longest:
            best, longest = read, len(raw)
    return best


def _check(task: Task, spec: str) -> None:
    if task.score_mode not in ("max", "min"):
        raise ConfigError(f"task: {spec}: score_mode = {task.score_mode!r}; expected 'max' or 'min'")
    if task.score_name is None and task.metrics:
        task.score_name = next(iter(task.metrics))
    if task.score_name is not None and task.score_name not in task.metrics:
        raise ConfigError(f"task: {spec}: score_name {task.score_name!r} is not one of its "
                          f"metrics ({', '.join(task.metrics) or 'none'})")


def _warm_up() -> None:
    """First-use initialisation that would otherwise run inside the factory (an ``async`` one
    runs on the loop): the optimizers' and schedulers' first construction, on an I/O thread."""
    p = torch.nn.Parameter(torch.zeros(1))
    for opt in (torch.optim.Adam, torch.optim.AdamW, torch.optim.SGD):
        opt([p], lr=0.1)
    torch.optim.lr_scheduler.LambdaLR(torch.optim.SGD([p], lr=0.1), lambda _: 1.0)


def _import_factory(spec: str) -> Callable[[Config], Any]:
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
    factory: Callable[[Config], Any] = fn  # gives a Task, a dict of its fields, or a coroutine
    return factory


@runtime_checkable
class _AsyncClosing(Protocol):
    def aclose(self) -> object: ...


@runtime_checkable
class _CleaningUp(Protocol):
    def cleanup(self) -> object: ...


@runtime_checkable
class _Closing(Protocol):
    def close(self) -> object: ...


async def close_resources(resources: list[object]) -> None:
    """Close each resource (``aclose``, ``cleanup`` or ``close``), awaiting coroutines; every one
    is closed even when another fails, and the first failure is raised after."""
    first: BaseException | None = None
    for res in resources:
        try:
            if isinstance(res, _AsyncClosing):
                result = res.aclose()
            elif isinstance(res, _CleaningUp):
                result = res.cleanup()
            elif isinstance(res, _Closing):
                result = res.close()
            else:
                raise TypeError(f"Task.resources: {type(res).__name__} has no aclose, cleanup "
                                "or close")
            if inspect.isawaitable(result):
                await result
        except Exception as exc:
            first = first or exc
    if first is not None:
        raise first
