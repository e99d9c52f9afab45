"""Check 8, training loop: three mini-epochs of (up to) two plain training steps each.

The mini-epochs reuse the batches the data pipeline check loaded (the first two), so no batch
is drawn from the loader twice and the result does not depend on shuffling; a loss that drops
across mini-epochs shows that the optimizer really updates the model it was given. A
non-finite loss or an exception is an error; the losses are reported.
"""

from __future__ import annotations

import math

from .context import CheckContext
from .report import ValidationSection

__all__ = ["BATCHES_PER_EPOCH", "MINI_EPOCHS", "check_training_loop"]

MINI_EPOCHS, BATCHES_PER_EPOCH = 3, 2


def check_training_loop(ctx: CheckContext, section: ValidationSection) -> None:
    batches = ctx.batches[:BATCHES_PER_EPOCH]
    ctx.model.train()
    first: list[float] = []
    for epoch in range(1, MINI_EPOCHS + 1):
        losses = []
        for i, (x, y) in enumerate(batches, 1):
            try:
                loss = ctx.train_step(x, y)
            except Exception as exc:
                section.add_error(f"mini-epoch {epoch}, step {i} raised {type(exc).__name__}: {exc}")
                return
            if not math.isfinite(loss):
                section.add_error(f"mini-epoch {epoch}, step {i}: the loss is {loss}")
                return
            losses.append(loss)
        first.append(losses[0])
        section.add_info(f"mini-epoch {epoch}: loss {sum(losses) / len(losses):.4f} "
                         f"({len(losses)} step(s))")
    if first[0] == first[-1]:
        section.add_warning("the loss on the same batch did not change across mini-epochs: is "
                            "the optimizer updating this model (lr, frozen parameters)?")
    section.add_pass(f"{MINI_EPOCHS * len(batches)} training steps ran with finite losses")
