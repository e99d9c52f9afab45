"""torch.distributed helpers for runs launched by ``torchrun``.

Every helper is safe to call in a single process that never initialised a process group: then
``rank() == 0``, ``world_size() == 1`` and reductions return their input. That lets metrics,
Checkpoint and tracking call them unconditionally.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from datetime import timedelta
from typing import ParamSpec, TypeVar

import torch
import torch.distributed as dist

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")

__all__ = [
    "all_gather_object",
    "all_reduce",
    "any_rank",
    "barrier",
    "broadcast_object",
    "destroy",
    "init",
    "is_initialized",
    "is_main",
    "local_rank",
    "new_group",
    "rank",
    "rank_zero_only",
    "world_size",
]


def is_initialized() -> bool:
    """True when a default process group exists."""
    return dist.is_available() and dist.is_initialized()


def init(backend: str | None = None, timeout_s: float = 300.0) -> bool:
    """Join the process group described by torchrun's environment; returns True if one was joined.

    Without ``WORLD_SIZE`` > 1 in the environment this does nothing (a plain single process).
    The backend is NCCL when every local rank has a GPU of its own, Gloo otherwise.

    Under torchrun's elastic agent the workers share the agent's store, which outlives a restart
    of the group; the group's keys are written under this attempt's name
    (``TORCHELASTIC_RESTART_COUNT``), so a restarted rank never reads an address its dead
    predecessor left there (which, when one rank reaches this call before another, made the
    restarted group's Gloo set-up connect to a closed port).
    """
    if is_initialized():
        return True
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return False
    missing = [k for k in ("RANK", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise RuntimeError(f"WORLD_SIZE={world} but {', '.join(missing)} not set; launch with torchrun")
    if backend is None:
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
        own_gpu = torch.cuda.is_available() and torch.cuda.device_count() >= local_world
        backend = "nccl" if own_gpu else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local_rank())
    timeout = timedelta(seconds=timeout_s)
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True":
        agent = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world,
                              is_master=False, timeout=timeout)
        attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
        store = dist.PrefixStore(f"aiotrain/attempt_{attempt}", agent)
        dist.init_process_group(backend=backend, store=store, rank=int(os.environ["RANK"]),
                                world_size=world, timeout=timeout)
    else:
        dist.init_process_group(backend=backend, timeout=timeout)
    return True


def destroy() -> None:
    """Leave the process group (no-op when none)."""
    if is_initialized():
        dist.destroy_process_group()


def rank() -> int:
    """This process's global rank (0 without a process group)."""
    if is_initialized():
        return dist.get_rank()
    return int(os.environ.get("RANK", "0")) if int(os.environ.get("WORLD_SIZE", "1")) > 1 else 0


def local_rank() -> int:
    """This process's rank on its node (torchrun's LOCAL_RANK)."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def world_size() -> int:
    """Number of processes in the group (1 without a process group)."""
    return dist.get_world_size() if is_initialized() else 1


def is_main() -> bool:
    """True on rank 0: the process that writes checkpoints and tracking files."""
    return rank() == 0


def rank_zero_only(fn: Callable[P, R]) -> Callable[P, R | None]:
    """Decorator: call ``fn`` on rank 0 only; other ranks get None."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R | None:
        return fn(*args, **kwargs) if is_main() else None

    return wrapper


_OPS = {"sum": "SUM", "max": "MAX", "min": "MIN", "product": "PRODUCT"}


def all_reduce(tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """Reduce ``tensor`` across ranks in place and return it (the input itself when alone).

    Gloo cannot reduce CUDA tensors and NCCL cannot reduce CPU ones, so the tensor is moved to
    the backend's device for the collective and the result copied back.
    """
    if not is_initialized() or world_size() == 1:
        return tensor
    if op not in _OPS:
        raise ValueError(f"all_reduce op must be one of {sorted(_OPS)}, got {op!r}")
    want = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    work = tensor.to(want)
    dist.all_reduce(work, op=getattr(dist.ReduceOp, _OPS[op]))
    if work is not tensor:
        tensor.copy_(work)
    return tensor


def all_gather_object(obj: T, group: dist.ProcessGroup | None = None) -> list[T]:
    """Every rank's ``obj``, in rank order (``[obj]`` when alone); on ``group`` when given."""
    if not is_initialized() or world_size() == 1:
        return [obj]
    out: list[T | None] = [None] * dist.get_world_size(group)
    dist.all_gather_object(out, obj, group=group)
    return out  # type: ignore[return-value]  # every slot filled by a rank's obj


def broadcast_object(obj: T, src: int = 0) -> T:
    """Rank ``src``'s ``obj`` on every rank (``obj`` itself when alone)."""
    if not is_initialized() or world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def any_rank(flag: bool) -> bool:
    """True on every rank when ``flag`` is true on some rank: a decision all ranks must share."""
    if not is_initialized() or world_size() == 1:
        return flag
    return bool(all_reduce(torch.tensor([int(flag)]), op="max").item())


def new_group(backend: str = "gloo") -> dist.ProcessGroup | None:
    """A new group of all ranks on ``backend`` (None when alone). Every rank must call it, in the
    same order. Work that runs beside the training step (checkpoint writes in the I/O executor)
    uses a group of its own so its collectives never interleave with the step's."""
    if not is_initialized() or world_size() == 1:
        return None
    group: dist.ProcessGroup = dist.new_group(backend=backend)  # torch leaves it unannotated
    return group


def barrier() -> None:
    """Wait for every rank (no-op when alone)."""
    if is_initialized() and world_size() > 1:
        dist.barrier()
