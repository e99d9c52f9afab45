"""Metrics attached to a real Engine: hooks on the compute thread, reset per epoch, detach."""

from __future__ import annotations

import threading

import pytest
import torch
from sklearn import metrics as skm

from aiotrain.engine import Engine
from aiotrain.events import Events
from aiotrain.metrics import MSE, Accuracy, F1Score, Loss, Metric, NotComputableError


def _batches(n_batches=6, batch=10, c=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(batch, c, generator=g), torch.randint(0, c, (batch,), generator=g))
            for _ in range(n_batches)]


def _passthrough(engine, batch):
    return batch


def test_evaluator_metrics_match_sklearn():
    data = _batches()
    ev = Engine(_passthrough)
    ev.add_metrics({"acc": Accuracy(), "f1": F1Score(average="macro")})
    Loss(torch.nn.functional.cross_entropy).attach(ev, "loss")
    state = ev.run_sync(data)
    logits = torch.cat([b[0] for b in data])
    y = torch.cat([b[1] for b in data])
    assert state.metrics["acc"] == pytest.approx(skm.accuracy_score(y, logits.argmax(1)))
    assert state.metrics["f1"] == pytest.approx(
        skm.f1_score(y, logits.argmax(1), average="macro", labels=[0, 1, 2], zero_division=0))
    assert state.metrics["loss"] == pytest.approx(torch.nn.functional.cross_entropy(logits, y).item())


async def test_metrics_reset_each_epoch_and_are_ready_for_epoch_handlers():
    def step(engine, batch):
        # epoch 1 predicts perfectly, epoch 2 always wrong
        y = batch[1]
        return (y, y) if engine.state.epoch == 1 else (1 - y, y)

    data = [(None, torch.tensor([0, 1, 1, 0]))] * 3
    trainer = Engine(step)
    trainer.add_metric(Accuracy(), "acc")
    seen = []
    trainer.on(Events.EPOCH_COMPLETED, lambda e: seen.append(e.state.metrics["acc"]))
    await trainer.run(data, max_epochs=2)
    assert seen == [1.0, 0.0]


async def test_output_transform_and_hooks_run_on_compute_thread_without_grad():
    class Probe(Metric):
        def reset(self):
            self.calls = []

        def update(self, output):
            self.calls.append((threading.current_thread().name, torch.is_grad_enabled(), output))

        def compute(self):
            return len(self.calls)

    w = torch.ones(1, requires_grad=True)

    def step(engine, batch):
        return {"loss": (w * batch).sum(), "n": engine.state.iteration}

    probe = Probe(output_transform=lambda out: out["n"])
    trainer = Engine(step)
    probe.attach(trainer, "probe")
    state = await trainer.run([torch.ones(2)] * 3, max_epochs=1)
    assert state.metrics["probe"] == 3
    assert [c[2] for c in probe.calls] == [1, 2, 3]
    assert all(name.startswith("aiotrain-compute") and not grad for name, grad, _ in probe.calls)


async def test_async_process_function():
    async def step(engine, batch):
        return batch

    ev = Engine(step)
    MSE(output_transform=lambda out: (out[0], out[1])).attach(ev, "mse")
    state = await ev.run([(torch.tensor([1.0, 2.0]), torch.tensor([1.0, 0.0]))] * 2)
    assert state.metrics["mse"] == pytest.approx(2.0)


def test_attach_detach_is_attached():
    ev = Engine(_passthrough)
    acc = Accuracy()
    assert not acc.is_attached(ev)
    acc.attach(ev, "acc")
    assert acc.is_attached(ev)
    assert ev.has_event_handler(acc.iteration_completed, Events.ITERATION_COMPLETED)
    with pytest.raises(ValueError, match="already attached"):
        acc.attach(ev, "acc2")
    acc.detach(ev)
    assert not acc.is_attached(ev)
    assert not ev.has_event_handler(acc.iteration_completed)
    state = ev.run_sync(_batches(2))
    assert "acc" not in state.metrics


def test_bad_name_and_transform():
    with pytest.raises(ValueError, match="non-empty string"):
        Accuracy().attach(Engine(_passthrough), "")
    with pytest.raises(TypeError, match="output_transform must be callable"):
        Accuracy(output_transform="y")


def test_epoch_without_iterations_is_not_computable():
    trainer = Engine(_passthrough)
    Accuracy().attach(trainer, "acc")
    trainer.on(Events.GET_BATCH_STARTED(event_filter=lambda e, n: n == 0),  # an epoch of 0 steps
               lambda e: e.terminate_epoch())
    with pytest.raises(NotComputableError, match="Accuracy must have at least one example"):
        trainer.run_sync(_batches(2))
