"""Staging: reused CPU buffers that a snapshot is copied into, and the gate that lets the copy of
optimizer state run behind the next step.

A save copies every tensor of the state into a buffer allocated on the first save and reused
after, so a save costs a memcpy, not fresh allocations and page faults (on CUDA the buffers are
pinned and the copy runs on a side stream).

What may be copied after the event, and why that is exact. Parameters, buffers, an EMA model's
weights and the tensors of plain objects are written by code of every kind: the step, handlers,
``AveragedModel``, in-place writes under ``no_grad``, writes through ``.data`` or a numpy view
(which torch's version counters do not see), BatchNorm's running statistics (updated by forward
without a version bump). None of that can be excluded, so all of it is copied at the event. The
one part whose writers are known is the *state of an optimizer in to_save* (Adam's moments, step
counts): it changes when that optimizer steps. Its copy is deferred: it runs in the I/O executor
while the next step's forward and backward run, and :class:`OptimizerGate` makes that
optimizer's ``step()`` wait until the copy is done (fused optimizers included: they write without
a version bump, but only inside ``step()``). Any other in-place write to that state before the
copy ends is caught by torch's version counter (checked after the copy); the save is then refused
(:class:`TornCopy`) rather than written torn. A deferred tensor that shares storage with anything
copied at the event, or with a parameter, is copied at the event too. Outside this proof: a write
into optimizer state that bypasses the version counter (``.data``, a numpy view) between a save
and that optimizer's next step; such code passes ``Checkpoint(..., overlap=False)``.
"""

from __future__ import annotations

import concurrent.futures as cf
import copy
import sys
import weakref
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeGuard, cast

import torch
from torch.utils.hooks import RemovableHandle

from ...protocols import StateDict

if TYPE_CHECKING:
    from torch.distributed.tensor import DTensor as _DTensor

__all__ = ["Deferred", "OptimizerGate", "Pairs", "Staging", "TornCopy", "freeze", "is_dtensor", "map_tree"]

Pairs = list[tuple[torch.Tensor, torch.Tensor]]
Where = tuple[Hashable, ...]
"""A place in a state tree: the keys and indices from its root (``("optimizer", "state", 0)``)."""
AliasKey = tuple[torch.device, int, int | torch.SymInt, tuple[int, ...], tuple[int, ...], torch.dtype]
StorageKey = tuple[torch.device, int]


def is_dtensor(t: object) -> TypeGuard[_DTensor]:
    """True for a DTensor. Its module is not imported for the question (about 0.5 s: it brings
    torch's compiler): no tensor can be a DTensor before something imported
    ``torch.distributed.tensor``, so its absence from ``sys.modules`` answers False exactly."""
    module = sys.modules.get("torch.distributed.tensor")
    return module is not None and isinstance(t, module.DTensor)


@dataclass(frozen=True)
class Deferred:
    """One copy left to run behind the step: the live tensor, its buffer, its place in the state
    tree, and the tensor whose version counter proves it unchanged (a DTensor's own: in-place ops
    on a DTensor do not bump its local shard's) with that counter's value at the save event."""

    src: torch.Tensor
    dst: torch.Tensor
    where: Where
    owner: torch.Tensor
    version: int


class TornCopy(Exception):
    """A deferred tensor changed between the save event and the end of its copy."""

    def __init__(self, changed: Deferred) -> None:
        super().__init__(".".join(map(str, changed.where)))
        self.changed = changed


@dataclass
class _Seen:
    """A tensor met while staging a tree, under its first place: whether every place it is
    met at may defer its copy, and the tensor whose version counter proves it unchanged."""

    src: torch.Tensor
    buf: torch.Tensor
    deferrable: bool
    where: Where
    owner: torch.Tensor


class Staging:
    """Reusable CPU buffers (pinned for CUDA sources) keyed by their place in the state tree."""

    def __init__(self) -> None:
        self._buffers: dict[Where, torch.Tensor] = {}
        self._shells: dict[Where, _DTensor] = {}  # DTensor wrappers around buffers, for sharded writes
        self._streams: dict[torch.device, torch.cuda.Stream] = {}

    def assign(self, tree: StateDict, deferred: Callable[[Where], bool] = lambda where: False,
               pinned: Iterable[torch.Tensor] = ()) -> tuple[StateDict, Pairs, list[Deferred]]:
        """``tree`` with each tensor replaced by its staging buffer, and the copies still to make:
        those to make now, and those that may wait behind the step: tensors all of whose places
        ``deferred(where)`` accepts and whose storage is shared neither with a tensor copied now
        nor with one of ``pinned`` (parameters). Tensors sharing memory share one buffer (ties
        stay tied); a DTensor keeps its sharding and stages its local shard."""
        seen: dict[AliasKey, _Seen] = {}
        used: dict[Where, torch.Tensor] = {}
        shells: dict[Where, _DTensor] = {}

        def buffer(t: torch.Tensor, where: Where, owner: torch.Tensor) -> torch.Tensor:
            alias = _alias_key(t)
            entry = seen.get(alias)
            if entry is not None:
                entry.deferrable = entry.deferrable and deferred(where)  # a place copied now wins
                return entry.buf
            buf = self._buffers.get(where)
            if buf is None or buf.shape != t.shape or buf.dtype != t.dtype or buf.is_pinned() != t.is_cuda:
                buf = torch.empty(t.shape, dtype=t.dtype, pin_memory=t.is_cuda)
            used[where] = buf
            seen[alias] = _Seen(t, buf, deferred(where), where, owner)
            return buf

        def stage(t: torch.Tensor, where: Where) -> torch.Tensor:
            if is_dtensor(t):
                local = t._local_tensor
                if not _stageable(local):
                    return t.detach().to("cpu")
                shell = self._shell(t, buffer(local, where, t), where)
                shells[where] = shell
                return shell
            if not _stageable(t):
                return t.detach().to("cpu", copy=True)
            return buffer(t, where, t)

        out = map_tree(tree, stage, lambda leaf: leaf)
        self._buffers, self._shells = used, shells  # buffers of tensors that are gone are freed
        shared = {_storage_key(s.src) for s in seen.values() if not s.deferrable}
        shared.update(_storage_key(_local(p)) for p in pinned)
        now: Pairs = []
        later: list[Deferred] = []
        for s in seen.values():
            if s.deferrable and _storage_key(s.src) not in shared:
                later.append(Deferred(s.src, s.buf, s.where, s.owner, s.owner._version))
            else:
                now.append((s.src, s.buf))
        return out, now, later

    def _shell(self, t: _DTensor, buf: torch.Tensor, where: Where) -> _DTensor:
        """A DTensor with ``t``'s mesh, placements and global shape over the CPU buffer."""
        shell = self._shells.get(where)
        if (shell is None or shell.shape != t.shape or shell.placements != t.placements
                or shell.device_mesh != t.device_mesh):
            if t.device_mesh.device_type == "cpu":
                shell = type(t).from_local(buf, t.device_mesh, t.placements, run_check=False,
                                           shape=t.shape, stride=t.stride())
            else:  # from_local would move the buffer to the mesh's device: swap it in instead
                shell = cast("_DTensor", t.detach().to("cpu"))  # a DTensor's methods give DTensors
        shell._local_tensor = buf
        return shell

    @property
    def buffers(self) -> dict[Where, torch.Tensor]:
        """The buffers in use, by their place in the state tree."""
        return self._buffers

    def copy(self, pairs: Pairs) -> None:
        """memcpy every source into its buffer; CUDA sources on a side stream, then synchronized.
        Each ``copy_`` releases the GIL, so the step's Python and the event loop run meanwhile."""
        on_cuda = []
        with torch.no_grad():
            for src, dst in pairs:
                if src.is_cuda:
                    on_cuda.append((src, dst))
                else:
                    dst.copy_(src)
        if on_cuda:
            self._copy_cuda(on_cuda)

    def copy_deferred(self, later: list[Deferred]) -> None:
        """Copy what waited behind the step, then prove nothing wrote it since the event: a
        version counter that moved raises :class:`TornCopy` (the buffer may hold a mix)."""
        self.copy([(d.src, d.dst) for d in later])
        for d in later:
            if d.owner._version != d.version:
                raise TornCopy(d)

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


class OptimizerGate:
    """Makes ``step()`` of the given optimizers wait while a copy of their state is in flight.

    ``hold(fut)`` registers the copy (a future done when it ends). One step pre-hook per
    optimizer waits for it; the hooks hold the gate weakly and are removed when it is collected,
    so a discarded Checkpoint leaves nothing behind. Other optimizers in the process never wait."""

    def __init__(self, optimizers: Iterable[torch.optim.Optimizer]) -> None:
        self._held: cf.Future[None] | None = None
        ref = weakref.ref(self)

        def before_step(optimizer: torch.optim.Optimizer, args: tuple[object, ...],
                        kwargs: dict[str, object]) -> None:
            gate = ref()
            if gate is not None:
                gate.wait_copied()

        handles = [opt.register_step_pre_hook(before_step) for opt in optimizers]
        weakref.finalize(self, _remove_hooks, handles)

    def hold(self, fut: cf.Future[None]) -> None:
        self._held = fut

    def busy(self) -> bool:
        return self._held is not None and not self._held.done()

    def wait_copied(self) -> None:
        """Block until the held copy is done (a failed copy is the writer's error, not the step's)."""
        held = self._held
        if held is not None and not held.done():
            cf.wait([held])


def _remove_hooks(handles: list[RemovableHandle]) -> None:
    for handle in handles:
        handle.remove()


def _stageable(t: torch.Tensor) -> bool:
    """Plain dense CPU/CUDA tensors go through staging; anything exotic is cloned as is."""
    return (type(t) in (torch.Tensor, torch.nn.Parameter) and t.layout == torch.strided
            and not t.is_quantized and t.device.type in ("cpu", "cuda"))


def _local(t: torch.Tensor) -> torch.Tensor:
    return t._local_tensor if is_dtensor(t) else t


def _alias_key(t: torch.Tensor) -> AliasKey:
    return (t.device, t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape),
            t.stride(), t.dtype)


def _storage_key(t: torch.Tensor) -> StorageKey:
    return (t.device, t.untyped_storage().data_ptr())


def map_tree(tree: object, on_tensor: Callable[[torch.Tensor, Where], object],
             on_leaf: Callable[[object], object], where: Where = ()) -> Any:
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


def freeze(tree: StateDict) -> StateDict:
    """Detach the tree from later mutation now: fresh containers, deep-copied scalars, live
    tensors (copied into staging before anything may change them)."""
    frozen: StateDict = map_tree(tree, lambda t, _: t, copy.deepcopy)
    return frozen
