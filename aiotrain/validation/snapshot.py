"""TrainingSnapshot: everything a check may disturb, saved before the checks and put back after.

Saved: every parameter's and buffer's values (BatchNorm running stats and counters included),
each parameter's ``.grad`` (the tensor object itself and its values), every module's train/eval
flag, the optimizer's state and param-group settings, the torch CPU/CUDA, numpy and ``random``
RNG states, the RNG generators a torch DataLoader or its sampler own, and the loader's position
(``state_dict`` of an AsyncLoader). ``restore`` puts values back in place, into the same tensor
objects (parameters, gradients, optimizer state tensors), so references the caller holds stay
valid and a state created by a check (a fresh Adam's moments) is dropped again.

Values are copied to host memory (a checked model may not have room for a second copy on the
GPU); meta tensors carry no data and are kept as they are.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from ..engine.rng import RngState
from ..engine.rng import rng_state as _rng_state
from ..engine.rng import set_rng_state as _set_rng_state
from ..protocols import Stateful

__all__ = ["TrainingSnapshot"]


def _host_copy(t: torch.Tensor) -> torch.Tensor:
    if t.device.type == "meta":
        return t
    return t.detach().to("cpu", copy=True)


@dataclass(frozen=True)
class _SavedTensor:
    live: torch.Tensor
    saved: torch.Tensor


def _copy_value(v: object) -> object:
    """A tensor is kept with its saved values (restored in place); anything else deep-copied."""
    return _SavedTensor(v, _host_copy(v)) if isinstance(v, torch.Tensor) else copy.deepcopy(v)


def _restored_value(v: object) -> object:
    if isinstance(v, _SavedTensor):
        _put_back(v.live, v.saved)
        return v.live
    return copy.deepcopy(v)


def _put_back(dst: torch.Tensor, saved: torch.Tensor) -> None:
    if dst.device.type != "meta":
        with torch.no_grad():
            dst.copy_(saved)


def _generators(loader: object) -> list[torch.Generator]:
    """RNG generators a torch DataLoader, its sampler or batch sampler hold (shuffle order)."""
    owners = [loader, getattr(loader, "sampler", None), getattr(loader, "batch_sampler", None),
              getattr(getattr(loader, "batch_sampler", None), "sampler", None)]
    found: list[torch.Generator] = []
    for owner in owners:
        gen = getattr(owner, "generator", None)
        if isinstance(gen, torch.Generator) and all(gen is not g for g in found):
            found.append(gen)
    return found


@dataclass
class TrainingSnapshot:
    """A restorable copy of a model, its optimizer, the RNGs and a loader's position."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer | None
    loader: object = None
    _tensors: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)
    _grads: list[tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]] = field(default_factory=list)
    _modes: list[tuple[torch.nn.Module, bool]] = field(default_factory=list)
    _opt_state: dict[torch.Tensor, dict[str, object]] = field(default_factory=dict)
    _opt_groups: list[dict[str, object]] = field(default_factory=list)
    _rng: RngState | None = None
    _gens: list[tuple[torch.Generator, torch.Tensor]] = field(default_factory=list)
    _loader_state: Mapping[str, Any] | None = None

    @classmethod
    def take(cls, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None,
             loader: object = None) -> TrainingSnapshot:
        """Copy everything now (compute work: call it off the event loop)."""
        snap = cls(model, optimizer, loader)
        live = list(model.parameters()) + list(model.buffers())
        snap._tensors = [(t, _host_copy(t)) for t in _unique(live)]
        snap._grads = [(p, p.grad, None if p.grad is None else _host_copy(p.grad))
                       for p in _unique(model.parameters())]
        snap._modes = [(m, m.training) for m in model.modules()]
        if optimizer is not None:
            snap._opt_state = {p: {k: _copy_value(v) for k, v in st.items()}
                               for p, st in optimizer.state.items()}
            snap._opt_groups = [{k: copy.deepcopy(v) for k, v in g.items() if k != "params"}
                                for g in optimizer.param_groups]
        snap._rng = _rng_state()
        snap._gens = [(g, g.get_state()) for g in _generators(loader)]
        snap._loader_state = (copy.deepcopy(loader.state_dict())
                              if isinstance(loader, Stateful) else None)
        return snap

    def restore(self) -> None:
        """Put every saved value back in place (compute work: call it off the event loop)."""
        for live, saved in self._tensors:
            _put_back(live, saved)
        for p, grad, saved_grad in self._grads:
            if grad is not None and saved_grad is not None:
                _put_back(grad, saved_grad)
            p.grad = grad
        for module, training in self._modes:
            module.training = training
        if self.optimizer is not None:
            self._restore_optimizer(self.optimizer)
        if self._rng is not None:
            _set_rng_state(self._rng)
        for gen, state in self._gens:
            gen.set_state(state)
        if self._loader_state is not None and isinstance(self.loader, Stateful):
            self.loader.load_state_dict(copy.deepcopy(self._loader_state))

    def _restore_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        state = optimizer.state
        state.clear()
        for p, saved in self._opt_state.items():
            state[p] = {k: _restored_value(v) for k, v in saved.items()}
        for group, saved in zip(optimizer.param_groups, self._opt_groups, strict=False):
            for k in [k for k in group if k != "params" and k not in saved]:
                del group[k]
            group.update(copy.deepcopy(saved))


def _unique(tensors: Iterable[torch.Tensor]) -> list[torch.Tensor]:
    seen: set[int] = set()
    out = []
    for t in tensors:
        if id(t) not in seen:
            seen.add(id(t))
            out.append(t)
    return out
