"""Class-index targets: whether a loss is a classification loss and whether its labels fit.

For classification losses (``CrossEntropyLoss`` / ``NLLLoss``, their functional forms, or any
loss given 2-D float logits with 1-D integer targets) the targets must be class indices in
``[0, classes)`` (or the loss's ``ignore_index``); anything else is explained in plain words
instead of the kernel's index error (or, on CUDA, a device-side assert that poisons the context).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

__all__ = ["LabelRangeError", "check_label_range", "class_count", "label_range_error"]


class LabelRangeError(ValueError):
    """Targets outside ``[0, classes)``: raised before the loss runs, instead of a kernel error."""


_CLASSIFICATION = (torch.nn.CrossEntropyLoss, torch.nn.NLLLoss)
_CLASSIFICATION_FNS = (F.cross_entropy, F.nll_loss)


def class_count(loss_fn: Any, out: Any, y: Any) -> int | None:
    """The number of classes when this is a classification loss on index targets, else None."""
    if not (isinstance(out, torch.Tensor) and isinstance(y, torch.Tensor)) or out.dim() < 2:
        return None
    if y.is_floating_point() or y.dtype == torch.bool:
        return None  # probabilities or binary targets: no index range to check
    named = isinstance(loss_fn, _CLASSIFICATION) or loss_fn in _CLASSIFICATION_FNS
    logits = out.is_floating_point() and out.dim() == 2 and y.dim() == 1
    return int(out.shape[1]) if named or logits else None


def label_range_error(loss_fn: Any, out: Any, y: Any) -> str | None:
    """A plain explanation when integer targets fall outside ``[0, classes)``, else None."""
    classes = class_count(loss_fn, out, y)
    if classes is None or y.numel() == 0:
        return None
    ignore = getattr(loss_fn, "ignore_index", -100)
    kept = y[y != ignore]
    if kept.numel() == 0:
        return None
    lo, hi = int(kept.min()), int(kept.max())
    if lo >= 0 and hi < classes:
        return None
    bad = int(((kept < 0) | (kept >= classes)).sum())
    return (f"labels must be class indices in [0, {classes}) because the model outputs {classes} "
            f"classes, but {bad} label(s) fall outside (min {lo}, max {hi}); "
            "check the label encoding (1-based labels?) or the model's output size")


def check_label_range(loss_fn: Any, out: Any, y: Any) -> None:
    """Raise LabelRangeError (a short message pointing at Shapes) when the labels do not fit."""
    if label_range_error(loss_fn, out, y):
        raise LabelRangeError(f"labels outside [0, {class_count(loss_fn, out, y)}) (see Shapes)")
