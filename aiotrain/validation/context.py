"""CheckContext: what every check reads (model, optimizer, loss, prepared batches, settings)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from .labels import check_label_range

__all__ = ["Batch", "CheckContext", "LossFn", "PrepareBatch", "fmt_bytes", "model_device", "name_list",
           "tensor_bytes"]

Batch = tuple[Any, Any]
"""A prepared batch: the model's input and the target, whatever the user's data holds."""
LossFn = Callable[[Any, Any], Any]
"""``loss_fn(model(x), y)``: the user's loss on the user's output and target."""
PrepareBatch = Callable[[Any, torch.device], Batch]
"""``prepare_batch(batch, device) -> (x, y)``: a loader's batch as the model's input and target."""

_LIST_AT_MOST = 10


def tensor_bytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def fmt_bytes(n: float) -> str:
    """``1.5 MiB``: binary units, one decimal."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def name_list(names: list[str]) -> str:
    """The first ten names, comma-separated, and how many more there are."""
    more = f" and {len(names) - _LIST_AT_MOST} more" if len(names) > _LIST_AT_MOST else ""
    return ", ".join(names[:_LIST_AT_MOST]) + more


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of the model's first parameter (or buffer); CPU for a tensorless model."""
    for t in (*model.parameters(), *model.buffers()):
        return t.device
    return torch.device("cpu")


@dataclass
class CheckContext:
    """Inputs shared by the checks; ``batches`` are already ``(x, y)`` pairs from prepare_batch.

    A training step here is the plain one: clear the gradients, ``loss_fn(model(x), y)``,
    ``backward()``, ``optimizer.step()``. The model is called with ``x`` as its one argument.
    """

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    loss_fn: LossFn
    batches: list[Batch] = field(default_factory=list)
    memory_budget: int | None = None
    allow_unused: tuple[str, ...] = ()

    @property
    def device(self) -> torch.device:
        return model_device(self.model)

    def named_params(self) -> list[tuple[str, torch.nn.Parameter]]:
        """Unique named parameters (a tied weight appears once, under its first name)."""
        return list(self.model.named_parameters())

    def clear_grads(self) -> None:
        for p in self.model.parameters():
            p.grad = None

    def loss(self, x: object, y: object) -> tuple[Any, torch.Tensor]:
        """``(output, loss)`` of one forward pass in the current grad mode."""
        out = self.model(x)
        check_label_range(self.loss_fn, out, y)
        loss: torch.Tensor = self.loss_fn(out, y)
        return out, loss

    def train_step(self, x: object, y: object, probe: Callable[[str], None] | None = None) -> float:
        """One plain optimizer step; ``probe(stage)`` is called after forward, backward and step."""
        self.clear_grads()
        _, loss = self.loss(x, y)
        if probe:
            probe("forward")
        loss.backward()
        if probe:
            probe("backward")
        self.optimizer.step()
        if probe:
            probe("step")
        return float(loss.detach())
