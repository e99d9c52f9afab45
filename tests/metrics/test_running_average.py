"""RunningAverage: hand-computed EMA, source metrics, per-iteration publication, restarts."""

from __future__ import annotations

import pytest
import torch

from aiotrain.engine import Engine
from aiotrain.events import Events
from aiotrain.metrics import Accuracy, NotComputableError, RunningAverage


def _ema(xs, alpha):
    out, v = [], None
    for x in xs:
        v = x if v is None else alpha * v + (1 - alpha) * x
        out.append(v)
    return out


def test_direct_updates():
    ra = RunningAverage(alpha=0.5, output_transform=lambda x: x)
    for x in (4.0, 2.0, torch.tensor(8.0)):
        ra.update(x)
    assert ra.compute() == pytest.approx(_ema([4, 2, 8], 0.5)[-1])
    ra.reset()
    with pytest.raises(NotComputableError):
        ra.compute()


async def test_published_every_iteration_across_epochs():
    losses = [3.0, 1.0, 2.0, 5.0]

    def step(engine, batch):
        return {"loss": torch.tensor(batch)}

    trainer = Engine(step)
    RunningAverage(alpha=0.9, output_transform=lambda out: out["loss"]).attach(trainer, "loss")
    seen = []
    trainer.on(Events.ITERATION_COMPLETED, lambda e: seen.append(e.state.metrics["loss"]))
    await trainer.run(losses, max_epochs=2)
    assert seen == pytest.approx(_ema(losses * 2, 0.9))


async def test_epoch_bound_restarts_each_epoch():
    trainer = Engine(lambda e, b: b)
    RunningAverage(alpha=0.5, output_transform=float, epoch_bound=True).attach(trainer, "ra")
    seen = []
    trainer.on(Events.EPOCH_COMPLETED, lambda e: seen.append(e.state.metrics["ra"]))
    await trainer.run([2.0, 4.0], max_epochs=2)
    assert seen == [3.0, 3.0]


async def test_source_metric_per_batch():
    # batch accuracies 1.0, 0.5, 0.0
    batches = [(torch.tensor([1, 0]), torch.tensor([1, 0])),
               (torch.tensor([1, 1]), torch.tensor([1, 0])),
               (torch.tensor([0, 1]), torch.tensor([1, 0]))]
    trainer = Engine(lambda e, b: b)
    RunningAverage(Accuracy(), alpha=0.5).attach(trainer, "acc")
    state = await trainer.run(batches)
    assert state.metrics["acc"] == pytest.approx(_ema([1.0, 0.5, 0.0], 0.5)[-1])


def test_arguments_checked():
    with pytest.raises(ValueError, match="give src .* or output_transform"):
        RunningAverage()
    with pytest.raises(ValueError, match="not both"):
        RunningAverage(Accuracy(), output_transform=lambda x: x)
    with pytest.raises(ValueError, match="alpha must be in"):
        RunningAverage(output_transform=float, alpha=0)
    with pytest.raises(TypeError, match="src must be a Metric"):
        RunningAverage(src=lambda x: x)
    with pytest.raises(ValueError, match="device must be None"):
        RunningAverage(Accuracy(), device="cpu")
