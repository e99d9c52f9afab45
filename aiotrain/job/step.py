"""The built-in train and eval steps: precision, gradient accumulation and clipping, the
numerics policy and per-iteration LR stepping, in one function run on the compute thread.

Accumulation groups count from the start of each epoch (``epoch_iteration``), so they never span
an epoch boundary and a resumed run regroups exactly as an uninterrupted one; the last group of
an epoch may be short, and its loss is averaged over its real size. The gradients of a group in
progress are part of the ``last`` checkpoint (``GradientState``), so a stop mid-group resumes
bit-identically too.

Under ``train.on_nan = skip_step`` a skipped optimizer step is never silent: the step's output
carries the running count (``skipped``, logged as ``train/skipped``), the job echoes each
epoch's count and the total at the end and puts it in the run's summary, and an epoch that
skips more than ``train.skip_limit`` of its optimizer steps (5% by default; one is always
allowed) fails the run (``SkipLimitError``: a training that skips most of its steps is not
training).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch.optim.lr_scheduler import LRScheduler

from ..protocols import StateDict
from ..validation.context import Batch, PrepareBatch

if TYPE_CHECKING:
    from ..engine import Engine, State

__all__ = ["EvalStep", "GradientState", "NonFiniteError", "SkipLimitError", "TrainStep"]


class NonFiniteError(RuntimeError):
    """A non-finite loss, gradient norm or score under ``train.on_nan = stop``."""

    def __init__(self, what: str, value: float, epoch: int, iteration: int) -> None:
        self.what, self.value, self.epoch, self.iteration = what, value, epoch, iteration
        super().__init__(f"{what} is {value} at epoch {epoch}, iteration {iteration} "
                         "(train.on_nan = stop)")


class SkipLimitError(NonFiniteError):
    """Under ``train.on_nan = skip_step``, an epoch skipped more optimizer steps than
    ``train.skip_limit`` allows."""

    def __init__(self, skipped: int, steps: int, limit: float, epoch: int, iteration: int) -> None:
        self.what, self.value, self.epoch, self.iteration = "skipped steps", float(skipped), epoch, iteration
        RuntimeError.__init__(
            self, f"epoch {epoch} skipped {skipped} of its {steps} optimizer steps (non-finite loss "
                  f"or gradient norm; iteration {iteration}), more than train.skip_limit = {limit:g} "
                  "allows: lower the learning rate or check the data (or raise train.skip_limit)")


def autocast(device: torch.device, precision: int | str) -> contextlib.AbstractContextManager[object]:
    """The forward pass's autocast context for ``train.precision`` (32: none)."""
    if precision == 32:
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


class TrainStep:
    """``step(engine, batch) -> {"loss", "lr"[, "grad_norm"]}``: forward under the precision's
    autocast, backward (scaled for float16), and at the end of each accumulation group: unscale,
    clip, the numerics policy, ``optimizer.step()`` and, with ``scheduler.per = iteration``,
    ``scheduler.step()``. ``skipped`` counts optimizer steps dropped by ``on_nan = skip_step``
    (``epoch_skipped`` those of the current epoch); past ``skip_limit`` of an epoch's optimizer
    steps the step raises ``SkipLimitError``."""

    def __init__(self, net: torch.nn.Module, optimizer: torch.optim.Optimizer,
                 loss_fn: Callable[..., torch.Tensor], prepare: PrepareBatch,
                 device: torch.device, *, grad_clip: float | None = None, accumulate: int = 1,
                 precision: int | str = 32, on_nan: str = "stop",
                 iteration_scheduler: LRScheduler | None = None, skip_limit: float = 0.05) -> None:
        self.net, self.optimizer, self.loss_fn, self.prepare = net, optimizer, loss_fn, prepare
        self.device, self.grad_clip, self.accumulate = device, grad_clip, accumulate
        self.precision, self.on_nan, self.scheduler = precision, on_nan, iteration_scheduler
        self.scaler = torch.amp.GradScaler(device.type) if precision == 16 else None
        self.params = [p for g in optimizer.param_groups for p in g["params"]]
        self.skip_limit = skip_limit
        self.skipped = 0
        self.epoch_skipped = 0
        self._epoch = 0  # the epoch ``epoch_skipped`` counts
        self._poisoned = False  # a non-finite loss in the current group (skip_step)

    def __call__(self, engine: Engine, batch: object) -> dict[str, object]:
        st = engine.state
        pos = st.epoch_iteration - 1  # 0-based position in the epoch
        first = pos % self.accumulate == 0
        group = self.accumulate
        if st.epoch_length is not None:
            group = min(group, st.epoch_length - (pos - pos % self.accumulate))
        last = (pos % self.accumulate) + 1 == group
        self.net.train()
        if st.epoch != self._epoch:
            self._epoch, self.epoch_skipped = st.epoch, 0
        if first:
            self.optimizer.zero_grad(set_to_none=True)
            self._poisoned = False
        x, y = self.prepare(batch, self.device)
        with autocast(self.device, self.precision):
            loss = self.loss_fn(self.net(x), y)
        if self.on_nan != "ignore" and not bool(torch.isfinite(loss)):
            if self.on_nan == "stop":
                raise NonFiniteError("the training loss", float(loss.detach()), st.epoch, st.iteration)
            self._poisoned = True
        if not self._poisoned:
            scaled = loss / group if group > 1 else loss
            (self.scaler.scale(scaled) if self.scaler is not None else scaled).backward()
        # the rate this step's update uses (before a per-iteration schedule moves it)
        out: dict[str, object] = {"loss": loss.detach(), "lr": float(self.optimizer.param_groups[0]["lr"])}
        if last:
            norm = self._finish_group(st)
            if norm is not None:
                out["grad_norm"] = norm
        if self.on_nan == "skip_step":
            out["skipped"] = self.skipped
        return out

    def _finish_group(self, st: State) -> torch.Tensor | None:
        if self._poisoned:
            self._skip(st)
            return None
        norm = None
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        if self.grad_clip is not None:
            norm = torch.nn.utils.clip_grad_norm_(self.params, self.grad_clip).detach()
            # float16 overflow is the GradScaler's business: it skips that step itself
            if self.scaler is None and self.on_nan != "ignore" and not bool(torch.isfinite(norm)):
                if self.on_nan == "stop":
                    raise NonFiniteError("the gradient norm", float(norm), st.epoch, st.iteration)
                self._skip(st)
                return norm
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        if self.scheduler is not None:
            self.scheduler.step()
        return norm

    def _skip(self, st: State) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        self.skipped += 1
        self.epoch_skipped += 1
        steps = self._epoch_steps(st)
        if self.epoch_skipped > max(1, int(self.skip_limit * steps)):
            raise SkipLimitError(self.epoch_skipped, steps, self.skip_limit, st.epoch, st.iteration)

    def _epoch_steps(self, st: State) -> int:
        """The optimizer steps of this epoch: all of them when its length is known, else those
        taken so far."""
        done = st.epoch_iteration if st.epoch_length is None else st.epoch_length
        return -(-done // self.accumulate)

    def state_dict(self) -> StateDict:
        """The GradScaler's state and the skipped-step counts (for the ``last`` checkpoint)."""
        return {"scaler": self.scaler.state_dict() if self.scaler is not None else None,
                "skipped": self.skipped, "epoch_skipped": self.epoch_skipped,
                "epoch": self._epoch, "poisoned": self._poisoned}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.skipped = int(state.get("skipped", 0))
        self.epoch_skipped = int(state.get("epoch_skipped", 0))
        self._epoch = int(state.get("epoch", 0))
        self._poisoned = bool(state.get("poisoned", False))


class GradientState:
    """The gradients of an accumulation group in progress, as a checkpointable object."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {name: p.grad for name, p in self.model.named_parameters() if p.grad is not None}

    def load_state_dict(self, state: Mapping[str, torch.Tensor | None]) -> None:
        params = dict(self.model.named_parameters())
        for name, p in params.items():
            grad = state.get(name)
            p.grad = None if grad is None else grad.to(p.device, copy=True)


class EvalStep:
    """``step(engine, batch) -> (output, target)`` in eval mode, without grad, under the same
    autocast as training (outputs are cast back to float32 for the metrics)."""

    def __init__(self, net: torch.nn.Module, prepare: PrepareBatch,
                 device: torch.device, precision: int | str = 32) -> None:
        self.net, self.prepare, self.device, self.precision = net, prepare, device, precision

    def __call__(self, engine: Engine, batch: object) -> Batch:
        self.net.eval()
        with torch.no_grad():
            x, y = self.prepare(batch, self.device)
            with autocast(self.device, self.precision):
                out = self.net(x)
            if self.precision != 32 and isinstance(out, torch.Tensor) and out.is_floating_point():
                out = out.float()
            return out, y

