"""Check 4, numeric stability: NaN/Inf in the model's output and the loss (and, as a cause, the input).

The forward runs in training mode under ``torch.no_grad`` (values are what training sees:
dropout active, BatchNorm on batch statistics).
"""

from __future__ import annotations

import torch

from .batches import iter_tensors
from .context import CheckContext
from .report import ValidationSection

__all__ = ["check_numerics", "non_finite"]


def non_finite(obj: object) -> str | None:
    """``"3 NaN and 1 Inf of 40 values"`` for the floating tensors in ``obj``, or None if all finite."""
    nan = inf = total = 0
    for t in iter_tensors(obj):
        if t.is_floating_point() or t.is_complex():
            nan += int(torch.isnan(t).sum())
            inf += int(torch.isinf(t).sum())
            total += t.numel()
    if not nan and not inf:
        return None
    parts = [f"{nan} NaN" if nan else "", f"{inf} Inf" if inf else ""]
    return f"{' and '.join(p for p in parts if p)} of {total} values"


def check_numerics(ctx: CheckContext, section: ValidationSection) -> None:
    x, y = ctx.batches[0]
    problems = {"input": non_finite(x)}
    ctx.model.train()
    try:
        with torch.no_grad():
            out, loss = ctx.loss(x, y)
    except Exception as exc:
        section.add_error(f"forward or loss raised {type(exc).__name__}: {exc}")
        return
    problems |= {"output": non_finite(out), "loss": non_finite(loss)}
    for where, what in problems.items():
        if what:
            section.add_error(f"{where} contains {what}")
    if problems["input"] and (problems["output"] or problems["loss"]):
        section.add_info("the input batch is already non-finite: fix the data before the model")
    if not any(problems.values()):
        value = float(loss.detach()) if isinstance(loss, torch.Tensor) and loss.numel() == 1 else None
        section.add_pass("output and loss are finite" + (f" (loss {value:.4g})" if value is not None else ""))
