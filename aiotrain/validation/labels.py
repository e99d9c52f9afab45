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

__all__ = ["LabelRangeError", "check_label_range", "class_count", "label_layout_error",
           "label_range_error", "regression_on_indices_error"]


class LabelRangeError(ValueError):
    """Targets outside ``[0, classes)``: raised before the loss runs, instead of a kernel error."""


_CLASSIFICATION = (torch.nn.CrossEntropyLoss, torch.nn.NLLLoss)
_CLASSIFICATION_FNS = (F.cross_entropy, F.nll_loss)
_ELEMENTWISE = (torch.nn.MSELoss, torch.nn.L1Loss, torch.nn.SmoothL1Loss, torch.nn.HuberLoss)
_ELEMENTWISE_FNS = (F.mse_loss, F.l1_loss, F.smooth_l1_loss, F.huber_loss)


def _loss_name(loss_fn: Any) -> str:
    """``CrossEntropyLoss`` for a loss module, ``mse_loss`` for a function."""
    return str(getattr(loss_fn, "__name__", None) or type(loss_fn).__name__)


def _named(loss_fn: Any) -> bool:
    return isinstance(loss_fn, _CLASSIFICATION) or loss_fn in _CLASSIFICATION_FNS


def _index_targets(out: Any, y: Any) -> bool:
    return (isinstance(out, torch.Tensor) and isinstance(y, torch.Tensor) and out.dim() >= 2
            and not y.is_floating_point() and y.dtype != torch.bool)


def label_layout_error(loss_fn: Any, out: Any, y: Any) -> str | None:
    """CrossEntropyLoss / NLLLoss take the classes in dim 1, logits ``(B, C, d1, ...)`` with
    targets ``(B, d1, ...)``; sequence logits ``(B, T, V)`` with targets ``(B, T)`` do not fit,
    and that is said in those words (not as a label range problem)."""
    if not (_named(loss_fn) and _index_targets(out, y)) or out.dim() < 3:
        return None
    expected = (out.shape[0], *out.shape[2:])
    if tuple(y.shape) == tuple(expected):
        return None
    name = _loss_name(loss_fn)
    got = f"got logits {tuple(out.shape)} and targets {tuple(y.shape)}"
    if tuple(y.shape) == tuple(out.shape[:-1]):
        return (f"{name} takes the classes in dim 1, logits (B, C, ...) with targets (B, ...); "
                f"{got}, which look like sequence logits (B, T, V): pass "
                "logits.flatten(0, -2) with targets.flatten(), or logits.transpose(1, 2)")
    return f"{name} takes logits (B, C, ...) with targets (B, ...) = {tuple(expected)}; {got}"


def regression_on_indices_error(loss_fn: Any, out: Any, y: Any) -> str | None:
    """An element-wise regression loss (MSELoss, L1Loss, ...) given class-index targets: logits
    ``(B, C, ...)`` with C > 1 and integer targets ``(B, ...)``. torch broadcasts the two (or fails
    with a size error), so this is said in plain words. Integer targets shaped like the output
    (a regression on counts) are left alone."""
    elementwise = isinstance(loss_fn, _ELEMENTWISE) or loss_fn in _ELEMENTWISE_FNS
    if not (elementwise and _index_targets(out, y)) or out.shape[1] < 2:
        return None
    if tuple(y.shape) != (out.shape[0], *out.shape[2:]):
        return None
    return (f"{_loss_name(loss_fn)} compares the output with the targets element by element, "
            f"but the targets look like class indices (integer {tuple(y.shape)} for an output "
            f"{tuple(out.shape)} of {out.shape[1]} classes): for classification use "
            "CrossEntropyLoss; for regression give float targets shaped like the output")


def class_count(loss_fn: Any, out: Any, y: Any) -> int | None:
    """The number of classes when this is a classification loss on index targets, else None."""
    if not _index_targets(out, y) or label_layout_error(loss_fn, out, y) is not None:
        return None  # probabilities, binary targets or a layout problem: no range to check
    named = _named(loss_fn)
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
    if regression_on_indices_error(loss_fn, out, y):
        raise LabelRangeError(f"{_loss_name(loss_fn)} on class-index targets (see Shapes)")
    if label_layout_error(loss_fn, out, y):
        raise LabelRangeError(f"logits {tuple(out.shape)} and targets {tuple(y.shape)} do not fit "
                              "the loss's (B, C, ...) layout (see Shapes)")
    if label_range_error(loss_fn, out, y):
        raise LabelRangeError(f"labels outside [0, {class_count(loss_fn, out, y)}) (see Shapes)")
