"""Check 3, gradient flow: one forward/backward, then every trainable parameter's gradient.

A parameter that requires grad and gets none is an error (names listed) unless ``allow_unused``
matches its name: an exact name, a module prefix (``"head"`` matches ``head.weight``) or an
``fnmatch`` pattern (``"*.bias"``). NaN/Inf gradients are errors; a gradient whose largest
magnitude is below ``NEAR_ZERO`` is a warning (a vanishing path, a ReLU that died).
"""

from __future__ import annotations

from fnmatch import fnmatchcase

import torch

from .batches import describe
from .context import CheckContext, name_list
from .report import ValidationSection

__all__ = ["NEAR_ZERO", "check_gradients", "matches_allowed"]

NEAR_ZERO = 1e-10


def matches_allowed(name: str, patterns: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") or fnmatchcase(name, p) for p in patterns)


def check_gradients(ctx: CheckContext, section: ValidationSection) -> None:
    x, y = ctx.batches[0]
    ctx.model.train()
    ctx.clear_grads()
    try:
        _, loss = ctx.loss(x, y)
    except Exception as exc:
        section.add_error(f"forward or loss raised {type(exc).__name__}: {exc}")
        return
    if not isinstance(loss, torch.Tensor) or not loss.requires_grad:
        section.add_error(f"the loss ({describe(loss)}) does not require grad: the graph is cut "
                          "(.detach(), .item(), torch.no_grad or frozen parameters)")
        return
    try:
        loss.backward()
    except Exception as exc:
        section.add_error(f"backward raised {type(exc).__name__}: {exc}")
        return
    _judge_grads(ctx, section)


def _judge_grads(ctx: CheckContext, section: ValidationSection) -> None:
    trainable = [(n, p) for n, p in ctx.named_params() if p.requires_grad]
    missing = [n for n, p in trainable if p.grad is None]
    allowed = [n for n in missing if matches_allowed(n, ctx.allow_unused)]
    missing = [n for n in missing if n not in allowed]
    with_grad = [(n, p.grad) for n, p in trainable if p.grad is not None]
    bad = [n for n, g in with_grad if not bool(torch.isfinite(g).all())]
    tiny = [n for n, g in with_grad if n not in bad and g.numel() and float(g.abs().max()) < NEAR_ZERO]
    section.add_info(f"{len(with_grad)} of {len(trainable)} trainable parameters got a gradient")
    if allowed:
        section.add_info(f"no gradient, allowed by allow_unused: {name_list(allowed)}")
    for pattern in ctx.allow_unused:
        if not any(matches_allowed(n, (pattern,)) for n, _ in trainable):
            section.add_warning(f"allow_unused entry {pattern!r} matches no trainable parameter")
    if missing:
        section.add_error(f"{len(missing)} parameter(s) require grad but got none (not used by the "
                          f"loss; freeze them or list them in allow_unused): {name_list(missing)}")
    if bad:
        section.add_error(f"NaN/Inf gradients in {len(bad)} parameter(s): {name_list(bad)}")
    if tiny:
        section.add_warning(f"near-zero gradients (max |g| < {NEAR_ZERO:g}) in: {name_list(tiny)}")
    if with_grad and not bad:
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()).cpu()
                                                     for _, g in with_grad]))
        section.add_info(f"total gradient norm: {float(norm):.4g}")
    if not missing and not bad:
        section.add_pass("gradients reach every trainable parameter")
