"""Check 5, devices: the model's parameters and buffers and the prepared batch on one device."""

from __future__ import annotations

from collections import defaultdict

from .batches import iter_tensors
from .context import CheckContext
from .report import ValidationSection

__all__ = ["check_devices"]


def check_devices(ctx: CheckContext, section: ValidationSection) -> None:
    x, y = ctx.batches[0]
    places: dict[str, set[str]] = defaultdict(set)
    for _, p in ctx.model.named_parameters():
        places["parameters"].add(str(p.device))
    for _, b in ctx.model.named_buffers():
        places["buffers"].add(str(b.device))
    for where, obj in (("input", x), ("labels", y)):
        for t in iter_tensors(obj):
            places[where].add(str(t.device))
    section.add_info(", ".join(f"{w} on {', '.join(sorted(d))}" for w, d in places.items()))
    devices = set().union(*places.values())
    if len(devices) > 1:
        spread = "; ".join(f"{w} on {', '.join(sorted(d))}" for w, d in places.items())
        section.add_error(f"tensors are on different devices ({spread}): move the model with "
                          ".to(device) and the batch in prepare_batch(batch, device)")
    else:
        section.add_pass(f"everything is on {next(iter(devices), 'cpu')}")
