"""Check 2, shapes: input, label and output shapes, batch sizes, forward and loss exceptions.

For classification losses (``CrossEntropyLoss`` / ``NLLLoss``, their functional forms, or any
loss given 2-D float logits with 1-D integer targets) the targets must be class indices in
``[0, classes)`` (or the loss's ``ignore_index``); anything else is reported in plain words
instead of the kernel's index error (or, on CUDA, a device-side assert).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from .batches import describe, first_tensor
from .context import CheckContext
from .report import ValidationSection

__all__ = ["check_shapes", "class_count", "label_range_error"]

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


def check_shapes(ctx: CheckContext, section: ValidationSection) -> None:
    x, y = ctx.batches[0]
    section.add_info(f"input: {describe(x)}")
    section.add_info(f"labels: {describe(y)}")
    try:
        with torch.no_grad():
            out = ctx.model(x)
    except Exception as exc:
        section.add_error(f"forward raised {type(exc).__name__}: {exc}")
        return
    section.add_info(f"output: {describe(out)}")
    if _batch_mismatch(section, out, y) or _label_problem(section, ctx, out, y):
        return
    try:
        with torch.no_grad():
            loss = ctx.loss_fn(out, y)
    except Exception as exc:
        section.add_error(f"loss_fn(output, labels) raised {type(exc).__name__}: {exc}")
        return
    if isinstance(loss, torch.Tensor) and loss.numel() != 1:
        section.add_error(f"the loss must be a scalar to call backward(); got {describe(loss)}")
        return
    section.add_pass("output and labels line up")


def _batch_mismatch(section: ValidationSection, out: Any, y: Any) -> bool:
    o, t = first_tensor(out), first_tensor(y)
    if o is None or t is None or o.dim() == 0 or t.dim() == 0:
        return False
    if o.shape[0] != t.shape[0]:
        section.add_error(f"batch size mismatch: output has {o.shape[0]} rows, labels {t.shape[0]}")
        return True
    if t.is_floating_point() and o.shape != t.shape:
        section.add_warning(f"output {tuple(o.shape)} and float labels {tuple(t.shape)} differ in "
                            "shape: an element-wise loss (MSELoss, L1Loss, BCELoss) broadcasts them")
    return False


def _label_problem(section: ValidationSection, ctx: CheckContext, out: Any, y: Any) -> bool:
    problem = label_range_error(ctx.loss_fn, out, y)
    if problem:
        section.add_error(problem)
    return problem is not None
