"""Check 1, memory: parameter, gradient and optimizer-state bytes and one step's activation peak.

The sizes are exact tensor byte counts; optimizer state is counted after one real step (a fresh
Adam has none before it). The activation peak is the memory a step holds only while it runs:
on CUDA the peak allocated during the step minus what stays allocated after it; on the CPU the
process's RSS growth across the forward pass (psutil, sampled after forward, backward and step;
an estimate, since the allocator may reuse freed memory).

What is judged against the limit (> 90 % error, > 70 % warning):
- with ``memory_budget``: parameters + buffers + gradients + optimizer state + activation peak;
- on CUDA without one: the device's peak allocated bytes vs its total memory;
- on the CPU without one: the step's RSS growth vs the memory psutil reports available.
When the budget is already exceeded by the parameters, buffers and gradients alone, the step is
not run (it could not fit) and the check fails from the sizes.
"""

from __future__ import annotations

from dataclasses import dataclass

import psutil
import torch

from .context import CheckContext, fmt_bytes, tensor_bytes
from .report import ValidationSection

__all__ = ["ERROR_FRACTION", "WARN_FRACTION", "check_memory"]

ERROR_FRACTION, WARN_FRACTION = 0.9, 0.7


@dataclass
class _Step:
    activation: int  # transient bytes of one step
    used: int  # what is judged when there is no budget (CUDA peak, CPU growth)
    optimizer: int
    available: int = 0  # CPU: memory psutil reported available before the step


def _static_sizes(ctx: CheckContext) -> tuple[int, int, int]:
    params = list(ctx.model.parameters())
    p_bytes = sum(tensor_bytes(p) for p in params)
    b_bytes = sum(tensor_bytes(b) for b in ctx.model.buffers())
    g_bytes = sum(tensor_bytes(p) for p in params if p.requires_grad)
    return p_bytes, b_bytes, g_bytes


def optimizer_bytes(optimizer: object) -> int:
    state = getattr(optimizer, "state", {})
    return sum(tensor_bytes(v) for st in state.values() for v in st.values()
               if isinstance(v, torch.Tensor))


def _measure_cuda(ctx: CheckContext, x: object, y: object) -> _Step:
    dev = ctx.device
    torch.cuda.synchronize(dev)
    torch.cuda.reset_peak_memory_stats(dev)
    ctx.train_step(x, y)
    torch.cuda.synchronize(dev)
    peak, after = torch.cuda.max_memory_allocated(dev), torch.cuda.memory_allocated(dev)
    return _Step(max(0, peak - after), peak, optimizer_bytes(ctx.optimizer))


def _measure_cpu(ctx: CheckContext, x: object, y: object) -> _Step:
    proc = psutil.Process()
    available = psutil.virtual_memory().available
    rss0 = proc.memory_info().rss
    samples: dict[str, int] = {}
    ctx.train_step(x, y, probe=lambda stage: samples.__setitem__(stage, proc.memory_info().rss))
    growth = max(0, max(samples.values()) - rss0)
    return _Step(max(0, samples["forward"] - rss0), growth, optimizer_bytes(ctx.optimizer),
                 available)


def _judge(section: ValidationSection, used: int, limit: int, what: str) -> None:
    frac = used / limit if limit > 0 else float("inf")
    msg = f"{what}: {fmt_bytes(used)} of {fmt_bytes(limit)} ({frac:.0%})"
    if frac > ERROR_FRACTION:
        section.add_error(f"{msg}, over {ERROR_FRACTION:.0%}: training would likely run out of memory")
    elif frac > WARN_FRACTION:
        section.add_warning(f"{msg}, over {WARN_FRACTION:.0%}: little headroom")
    else:
        section.add_pass(f"{msg}: fits")


def check_memory(ctx: CheckContext, section: ValidationSection) -> None:
    p_bytes, b_bytes, g_bytes = _static_sizes(ctx)
    section.add_info(f"parameters: {fmt_bytes(p_bytes)}, buffers: {fmt_bytes(b_bytes)}, "
                     f"gradients: {fmt_bytes(g_bytes)}")
    static = p_bytes + b_bytes + g_bytes
    budget = ctx.memory_budget
    if budget is not None and static > ERROR_FRACTION * budget:
        _judge(section, static, budget, "parameters + buffers + gradients vs memory_budget")
        section.add_info("one training step was not run: it cannot fit the budget")
        return
    if not ctx.batches:
        section.add_warning("activation peak not measured: no usable batch (see Data pipeline)")
        if budget is not None:
            _judge(section, static, budget, "parameters + buffers + gradients vs memory_budget")
        return
    x, y = ctx.batches[0]
    cuda = ctx.device.type == "cuda"
    try:
        step = _measure_cuda(ctx, x, y) if cuda else _measure_cpu(ctx, x, y)
    except torch.cuda.OutOfMemoryError as exc:
        torch.cuda.empty_cache()
        section.add_error(f"one training step ran out of device memory: {exc}".splitlines()[0])
        return
    section.add_info(f"optimizer state: {fmt_bytes(step.optimizer)}, activation peak of one step: "
                     f"{fmt_bytes(step.activation)}")
    if budget is not None:
        need = static + step.optimizer + step.activation
        _judge(section, need, budget, "one training step needs about")
    elif cuda:
        total = torch.cuda.get_device_properties(ctx.device).total_memory
        _judge(section, step.used, total, f"peak allocated on {ctx.device}")
    else:
        _judge(section, step.used, step.available, "process memory growth of one step vs available")
