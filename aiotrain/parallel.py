"""Data-parallel strategies: how a model is wrapped for the ranks torchrun started.

``parallelize(model, strategy, precision, device)`` is the one call the pipeline makes, and a
library call for anyone else:

- ``"ddp"``: every rank holds the whole model; DistributedDataParallel all-reduces gradients.
  Checkpoints are one file written by rank 0.
- ``"fsdp"``: FSDP2 (``torch.distributed.fsdp.fully_shard``), one unit per block and one for the
  root, so each rank holds 1/N of the parameters, gradients and optimizer state, and a block's
  parameters are gathered only while it runs. ``precision`` picks the mixed-precision policy
  (parameters and activations in bf16 / fp16 during compute, gradients reduced in fp32; the
  sharded master weights stay fp32). Checkpoints are sharded directories every rank writes into
  (Checkpoint's ``backend="auto"`` sees the sharded parameters).

Blocks, by default: the root's children that hold parameters, looking one level into
``Sequential`` / ``ModuleList`` containers (the usual ``model.layers`` of a transformer, or a CNN's
``features``); pass ``blocks`` to choose. With a single process both strategies return the model
unchanged: there is nothing to shard or reduce. FSDP2 runs on CPU with Gloo (tested) and on CUDA
with NCCL. The optimizer must be created over the parameters *after* the call for FSDP (the
sharded parameters are new objects); ``Task`` factories that build the optimizer first are
pointed at the new parameters (``optimizer=``, or ``rebind_optimizer``).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from . import distributed as dist

__all__ = ["PRECISIONS", "STRATEGIES", "default_blocks", "parallelize", "rebind_optimizer"]

STRATEGIES = ("ddp", "fsdp")
PRECISIONS = ("fp32", "bf16", "fp16", 32, 16)  # 32 / 16: the pipeline's train.precision


def parallelize(model: nn.Module, strategy: str = "ddp", precision: str | int = "fp32",
                device: torch.device | str | None = None,
                blocks: Iterable[nn.Module] | None = None,
                optimizer: torch.optim.Optimizer | None = None) -> nn.Module:
    """The module to train for ``strategy`` across the current ranks (see the module docstring).

    For ``"ddp"`` a wrapper around ``model`` is returned (keep ``model`` for checkpoints); for
    ``"fsdp"`` ``model`` itself is sharded in place and returned, and ``optimizer`` (created
    before the call, not stepped yet) is pointed at the sharded parameters.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"train.strategy must be one of {', '.join(STRATEGIES)}, got {strategy!r}")
    if precision not in PRECISIONS:
        raise ValueError(f"train.precision must be one of {', '.join(map(str, PRECISIONS))}, got {precision!r}")
    dev = torch.device(device) if device is not None else _param_device(model)
    if dist.world_size() == 1:
        return model
    if strategy == "ddp":
        return nn.parallel.DistributedDataParallel(
            model, device_ids=[dev.index] if dev.type == "cuda" else None)
    before = list(model.parameters())
    _fully_shard(model, precision, dev, blocks)
    if optimizer is not None:
        rebind_optimizer(optimizer, before, model)
    return model


def _fully_shard(model: nn.Module, precision: str | int, device: torch.device,
                 blocks: Iterable[nn.Module] | None) -> None:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mesh = init_device_mesh(device.type, (dist.world_size(),))
    low = {"fp32": None, 32: None, "bf16": torch.bfloat16, "fp16": torch.float16, 16: torch.float16}[precision]
    policy = MixedPrecisionPolicy(param_dtype=low, reduce_dtype=torch.float32 if low else None)
    for block in (default_blocks(model) if blocks is None else blocks):
        fully_shard(block, mesh=mesh, mp_policy=policy)
    fully_shard(model, mesh=mesh, mp_policy=policy)


def default_blocks(model: nn.Module) -> list[nn.Module]:
    """The units FSDP shards separately: children with parameters, one level into containers."""
    out: list[nn.Module] = []
    for child in model.children():
        if isinstance(child, nn.Sequential | nn.ModuleList):
            out.extend(m for m in child if any(True for _ in m.parameters()))
        elif any(True for _ in child.parameters()):
            out.append(child)
    return out


def rebind_optimizer(optimizer: torch.optim.Optimizer, before: list[nn.Parameter],
                     model: nn.Module) -> None:
    """Point ``optimizer``'s parameter groups at ``model``'s parameters after sharding replaced
    them (``before`` is ``list(model.parameters())`` taken before the call, in the same order).
    Only an optimizer that has not stepped yet can be rebound (its state would be unsharded)."""
    if optimizer.state:
        raise ValueError("the optimizer has already stepped: create it after parallelize(), "
                         "or before any step")
    after = list(model.parameters())
    if len(after) != len(before):
        raise ValueError(f"the model had {len(before)} parameters before sharding and {len(after)} after")
    swap = {id(old): new for old, new in zip(before, after, strict=True)}
    for group in optimizer.param_groups:
        try:
            group["params"] = [swap[id(p)] for p in group["params"]]
        except KeyError:
            raise ValueError("the optimizer updates parameters that are not the model's") from None


def _param_device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")
