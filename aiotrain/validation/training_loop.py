"""Check 8, training loop: three mini-epochs of (up to) two plain training steps each.

The mini-epochs reuse the batches the data pipeline check loaded (the first two), so no batch
is drawn from the loader twice and the result does not depend on shuffling. Before each step
torch's RNG is seeded from the batch's index, so a batch sees the same dropout masks (and any
other random draw) in every mini-epoch: its loss then moves only because the weights moved.

What the losses say:
- **error**: an exception, a non-finite loss, or divergence: the loss on the same batch ends
  ``DIVERGED_FACTOR`` times above where it started (it grows by orders of magnitude), or it rises
  at every mini-epoch on every batch. The message names the learning rate.
- **warning**: the loss on the same batches did not fall from the first mini-epoch to the last.
- **info**: the mean loss of each mini-epoch, and the parameters frozen with
  ``requires_grad=False`` (not trained, by intent or not).
"""

from __future__ import annotations

import math

import torch

from .context import CheckContext, name_list
from .report import ValidationSection

__all__ = ["BATCHES_PER_EPOCH", "DIVERGED_FACTOR", "MINI_EPOCHS", "RISE", "check_training_loop",
           "learning_rates"]

MINI_EPOCHS, BATCHES_PER_EPOCH = 3, 2
#: a loss on one batch that grows to this many times where it started has diverged
DIVERGED_FACTOR = 10.0
#: a loss that rises at every mini-epoch on every batch, by this fraction in all, diverges too
RISE = 0.01
_SEED = 0x5EED  # the base of the per-batch seeds


def learning_rates(optimizer: object) -> str:
    """``lr=0.1`` (or ``lr=0.1, 1e+03`` for several groups) from the optimizer's param groups."""
    groups = getattr(optimizer, "param_groups", None) or []
    rates: list[str] = []
    for group in groups:
        lr = group.get("lr") if isinstance(group, dict) else None
        text = f"{lr:g}" if isinstance(lr, float | int) else repr(lr)
        if lr is not None and text not in rates:
            rates.append(text)
    return f"lr={', '.join(rates)}" if rates else "the optimizer's step size"


def check_training_loop(ctx: CheckContext, section: ValidationSection) -> None:
    batches = ctx.batches[:BATCHES_PER_EPOCH]
    frozen = [n for n, p in ctx.named_params() if not p.requires_grad]
    if frozen:
        section.add_info(f"{len(frozen)} parameter(s) frozen (requires_grad=False), not trained: "
                         f"{name_list(frozen)}")
    ctx.model.train()
    losses: list[list[float]] = [[] for _ in batches]  # per batch, one loss per mini-epoch
    for epoch in range(1, MINI_EPOCHS + 1):
        for i, (x, y) in enumerate(batches):
            where = f"mini-epoch {epoch}, step {i + 1}"
            torch.manual_seed(_SEED + i)  # the same random draws for this batch every mini-epoch
            try:
                loss = ctx.train_step(x, y)
            except Exception as exc:
                section.add_error(f"{where} raised {type(exc).__name__}: {exc}")
                return
            if not math.isfinite(loss):
                section.add_error(_non_finite(where, loss, losses, ctx.optimizer))
                return
            losses[i].append(loss)
        mean = sum(per_batch[-1] for per_batch in losses) / len(losses)
        section.add_info(f"mini-epoch {epoch}: loss {mean:.4f} ({len(losses)} step(s))")
    _judge(section, losses, ctx.optimizer)
    section.add_pass(f"{MINI_EPOCHS * len(batches)} training steps ran with finite losses")


def _non_finite(where: str, loss: float, losses: list[list[float]], optimizer: object) -> str:
    """A non-finite loss; after finite ones on the same data it is the end of a divergence."""
    seen = [v for per_batch in losses for v in per_batch]
    if not seen:
        return f"{where}: the loss is {loss}"
    return (f"{where}: the loss is {loss} after finite losses (the first was {seen[0]:.4g}): "
            f"the training diverges; lower the learning rate ({learning_rates(optimizer)})")


def _growth(first: float, later: float) -> float:
    """How far ``later`` rose above ``first``, as a multiple of ``|first|``."""
    return (later - first) / max(abs(first), 1e-12)


def _judge(section: ValidationSection, losses: list[list[float]], optimizer: object) -> None:
    """Divergence (error), a loss that does not fall (warning), from the per-batch losses."""
    for per_batch in losses:
        peak = max(per_batch[1:])
        if _growth(per_batch[0], peak) >= DIVERGED_FACTOR - 1:
            section.add_error(_diverged(f"grew from {per_batch[0]:.4g} to {peak:.4g}", optimizer))
            return
    if all(_rises(per_batch) for per_batch in losses):
        first, last = losses[0][0], losses[0][-1]
        section.add_error(_diverged(f"rose at every mini-epoch ({first:.4g} to {last:.4g})",
                                    optimizer))
        return
    first = sum(per_batch[0] for per_batch in losses)
    last = sum(per_batch[-1] for per_batch in losses)
    if first == last:
        section.add_warning("the loss on the same batch did not change across mini-epochs: is "
                            "the optimizer updating this model (lr, frozen parameters)?")
    elif last > first:
        section.add_warning(f"the loss on the same batches did not fall across {MINI_EPOCHS} "
                            f"mini-epochs ({first / len(losses):.4g} to {last / len(losses):.4g}): "
                            f"check the learning rate ({learning_rates(optimizer)}), the loss and "
                            "what the optimizer updates")


def _rises(per_batch: list[float]) -> bool:
    steps = zip(per_batch, per_batch[1:], strict=False)
    return all(b > a for a, b in steps) and _growth(per_batch[0], per_batch[-1]) >= RISE


def _diverged(what: str, optimizer: object) -> str:
    return (f"the training diverges: the loss on the same batch {what} over {MINI_EPOCHS} "
            f"mini-epochs; lower the learning rate ({learning_rates(optimizer)})")
