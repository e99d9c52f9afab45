"""Turning a batch into ``(x, y)`` and describing nested tensors in a report line."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch

__all__ = ["INPUT_KEYS", "TARGET_KEYS", "describe", "first_tensor", "unpack_batch",
           "iter_tensors"]

#: Keys of a dict batch tried in order for the model input and for the target.
INPUT_KEYS = ("x", "input", "inputs")
TARGET_KEYS = ("y", "label", "labels", "target", "targets")


def unpack_batch(batch: object, device: torch.device | None = None) -> tuple[Any, Any]:
    """``(x, y)`` from a 2-item tuple/list or a dict with an input key and a target key.

    The tensors are not moved: the devices check is there to report a batch that is not on the
    model's device. Give ``prepare_batch`` (which receives the model's device) to move or reshape.
    """
    if isinstance(batch, dict):
        x = next((batch[k] for k in INPUT_KEYS if k in batch), None)
        y = next((batch[k] for k in TARGET_KEYS if k in batch), None)
        if x is None or y is None:
            raise ValueError(f"a dict batch needs an input key {INPUT_KEYS} and a target key "
                             f"{TARGET_KEYS}; got keys {sorted(map(str, batch))}: pass prepare_batch")
        return x, y
    if isinstance(batch, list | tuple) and len(batch) == 2:
        return batch[0], batch[1]
    size = f" of {len(batch)} items" if isinstance(batch, list | tuple) else ""
    raise ValueError(f"a batch must be (x, y) or a dict; got {type(batch).__name__}{size}: "
                     "pass prepare_batch(batch, device) -> (x, y)")


def iter_tensors(obj: object) -> Iterator[torch.Tensor]:
    """Every tensor inside nested tuples, lists and dict values."""
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from iter_tensors(v)
    elif isinstance(obj, list | tuple):
        for v in obj:
            yield from iter_tensors(v)


def first_tensor(obj: object) -> torch.Tensor | None:
    return next(iter_tensors(obj), None)


def describe(obj: object, depth: int = 0) -> str:
    """``float32[32, 784]``, ``tuple(float32[32, 10], int64[32])``, ``dict(x=..., y=...)``."""
    if isinstance(obj, torch.Tensor):
        dtype = str(obj.dtype).removeprefix("torch.")
        where = "" if obj.device.type == "cpu" else f"@{obj.device}"
        return f"{dtype}[{', '.join(map(str, obj.shape))}]{where}"
    if depth >= 3:
        return "..."
    if isinstance(obj, dict):
        items = [f"{k}={describe(v, depth + 1)}" for k, v in list(obj.items())[:8]]
        return f"{type(obj).__name__}({', '.join(items)}{', ...' if len(obj) > 8 else ''})"
    if isinstance(obj, list | tuple):
        items = [describe(v, depth + 1) for v in obj[:8]]
        return f"{type(obj).__name__}({', '.join(items)}{', ...' if len(obj) > 8 else ''})"
    return type(obj).__name__
