"""Check 7, optimizer: its parameter groups against the model and its learning rates.

Errors: trainable model parameters in no group (they would never be updated), optimizer
parameters that are not the model's (an optimizer built over another copy), a parameter in more
than one group, a non-finite or non-positive learning rate. Frozen parameters in a group are
information only: the optimizer skips tensors without a gradient (fine-tuning code often passes
``model.parameters()`` whole).
"""

from __future__ import annotations

import math
from typing import Any

from .context import CheckContext, name_list
from .report import ValidationSection

__all__ = ["check_optimizer"]


def check_optimizer(ctx: CheckContext, section: ValidationSection) -> None:
    opt = ctx.optimizer
    groups = getattr(opt, "param_groups", None)
    if not isinstance(groups, list):
        section.add_error(f"{type(opt).__name__} has no param_groups: not a torch.optim.Optimizer")
        return
    names = {id(p): n for n, p in ctx.named_params()}
    seen: dict[int, int] = {}
    foreign = 0
    frozen: list[str] = []
    for gi, group in enumerate(groups):
        for p in group["params"]:
            if id(p) in seen:
                section.add_error(f"{names.get(id(p), 'a parameter')} is in groups {seen[id(p)]} and {gi}")
            elif id(p) in names and not p.requires_grad:
                frozen.append(names[id(p)])
            seen.setdefault(id(p), gi)
            foreign += id(p) not in names
        _check_lr(section, gi, group)
    _counts(section, ctx, groups)
    if foreign:
        section.add_error(f"{foreign} optimizer parameter(s) are not the model's: the optimizer was "
                          "built over another model (or before the model was rebuilt / copied)")
    orphans = [n for n, p in ctx.named_params() if p.requires_grad and id(p) not in seen]
    if orphans:
        section.add_error(f"{len(orphans)} trainable parameter(s) are in no optimizer group and "
                          f"would never be updated: {name_list(orphans)}")
    if frozen:
        section.add_info(f"frozen parameters in the optimizer (skipped by it): {name_list(frozen)}")
    if not section.errors:
        section.add_pass("every trainable parameter is optimized exactly once")


def _counts(section: ValidationSection, ctx: CheckContext, groups: list[dict[str, Any]]) -> None:
    model_params = ctx.named_params()
    trainable = [p for _, p in model_params if p.requires_grad]
    n_opt = sum(len(g["params"]) for g in groups)
    elems = sum(p.numel() for g in groups for p in g["params"])
    section.add_info(f"{type(ctx.optimizer).__name__}: {len(groups)} group(s), {n_opt} tensors "
                     f"({elems:,} elements)")
    section.add_info(f"model: {len(model_params)} tensors, {len(trainable)} trainable "
                     f"({sum(p.numel() for p in trainable):,} elements)")


def _check_lr(section: ValidationSection, gi: int, group: dict[str, Any]) -> None:
    if "lr" not in group:
        return
    lr = group["lr"]
    try:
        value = float(lr)
    except (TypeError, ValueError):
        section.add_error(f"group {gi}: learning rate {lr!r} is not a number")
        return
    if not math.isfinite(value) or value <= 0:
        section.add_error(f"group {gi}: learning rate {value} must be finite and positive")
    else:
        section.add_info(f"group {gi}: lr={value:g}, {len(group['params'])} tensors")
