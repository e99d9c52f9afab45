"""Staging: reused CPU buffers that a snapshot is copied into, and the gate that lets part of that
copy run behind the next step.

A save copies every tensor of the state into a buffer allocated on the first save and reused
after, so a save costs a memcpy, not fresh allocations and page faults (on CUDA the buffers are
pinned and the copy runs on a side stream). Parameters and optimizer state change only when an
optimizer steps, so their copy may run while the next step's forward and backward read them:
:data:`GATE` holds every such copy in flight, and a global optimizer step pre-hook makes any
``optimizer.step()`` wait until they are done. Everything else (buffers such as BatchNorm's
running statistics, which forward updates in place, and plain objects' state) is copied at the
event itself.
"""

from __future__ import annotations

import concurrent.futures as cf
import copy
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, cast

import torch
from torch.optim.optimizer import register_optimizer_step_pre_hook

__all__ = ["GATE", "CopyGate", "DTensor", "Pairs", "Staging", "freeze", "map_tree"]

Pairs = list[tuple[torch.Tensor, torch.Tensor]]
Where = tuple[Any, ...]


def _dtensor_type() -> type | None:
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # a torch built without distributed support
        return None
    return DTensor


DTensor: Any = _dtensor_type()  # None in a torch without torch.distributed


class Staging:
    """Reusable CPU buffers (pinned for CUDA sources) keyed by their place in the state tree."""

    def __init__(self) -> None:
        self._buffers: dict[Where, torch.Tensor] = {}
        self._shells: dict[Where, Any] = {}  # DTensor wrappers around buffers, for sharded writes
        self._streams: dict[torch.device, Any] = {}

    def assign(self, tree: Any, deferred: Callable[[Where], bool] = lambda where: False,
               ) -> tuple[Any, Pairs, Pairs]:
        """``tree`` with each tensor replaced by its staging buffer, and the (source, buffer) pairs
        still to copy: those to copy now, and those ``deferred(path)`` lets wait for the gate.
        Tensors sharing memory share one buffer (ties stay tied); a DTensor keeps its sharding
        and stages its local shard."""
        now: Pairs = []
        later: Pairs = []
        seen: dict[tuple[Any, ...], torch.Tensor] = {}
        used: dict[Where, torch.Tensor] = {}
        shells: dict[Where, Any] = {}

        def buffer(t: torch.Tensor, where: Where) -> torch.Tensor:
            alias = _alias_key(t)
            if alias in seen:
                return seen[alias]
            buf = self._buffers.get(where)
            if buf is None or buf.shape != t.shape or buf.dtype != t.dtype or buf.is_pinned() != t.is_cuda:
                buf = torch.empty(t.shape, dtype=t.dtype, pin_memory=t.is_cuda)
            used[where] = seen[alias] = buf
            (later if deferred(where) else now).append((t, buf))
            return buf

        def stage(t: torch.Tensor, where: Where) -> Any:
            if DTensor is not None and isinstance(t, DTensor):
                local = cast(Any, t)._local_tensor
                if not _stageable(local):
                    return t.detach().to("cpu")
                shell = self._shell(t, buffer(local, where), where)
                shells[where] = shell
                return shell
            if not _stageable(t):
                return t.detach().to("cpu", copy=True)
            return buffer(t, where)

        out = map_tree(tree, stage, lambda leaf: leaf)
        self._buffers, self._shells = used, shells  # buffers of tensors that are gone are freed
        return out, now, later

    def _shell(self, t: Any, buf: torch.Tensor, where: Where) -> Any:
        """A DTensor with ``t``'s mesh, placements and global shape over the CPU buffer."""
        shell = self._shells.get(where)
        if (shell is None or shell.shape != t.shape or shell.placements != t.placements
                or shell.device_mesh != t.device_mesh):
            if t.device_mesh.device_type == "cpu":
                shell = DTensor.from_local(buf, t.device_mesh, t.placements, run_check=False,
                                            shape=t.shape, stride=t.stride())
            else:  # from_local would move the buffer to the mesh's device: swap it in instead
                shell = t.detach().to("cpu")
        shell._local_tensor = buf
        return shell

    @property
    def buffers(self) -> dict[Where, torch.Tensor]:
        """The buffers in use, by their place in the state tree."""
        return self._buffers

    def copy(self, pairs: Pairs) -> None:
        """memcpy every source into its buffer; CUDA sources on a side stream, then synchronized."""
        on_cuda = []
        with torch.no_grad():
            for src, dst in pairs:
                if src.is_cuda:
                    on_cuda.append((src, dst))
                else:
                    dst.copy_(src)
        if on_cuda:
            self._copy_cuda(on_cuda)

    def _copy_cuda(self, pairs: Pairs) -> None:
        devices = {src.device for src, _ in pairs}
        for dev in devices:
            # the step's kernels may still be queued on the compute stream: wait for every stream
            torch.cuda.synchronize(dev)
            if dev not in self._streams:
                self._streams[dev] = torch.cuda.Stream(device=dev)
        with torch.no_grad():
            for src, dst in pairs:
                with torch.cuda.stream(self._streams[src.device]):
                    dst.copy_(src, non_blocking=True)
        for dev in devices:
            self._streams[dev].synchronize()


class CopyGate:
    """The copies of parameters and optimizer state still running behind the training step.

    ``hold(fut)`` registers one (a future done when its copy ends); every ``optimizer.step()`` in
    the process then waits until all held copies are done, through one global optimizer step
    pre-hook installed on first use (global, because a Checkpoint of a model alone does not know
    the optimizer that will update it).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._held: set[cf.Future[None]] = set()
        self._hook: Any = None

    def hold(self, fut: cf.Future[None]) -> None:
        with self._lock:
            if self._hook is None:
                self._hook = register_optimizer_step_pre_hook(self._before_step)
            self._held.add(fut)
        fut.add_done_callback(self._release)

    def _release(self, fut: cf.Future[None]) -> None:
        with self._lock:
            self._held.discard(fut)

    def wait_copied(self) -> None:
        """Block until no copy is held (a failed copy is the writer's error, not the step's)."""
        with self._lock:
            held = list(self._held)
        if held:
            cf.wait(held)

    def busy(self) -> bool:
        with self._lock:
            return bool(self._held)

    def _before_step(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        if self._held:  # a set's truth value is safe to read without the lock
            self.wait_copied()


GATE = CopyGate()


def _stageable(t: torch.Tensor) -> bool:
    """Plain dense CPU/CUDA tensors go through staging; anything exotic is cloned as is."""
    return (type(t) in (torch.Tensor, torch.nn.Parameter) and t.layout == torch.strided
            and not t.is_quantized and t.device.type in ("cpu", "cuda"))


def _alias_key(t: torch.Tensor) -> tuple[Any, ...]:
    return (t.device, t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape),
            t.stride(), t.dtype)


def map_tree(tree: Any, on_tensor: Callable[[torch.Tensor, Where], Any],
             on_leaf: Callable[[Any], Any], where: Where = ()) -> Any:
    """Rebuild ``tree`` (dicts, lists, tuples) with ``on_tensor(tensor, path)`` at each tensor
    and ``on_leaf(value)`` at every other leaf."""
    if isinstance(tree, torch.Tensor):
        return on_tensor(tree, where)
    if isinstance(tree, dict):
        out = OrderedDict() if isinstance(tree, OrderedDict) else {}
        for k, v in tree.items():
            out[k] = map_tree(v, on_tensor, on_leaf, (*where, k))
        if hasattr(tree, "_metadata"):  # nn.Module state_dict versions, needed by load_state_dict
            out._metadata = copy.deepcopy(tree._metadata)  # type: ignore[attr-defined]
        return out
    if isinstance(tree, list | tuple) and not hasattr(tree, "_fields"):
        items = [map_tree(v, on_tensor, on_leaf, (*where, i)) for i, v in enumerate(tree)]
        return items if isinstance(tree, list) else tuple(items)
    return on_leaf(tree)


def freeze(tree: Any) -> Any:
    """Detach the tree from later mutation now: fresh containers, deep-copied scalars, live
    tensors (copied into staging before anything may change them)."""
    return map_tree(tree, lambda t, _: t, copy.deepcopy)
