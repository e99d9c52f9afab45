"""Check 2, shapes: input, label and output shapes, batch sizes, forward and loss exceptions.

Class-index labels outside ``[0, classes)`` are explained here in full (see labels.py); the other
checks then stop at the loss with a short pointer to this section.
"""

from __future__ import annotations

import torch

from .batches import describe, first_tensor
from .context import CheckContext
from .labels import label_layout_error, label_range_error, regression_on_indices_error
from .report import ValidationSection

__all__ = ["check_shapes"]


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


def _batch_mismatch(section: ValidationSection, out: object, y: object) -> bool:
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


def _label_problem(section: ValidationSection, ctx: CheckContext, out: object, y: object) -> bool:
    problem = (regression_on_indices_error(ctx.loss_fn, out, y)
               or label_layout_error(ctx.loss_fn, out, y) or label_range_error(ctx.loss_fn, out, y))
    if problem:
        section.add_error(problem)
    return problem is not None
