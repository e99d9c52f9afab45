"""LRScheduler: epoch schedulers, ReduceLROnPlateau fed from an evaluator's metric, errors."""

from __future__ import annotations

import threading

import pytest
import torch
from torch.optim.lr_scheduler import ExponentialLR, ReduceLROnPlateau, StepLR

from aiotrain.engine import Engine
from aiotrain.events import Events
from aiotrain.handlers.lr_scheduler import LRScheduler


def _opt(lr=1.0):
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)


async def test_epoch_scheduler_steps_at_epoch_completed():
    opt = _opt()
    trainer = Engine(lambda e, b: opt.step())
    h = LRScheduler(StepLR(opt, step_size=2, gamma=0.1)).attach(trainer)
    lrs = []
    trainer.on(Events.EPOCH_STARTED, lambda e: lrs.append(opt.param_groups[0]["lr"]))
    await trainer.run(range(5), max_epochs=5)
    assert lrs == pytest.approx([1.0, 1.0, 0.1, 0.1, 0.01])
    assert h.get_last_lr() == pytest.approx([0.01])  # 5 steps: 0.1 ** (5 // 2)


async def test_iteration_stepping_is_a_compute_hook():
    class Recording(ExponentialLR):
        threads: list[str] = []

        def step(self, *args, **kwargs):
            self.threads.append(threading.current_thread().name)
            super().step(*args, **kwargs)

    opt = _opt()
    trainer = Engine(lambda e, b: opt.step())
    h = LRScheduler(Recording(opt, gamma=0.5))
    Recording.threads.clear()  # the constructor stepped once
    h.attach(trainer, Events.ITERATION_COMPLETED(every=2))
    assert trainer.has_event_handler(h, Events.ITERATION_COMPLETED)
    await trainer.run(range(4), max_epochs=1)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.25)
    assert len(Recording.threads) == 2
    assert all(name.startswith("aiotrain-compute") for name in Recording.threads)


async def test_plateau_reads_the_metric_engine():
    opt = _opt()
    losses = iter([1.0, 0.5, 0.6, 0.7, 0.8])
    evaluator = Engine(lambda e, b: b)

    @evaluator.on(Events.COMPLETED)
    def fake_metric(engine):
        engine.state.metrics["val_loss"] = next(losses)

    trainer = Engine(lambda e, b: None)

    @trainer.on(Events.EPOCH_COMPLETED)
    async def validate(engine):
        await evaluator.run([0])

    LRScheduler(ReduceLROnPlateau(opt, patience=1, factor=0.5), "val_loss", evaluator).attach(trainer)
    await trainer.run(range(2), max_epochs=5)
    # best 0.5 at epoch 2; 0.6 (bad 1), 0.7 (bad 2 > patience: halve), 0.8 (bad 1)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.5)


async def test_plateau_missing_metric_is_clear():
    trainer = Engine(lambda e, b: None)
    LRScheduler(ReduceLROnPlateau(_opt()), "val_loss").attach(trainer)
    with pytest.raises(KeyError, match="metric 'val_loss' not found"):
        await trainer.run(range(2), max_epochs=1)


def test_bad_arguments():
    with pytest.raises(TypeError, match="must be a torch.optim.lr_scheduler"):
        LRScheduler(_opt())
    with pytest.raises(ValueError, match="ReduceLROnPlateau needs metric_name"):
        LRScheduler(ReduceLROnPlateau(_opt()))
    with pytest.raises(ValueError, match="only apply to ReduceLROnPlateau"):
        LRScheduler(StepLR(_opt(), 1), metric_name="loss")


def test_state_dict_round_trip():
    opt = _opt()
    h = LRScheduler(StepLR(opt, step_size=1, gamma=0.5))
    opt.step()
    h(None)
    h(None)
    h2 = LRScheduler(StepLR(_opt(), step_size=1, gamma=0.5))
    h2.load_state_dict(h.state_dict())
    assert h2.scheduler.last_epoch == 2
