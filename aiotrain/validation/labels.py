"""Class-index targets: whether a loss is a classification loss and whether its labels fit.

For classification losses (``CrossEntropyLoss`` / ``NLLLoss``, their functional forms, or any
loss given 2-D float logits with 1-D integer targets) the targets must be class indices in
``[0, classes)`` (or the loss's ``ignore_index``); anything else is explained in plain words
instead of the kernel's index error (or, on CUDA, a device-side assert that poisons the context).
"""

from __future__ import annotations

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


def _loss_name(loss_fn: object) -> str:
    """``CrossEntropyLoss`` for a loss module, ``mse_loss`` for a function."""
    return str(getattr(loss_fn, "__name__", None) or type(loss_fn).__name__)


def _named(loss_fn: object) -> bool:
    return isinstance(loss_fn, _CLASSIFICATION) or loss_fn in _CLASSIFICATION_FNS


def _index_targets(out: object, y: object) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(out, y)`` when they are scores ``(B, C, ...)`` with integer (not bool) targets."""
    if (isinstance(out, torch.Tensor) and isinstance(y, torch.Tensor) and out.dim() >= 2
            and not y.is_floating_point() and y.dtype != torch.bool):
        return out, y
    return None


def label_layout_error(loss_fn: object, out: object, y: object) -> str | None:
    """CrossEntropyLoss / NLLLoss take the classes in dim 1, logits ``(B, C, d1, ...)`` with
    targets ``(B, d1, ...)``; sequence logits ``(B, T, V)`` with targets ``(B, T)`` do not fit,
    and that is said in those words (not as a label range problem)."""
    pair = _index_targets(out, y) if _named(loss_fn) else None
    if pair is None or pair[0].dim() < 3:
        return None
    scores, targets = pair
    expected = (scores.shape[0], *scores.shape[2:])
    if tuple(targets.shape) == tuple(expected):
        return None
    name = _loss_name(loss_fn)
    got = f"got logits {tuple(scores.shape)} and targets {tuple(targets.shape)}"
    if tuple(targets.shape) == tuple(scores.shape[:-1]):
        return (f"{name} takes the classes in dim 1, logits (B, C, ...) with targets (B, ...); "
                f"{got}, which look like sequence logits (B, T, V): pass "
                "logits.flatten(0, -2) with targets.flatten(), or logits.transpose(1, 2)")
    return f"{name} takes logits (B, C, ...) with targets (B, ...) = {tuple(expected)}; {got}"


def regression_on_indices_error(loss_fn: object, out: object, y: object) -> str | None:
    """An element-wise regression loss (MSELoss, L1Loss, ...) given class-index targets: logits
    ``(B, C, ...)`` with C > 1 and integer targets ``(B, ...)``. torch broadcasts the two (or fails
    with a size error), so this is said in plain words. Integer targets shaped like the output
    (a regression on counts) are left alone."""
    elementwise = isinstance(loss_fn, _ELEMENTWISE) or loss_fn in _ELEMENTWISE_FNS
    pair = _index_targets(out, y) if elementwise else None
    if pair is None or pair[0].shape[1] < 2:
        return None
    scores, targets = pair
    if tuple(targets.shape) != (scores.shape[0], *scores.shape[2:]):
        return None
    return (f"{_loss_name(loss_fn)} compares the output with the targets element by element, "
            f"but the targets look like class indices (integer {tuple(targets.shape)} for an output "
            f"{tuple(scores.shape)} of {scores.shape[1]} classes): for classification use "
            "CrossEntropyLoss; for regression give float targets shaped like the output")


def class_count(loss_fn: object, out: object, y: object) -> int | None:
    """The number of classes when this is a classification loss on index targets, else None."""
    pair = _index_targets(out, y)
    if pair is None or label_layout_error(loss_fn, out, y) is not None:
        return None  # probabilities, binary targets or a layout problem: no range to check
    scores, targets = pair
    named = _named(loss_fn)
    logits = scores.is_floating_point() and scores.dim() == 2 and targets.dim() == 1
    return int(scores.shape[1]) if named or logits else None


def label_range_error(loss_fn: object, out: object, y: object) -> str | None:
    """A plain explanation when integer targets fall outside ``[0, classes)``, else None."""
    classes = class_count(loss_fn, out, y)
    if classes is None or not isinstance(y, torch.Tensor) or y.numel() == 0:
        return None  # (a class count implies tensor targets)
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


def check_label_range(loss_fn: object, out: object, y: object) -> None:
    """Raise LabelRangeError (a short message pointing at Shapes) when the labels do not fit."""
    if regression_on_indices_error(loss_fn, out, y):
        raise LabelRangeError(f"{_loss_name(loss_fn)} on class-index targets (see Shapes)")
    if label_layout_error(loss_fn, out, y):
        shapes = [tuple(t.shape) if isinstance(t, torch.Tensor) else None for t in (out, y)]
        raise LabelRangeError(f"logits {shapes[0]} and targets {shapes[1]} do not fit "
                              "the loss's (B, C, ...) layout (see Shapes)")
    if label_range_error(loss_fn, out, y):
        raise LabelRangeError(f"labels outside [0, {class_count(loss_fn, out, y)}) (see Shapes)")
