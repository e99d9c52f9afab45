"""Exactness under mutation, for the property tests of both checkpoint backends.

A small training set-up whose tensors are changed in the ways checkpoint users change them (an
optimizer stepping every k iterations, in-place weight decay, ``.data`` and numpy writes, a
parametrization's setter, manual SGD without an optimizer, an EMA through ``AveragedModel``,
BatchNorm buffers, writes to optimizer state), at the start of the step or in handlers before or
after the Checkpoint; then the check that every file the Checkpoint wrote holds exactly the state
at its save event, and that a save was refused only for a write to optimizer state outside its
step. The copy that runs behind the step is made to start as late as possible (just before the
optimizer steps), so a copy that could tear does.
"""

from __future__ import annotations

import copy
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from hypothesis import strategies as st
from torch.nn.utils import parametrize
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from aiotrain.engine import Engine
from aiotrain.events import Events
from aiotrain.handlers.checkpoint import Checkpoint, CheckpointError, staging
from aiotrain.runtime import run

KINDS = ("decay", "data", "numpy", "reparam", "manual", "ema", "clip", "buffer", "opt_state")
PLACES = ("step", "before", "after")  # start of the step, handler before / after the Checkpoint
OPTIMIZERS = ("adam", "adam-fused", "sgd-momentum", "none")


@dataclass(frozen=True)
class Plan:
    """One generated run: its length, save frequency, optimizer and mutations."""

    steps: int
    every: int
    optimizer: str
    opt_every: int
    mutations: tuple[tuple[str, str], ...]


#: A run that diverges to NaN (the reparametrization feeds BatchNorm's growing running_var back
#: into the weight): its files must hold the same NaNs, bit for bit.
DIVERGES = Plan(steps=8, every=1, optimizer="adam", opt_every=1, mutations=(("reparam", "step"),))


def plans() -> st.SearchStrategy[Plan]:
    mutation = st.tuples(st.sampled_from(KINDS), st.sampled_from(PLACES))
    return st.builds(Plan, steps=st.integers(3, 8), every=st.integers(1, 3),
                     optimizer=st.sampled_from(OPTIMIZERS), opt_every=st.integers(1, 3),
                     mutations=st.lists(mutation, max_size=4, unique=True).map(tuple))


class Symmetric(torch.nn.Module):
    """A parametrization: the weight is the symmetric matrix built from its upper triangle."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.triu() + x.triu(1).transpose(0, 1)

    def right_inverse(self, w: torch.Tensor) -> torch.Tensor:
        return w.triu()


def build(plan: Plan) -> dict[str, Any]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 6), torch.nn.BatchNorm1d(6), torch.nn.Linear(6, 3))
    parametrize.register_parametrization(model[0], "weight", Symmetric())
    out: dict[str, Any] = {"model": model, "extra": torch.nn.Embedding(10, 4),
                           "ema": AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(0.9))}
    if plan.optimizer == "adam":
        out["optimizer"] = torch.optim.Adam(model.parameters(), lr=0.05, foreach=True)
    elif plan.optimizer == "adam-fused":
        out["optimizer"] = torch.optim.Adam(model.parameters(), lr=0.05, fused=True)
    elif plan.optimizer == "sgd-momentum":
        out["optimizer"] = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    return out


def _mutate(kind: str, objs: dict[str, Any]) -> None:
    model, extra, opt = objs["model"], objs["extra"], objs.get("optimizer")
    with torch.no_grad():
        if kind == "decay":
            for p in model.parameters():
                p.mul_(0.99)
        elif kind == "data":
            model[2].weight.data.add_(0.01)
        elif kind == "numpy":
            model[2].bias.detach().numpy()[:] += 0.5
        elif kind == "reparam":
            model[0].weight = torch.full((6, 6), 0.1) + torch.eye(6) * model[1].running_var.sum()
        elif kind == "manual":
            extra.weight.data.mul_(0.9)
        elif kind == "ema":
            objs["ema"].update_parameters(model)
        elif kind == "clip":
            for p in model.parameters():
                p.data.clamp_(-0.3, 0.3)
        elif kind == "buffer":
            model[1].running_mean.add_(1.0)
        elif kind == "opt_state" and opt is not None:
            for state in opt.state.values():
                for value in state.values():
                    if isinstance(value, torch.Tensor) and value.is_floating_point() and value.dim() > 0:
                        value.mul_(0.5)


def clone(tree: Any) -> Any:
    """A deep copy of a state tree: tensors cloned, everything else deep-copied."""
    return staging.map_tree(tree, lambda t, _: t.detach().clone(), copy.deepcopy)


def _bits(t: torch.Tensor) -> torch.Tensor:
    """A tensor's bytes: bit-for-bit equality, under which a NaN (a run that diverged) equals
    itself, as ``torch.equal`` would not have it."""
    return t.detach().contiguous().view(torch.uint8) if t.dim() else t.detach().reshape(1).view(torch.uint8)


def assert_same(saved: Any, expected: Any, where: str) -> None:
    """Equal trees: tensors bit for bit, everything else by ``==``."""
    if isinstance(expected, torch.Tensor):
        assert isinstance(saved, torch.Tensor) and saved.dtype == expected.dtype, f"{where}: not a {expected.dtype}"
        assert saved.shape == expected.shape and torch.equal(_bits(saved), _bits(expected)), f"{where} differs"
    elif isinstance(expected, dict):
        assert saved.keys() == expected.keys(), f"{where}: keys differ"
        for key, value in expected.items():
            assert_same(saved[key], value, f"{where}.{key}")
    elif isinstance(expected, list | tuple):
        assert len(saved) == len(expected), f"{where}: lengths differ"
        for i, (a, b) in enumerate(zip(saved, expected, strict=True)):
            assert_same(a, b, f"{where}.{i}")
    else:
        assert saved == expected, f"{where}: {saved!r} != {expected!r}"


class LateCopies:
    """Make every copy that runs behind the step wait until the optimizer is about to step (its
    pre-hook, registered before the Checkpoint's own, fires first) or the run ends."""

    def __init__(self, monkeypatch: Any) -> None:
        self.reached = threading.Event()
        real = staging.Staging.copy
        reached = self.reached

        def copy_late(this: staging.Staging, pairs: staging.Pairs) -> None:
            if pairs and threading.current_thread() is not threading.main_thread():
                reached.wait(2)
            real(this, pairs)

        monkeypatch.setattr(staging.Staging, "copy", copy_late)

    def release(self, *_: Any) -> None:
        self.reached.set()

    def rearm(self) -> None:
        self.reached.set()  # a copy still waiting from the previous save goes now
        self.reached.clear()


def check(plan: Plan, folder: Path, late: LateCopies, backend: str) -> None:
    """Run ``plan`` with a Checkpoint of ``backend``; every file holds the state at its event."""
    objs = build(plan)
    opt = objs.get("optimizer")
    if opt is not None:
        opt.register_step_pre_hook(late.release)  # before the Checkpoint's gate
    x, idx = torch.randn(8, 6), torch.tensor([1, 3, 5])
    at = {place: [k for k, p in plan.mutations if p == place] for place in PLACES}

    def step(engine: Engine, batch: Any) -> None:
        for kind in at["step"]:
            _mutate(kind, objs)
        loss = objs["model"](x).pow(2).mean() + objs["extra"](idx).pow(2).sum()
        loss.backward()
        with torch.no_grad():  # manual SGD: no optimizer owns the embedding
            objs["extra"].weight -= 0.1 * objs["extra"].weight.grad
        objs["extra"].weight.grad = None
        if opt is not None and engine.state.iteration % plan.opt_every == 0:
            opt.step()
            opt.zero_grad()

    trainer = Engine(step)
    expected: dict[int, dict[str, Any]] = {}

    def reference(engine: Engine) -> None:
        expected[engine.state.iteration] = {k: clone(v.state_dict()) for k, v in objs.items()}
        late.rearm()

    def mutate(engine: Engine, kinds: list[str]) -> None:
        for kind in kinds:
            _mutate(kind, objs)

    every = Events.ITERATION_COMPLETED(every=plan.every)
    trainer.add_event_handler(Events.ITERATION_COMPLETED, mutate, at["before"], priority=20)
    trainer.add_event_handler(every, reference, priority=10)
    trainer.add_event_handler(every, Checkpoint(objs, folder, n_saved=None, backend=backend), priority=5)
    trainer.add_event_handler(Events.ITERATION_COMPLETED, mutate, at["after"], priority=0)
    trainer.add_event_handler(Events.COMPLETED, late.release)
    refused = None
    try:
        run(trainer.run(range(plan.steps), max_epochs=1))
    except CheckpointError as exc:
        refused = str(exc)
    written = {int(p.name.rsplit("_", 1)[1].removesuffix(".pt")): p for p in folder.iterdir()}
    for step_, path in written.items():
        fresh = build(plan)
        Checkpoint.load_objects(fresh, path)
        for key, obj in fresh.items():
            assert_same(obj.state_dict(), expected[step_][key], f"step {step_} ({path.name}): {key}")
    if refused is None:
        assert set(written) == set(expected), f"saves missing: {sorted(set(expected) - set(written))}"
    else:
        writes_state = any(k == "opt_state" for k, _ in plan.mutations)
        assert writes_state and "optimizer.state" in refused and "overlap=False" in refused, refused
