"""RuntimeValidator: the eight pre-flight checks, bounded in time, off the event loop, side-effect free."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import torch

from ..runtime import await_future, run, spawn_daemon
from .batches import unpack_batch
from .bounded import CheckTimeout, run_bounded
from .context import Batch, CheckContext, LossFn, PrepareBatch, model_device
from .devices import check_devices
from .gradients import check_gradients
from .memory import check_memory
from .mode import ValidationMode
from .numerics import check_numerics
from .optimizer import check_optimizer
from .pipeline import load_batches
from .report import ValidationReport, ValidationSection
from .shapes import check_shapes
from .snapshot import TrainingSnapshot
from .training_loop import check_training_loop

__all__ = ["RuntimeValidator"]

Check = Callable[[CheckContext, ValidationSection], None]
PIPELINE = "Data pipeline"
#: (section name, check, needs a batch) in report order; the pipeline runs first.
CHECKS: tuple[tuple[str, Check | None, bool], ...] = (
    ("Memory", check_memory, False),
    ("Shapes", check_shapes, True),
    ("Gradient flow", check_gradients, True),
    ("Numeric stability", check_numerics, True),
    ("Devices", check_devices, True),
    (PIPELINE, None, False),
    ("Optimizer", check_optimizer, False),
    ("Training loop", check_training_loop, True),
)


class RuntimeValidator:
    """Checks that one training setup works before a long run.

    ``await validate_all(model, dataloader, optimizer, loss_fn, prepare_batch=None)`` loads the
    first three batches, turns each into ``(x, y)`` with ``prepare_batch(batch, device)`` (default:
    ``(x, y)`` tuples/lists, or dicts keyed ``x``/``input``/``inputs`` and
    ``y``/``label``/``labels``/``target``/``targets``; the model's device is passed, the default
    moves nothing), then runs each check on its own daemon thread, bounded by ``timeout`` seconds.
    A check that hangs is reported as an error and abandoned; the checks after it that use the
    model are not run, since its thread may still be using the model.

    Everything a check touches is snapshotted first and restored after every check (weights,
    buffers, ``.grad``, optimizer state, train/eval flags, torch/CUDA/numpy/random RNG states,
    the loader's RNG generators and position), so CHECK_AND_TRAIN trains exactly as TRAIN_ONLY
    would have. The snapshot is a host copy of the model and optimizer state.
    """

    def __init__(self, mode: ValidationMode | str = ValidationMode.TRAIN_ONLY, *, timeout: float = 30.0,
                 memory_budget: int | None = None, allow_unused: tuple[str, ...] | list[str] = ()) -> None:
        self.mode = ValidationMode(mode)
        if not timeout > 0:
            raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
        if memory_budget is not None and (isinstance(memory_budget, bool) or int(memory_budget) <= 0):
            raise ValueError(f"memory_budget must be a positive number of bytes, got {memory_budget!r}")
        if isinstance(allow_unused, str):
            raise TypeError("allow_unused must be a sequence of parameter names, not one string")
        self.timeout = float(timeout)
        self.memory_budget = None if memory_budget is None else int(memory_budget)
        self.allow_unused = tuple(allow_unused)

    def __repr__(self) -> str:
        return (f"RuntimeValidator(mode={self.mode.value!r}, timeout={self.timeout:g}, "
                f"memory_budget={self.memory_budget}, allow_unused={self.allow_unused})")

    def should_check(self) -> bool:
        """True for CHECK_ONLY and CHECK_AND_TRAIN."""
        return self.mode.checks

    def should_train(self) -> bool:
        """True for TRAIN_ONLY and CHECK_AND_TRAIN (before knowing the report; see should_train_after)."""
        return self.mode.trains

    def should_train_after(self, report: ValidationReport | None) -> bool:
        """Whether to train once ``report`` is known: TRAIN_ONLY always, CHECK_ONLY never,
        CHECK_AND_TRAIN only when the report has no errors (warnings do not block)."""
        if self.mode is ValidationMode.CHECK_AND_TRAIN:
            return report is not None and not report.has_errors()
        return self.should_train()

    def validate_all_sync(self, model: torch.nn.Module, dataloader: object,
                          optimizer: torch.optim.Optimizer, loss_fn: LossFn, *,
                          prepare_batch: PrepareBatch | None = None) -> ValidationReport:
        """``validate_all`` for plain scripts: runs it on its own event loop (``aiotrain.run``)."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return run(self.validate_all(model, dataloader, optimizer, loss_fn,
                                         prepare_batch=prepare_batch))
        raise RuntimeError("validate_all_sync() called inside a running event loop: "
                           "use `await validator.validate_all(...)`")

    async def validate_all(self, model: torch.nn.Module, dataloader: object,
                           optimizer: torch.optim.Optimizer, loss_fn: LossFn, *,
                           prepare_batch: PrepareBatch | None = None) -> ValidationReport:
        """Run the eight checks (TRAIN_ONLY: none; the report is marked skipped)."""
        report = ValidationReport(mode=self.mode, skipped=not self.should_check())
        if report.skipped:
            return report
        start = time.perf_counter()
        snap = await await_future(spawn_daemon(TrainingSnapshot.take, model, optimizer, dataloader))
        try:
            await self._run_checks(report, model, dataloader, optimizer, loss_fn,
                                   prepare_batch or unpack_batch, snap)
        finally:
            await await_future(spawn_daemon(snap.restore))
        report.elapsed = time.perf_counter() - start
        return report

    async def _run_checks(self, report: ValidationReport, model: torch.nn.Module, dataloader: object,
                          optimizer: torch.optim.Optimizer, loss_fn: LossFn, prepare: PrepareBatch,
                          snap: TrainingSnapshot) -> None:
        pipeline = ValidationSection(PIPELINE)
        raw = await load_batches(dataloader, pipeline, self.timeout)
        batches, hung = await self._prepare(raw, prepare, model, pipeline)
        ctx = CheckContext(model, optimizer, loss_fn, batches, self.memory_budget, self.allow_unused)
        for name, check, needs_batch in CHECKS:
            if check is None:
                report.add_section(pipeline)
                continue
            if hung:
                section = ValidationSection(name)
                section.add_warning(f"not run: {hung} timed out and its thread may still be "
                                    "using the model")
            elif needs_batch and not batches:
                section = ValidationSection(name)
                section.add_warning("not run: no usable batch (see Data pipeline)")
            else:
                section = await self._run_check(name, check, ctx, snap)
                hung = f"the {name} check" if _timed_out(section) else None
            report.add_section(section)
        if hung:
            report.sections[-1].add_warning("the model was restored after the checks, but an "
                                            "abandoned check thread may still change it")

    async def _prepare(self, raw: list[object], prepare: PrepareBatch, model: torch.nn.Module,
                       section: ValidationSection) -> tuple[list[Batch], str | None]:
        """``(x, y)`` for each loaded batch; failures are data pipeline errors."""
        device = model_device(model)

        def prepare_all() -> list[Batch]:
            out = []
            for i, batch in enumerate(raw, 1):
                try:
                    x, y = prepare(batch, device)
                except Exception as exc:
                    section.add_error(f"batch {i} cannot be turned into (x, y): "
                                      f"{type(exc).__name__}: {exc}")
                    break
                out.append((x, y))
            return out

        if not raw:
            return [], None
        try:
            batches = await run_bounded(prepare_all, seconds=self.timeout)
        except CheckTimeout as exc:
            section.add_error(f"prepare_batch {exc} (timeout)")
            return [], "prepare_batch"
        if not section.errors:
            section.add_pass(f"{len(batches)} batch(es) loaded and prepared")
        return batches, None

    async def _run_check(self, name: str, check: Check, ctx: CheckContext,
                         snap: TrainingSnapshot) -> ValidationSection:
        """Run one check on its own daemon thread; its section is only seen once it finished."""

        def body() -> ValidationSection:
            section = ValidationSection(name)
            try:
                check(ctx, section)
            except Exception as exc:
                section.add_error(f"raised {type(exc).__name__}: {exc}")
            finally:
                snap.restore()
            return section

        try:
            return await run_bounded(body, seconds=self.timeout)
        except CheckTimeout as exc:
            section = ValidationSection(name)
            section.add_error(f"{exc} (timeout); its thread was abandoned")
            return section


def _timed_out(section: ValidationSection) -> bool:
    return any(e.endswith("its thread was abandoned") for e in section.errors)
