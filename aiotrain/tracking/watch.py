"""``run.watch(model)``: parameter and gradient norms and histograms from module hooks.

Every ``log_freq``-th forward call in training mode (the 1st, the ``log_freq + 1``-th, ...)
is a logging step. Parameters are logged from the forward pre-hook of that call
(``parameters/{name}`` histograms, ``param_norm/{name}`` L2 norms); gradients from each
parameter's post-accumulate-grad hook during the backward that follows
(``gradients/{name}``, ``grad_norm/{name}``). As with W&B, these records do not advance the
run's step: they carry the step the next ``log`` call will get, so a reader merging by step
sees them beside that step's metrics. Hooks run wherever the model runs (the compute thread)
and only enqueue records.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch

from ..values import check_int
from .media import histogram_entry

__all__ = ["Watch"]

_LOG_KINDS = ("gradients", "parameters", "all")


class Watch:
    """The hooks ``run.watch(model, log, log_freq)`` installs; ``remove()`` takes them off.

    ``log_side`` enqueues one record at the run's current step without advancing it.
    """

    def __init__(self, log_side: Callable[[Mapping[str, object]], None], model: torch.nn.Module, log: str = "gradients", log_freq: int = 100) -> None:
        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"watch expects a torch.nn.Module, got {type(model).__name__}")
        if log not in _LOG_KINDS:
            raise ValueError(f"watch log= must be one of {_LOG_KINDS}, got {log!r}")
        log_freq = check_int("log_freq", log_freq)
        self.log_side = log_side
        self.model = model
        self.log_freq = log_freq
        self.calls = 0
        self.due = False
        self._params = log in ("parameters", "all")
        self._handles = [model.register_forward_pre_hook(self._on_forward)]
        if log in ("gradients", "all"):
            for name, param in model.named_parameters():
                if param.requires_grad:
                    self._handles.append(param.register_post_accumulate_grad_hook(self._grad_hook(name)))

    def _on_forward(self, module: torch.nn.Module, args: tuple[object, ...]) -> None:
        if not module.training:
            return
        self.due = self.calls % self.log_freq == 0
        self.calls += 1
        if self.due and self._params:
            values: dict[str, object] = {}
            for name, param in self.model.named_parameters():
                values.update(_entries("parameters", "param_norm", name, param.detach()))
            self.log_side(values)

    def _grad_hook(self, name: str) -> Callable[[torch.Tensor], None]:
        def hook(param: torch.Tensor) -> None:
            if self.due and param.grad is not None:
                self.log_side(_entries("gradients", "grad_norm", name, param.grad.detach()))

        return hook

    def remove(self) -> None:
        """Take every hook off the model."""
        handles, self._handles = self._handles, []
        for handle in handles:
            handle.remove()


def _entries(hist_prefix: str, norm_prefix: str, name: str, tensor: torch.Tensor) -> dict[str, object]:
    flat = tensor.float()
    return {f"{hist_prefix}/{name}": histogram_entry(flat), f"{norm_prefix}/{name}": float(flat.norm())}
