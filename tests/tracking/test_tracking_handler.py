"""TrackingHandler on a real Engine."""

from __future__ import annotations

import pytest
import torch

from aiotrain import Engine, Events
from aiotrain.handlers.tracking import TrackingHandler
from aiotrain.tracking import Track


def history(run):
    return Track.load_run(run.dir).history()


def make_trainer():
    def step(engine, batch):
        return {"loss": torch.tensor(float(batch)), "pred": torch.ones(4)}

    trainer = Engine(step)

    @trainer.on(Events.EPOCH_COMPLETED, priority=10)
    def compute(engine):
        engine.state.metrics.update({"acc": engine.state.epoch / 10, "cm": torch.eye(2)})

    return trainer


async def test_iteration_and_epoch_logging():
    trainer = make_trainer()
    async with Track.run("p") as run:
        TrackingHandler(run, tag="train", output_transform=lambda out: {"loss": out["loss"]}).attach(
            trainer, Events.ITERATION_COMPLETED(every=2))
        TrackingHandler(run, tag="val", metric_names=["acc"]).attach(trainer, Events.EPOCH_COMPLETED)
        await trainer.run([1, 2, 3, 4], max_epochs=2)
    hist = history(run)
    train = [(h["step"], h["train/loss"]) for h in hist if "train/loss" in h]
    assert train == [(2, 2.0), (4, 4.0), (6, 2.0), (8, 4.0)]
    assert [(h["step"], h["val/acc"]) for h in hist if "val/acc" in h] == [(1, 0.1), (2, 0.2)]


def test_defaults_log_scalars_only_and_custom_step():
    trainer = make_trainer()
    with Track.run("p") as run:
        handler = TrackingHandler(run, tag="t", global_step_transform=lambda engine, event: engine.state.epoch * 100)
        handler.attach(trainer, Events.EPOCH_COMPLETED)
        trainer.run_sync([5, 6], max_epochs=1)
    (rec,) = history(run)
    assert rec["step"] == 100
    assert set(rec) == {"step", "timestamp", "t/loss", "t/acc"}  # pred and the matrix are skipped
    assert rec["t/loss"] == 6.0


def test_used_directly_as_handler_and_errors():
    trainer = make_trainer()
    with Track.run("p") as run:
        trainer.add_event_handler(Events.ITERATION_COMPLETED, TrackingHandler(
            run, output_transform=lambda out: out["loss"]))
        trainer.run_sync([7], max_epochs=1)
        with pytest.raises(TypeError):
            TrackingHandler(object())
        with pytest.raises(TypeError):
            TrackingHandler(run, metric_names="acc")
    assert [(h["step"], h["train/output"]) for h in history(run)] == [(1, 7.0)]


def test_missing_metric_is_reported():
    trainer = make_trainer()
    with Track.run("p") as run:
        TrackingHandler(run, metric_names=["f1"]).attach(trainer, Events.EPOCH_COMPLETED)
        with pytest.raises(KeyError, match="f1"):
            trainer.run_sync([1], max_epochs=1)
