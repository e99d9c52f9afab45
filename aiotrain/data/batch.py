"""Moving and pinning nested batches (tensors inside tuples, lists, dicts, namedtuples)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

__all__ = ["map_leaves", "map_tensors", "move_batch", "pin_batch"]


def map_leaves(batch: Any, leaf: type | tuple[type, ...], fn: Callable[[Any], Any]) -> Any:
    """Apply ``fn`` to every instance of ``leaf`` in a nested batch (dicts, lists, tuples,
    namedtuples), keeping the container types; anything else is left as it is."""
    if isinstance(batch, leaf):
        return fn(batch)
    if isinstance(batch, dict):
        return type(batch)({k: map_leaves(v, leaf, fn) for k, v in batch.items()})
    if isinstance(batch, list | tuple):
        items = [map_leaves(v, leaf, fn) for v in batch]
        return type(batch)(*items) if hasattr(batch, "_fields") else type(batch)(items)
    return batch


def map_tensors(batch: Any, fn: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    """Apply ``fn`` to every tensor in a nested batch, keeping the container types."""
    import torch  # here, so that a torch-free data worker can import this module

    return map_leaves(batch, torch.Tensor, fn)


def move_batch(batch: Any, device: torch.device) -> Any:
    """Move a batch to ``device``; copies to CUDA are non-blocking (from pinned memory)."""
    non_blocking = device.type == "cuda"
    return map_tensors(batch, lambda t: t.to(device, non_blocking=non_blocking))


def pin_batch(batch: Any) -> Any:
    """Page-lock a CPU batch so the host-to-device copy can overlap compute."""
    return map_tensors(batch, lambda t: t.pin_memory() if t.device.type == "cpu" else t)
