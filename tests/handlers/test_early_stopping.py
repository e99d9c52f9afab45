"""EarlyStopping: patience, min_delta, cumulative_delta, logging, and stopping a real trainer."""

from __future__ import annotations

import logging

import pytest

from aiotrain.engine import Engine
from aiotrain.events import Events
from aiotrain.handlers.early_stopping import EarlyStopping


class FakeTrainer:
    def __init__(self):
        self.terminated = 0

    def terminate(self):
        self.terminated += 1


def _feed(handler, scores):
    it = iter(scores)
    handler.score_function = lambda engine: next(it)
    for _ in scores:
        handler(None)


def test_stops_after_patience_without_improvement(caplog):
    trainer = FakeTrainer()
    h = EarlyStopping(patience=2, score_function=lambda e: 0.0, trainer=trainer)
    with caplog.at_level(logging.INFO):
        _feed(h, [0.5, 0.6, 0.6, 0.55])
    assert trainer.terminated == 1
    assert h.best_score == 0.6
    assert "stopping training" in caplog.text and "2 evaluations" in caplog.text


def test_improvement_resets_counter():
    trainer = FakeTrainer()
    h = EarlyStopping(patience=2, score_function=lambda e: 0.0, trainer=trainer)
    _feed(h, [0.5, 0.4, 0.7, 0.6])
    assert trainer.terminated == 0 and h.counter == 1


def test_min_delta_and_cumulative_delta():
    # gains of 0.05 < min_delta never count as improvement
    plain = EarlyStopping(3, lambda e: 0.0, FakeTrainer(), min_delta=0.1)
    _feed(plain, [0.5, 0.55, 0.6, 0.65])
    assert plain.trainer.terminated == 1
    assert plain.best_score == 0.65  # Ignite: the best still creeps up

    # without cumulative_delta the creeping best hides 0.5 -> 0.62 ... with it, 0.62 counts
    creep = EarlyStopping(3, lambda e: 0.0, FakeTrainer(), min_delta=0.1)
    _feed(creep, [0.5, 0.55, 0.62])
    assert creep.counter == 2
    cumulative = EarlyStopping(3, lambda e: 0.0, FakeTrainer(), min_delta=0.1, cumulative_delta=True)
    _feed(cumulative, [0.5, 0.55, 0.62])
    assert cumulative.counter == 0 and cumulative.best_score == 0.62


def test_state_dict_round_trip():
    h = EarlyStopping(3, lambda e: 0.0, FakeTrainer())
    _feed(h, [0.9, 0.1])
    h2 = EarlyStopping(3, lambda e: 0.0, FakeTrainer())
    h2.load_state_dict(h.state_dict())
    assert (h2.counter, h2.best_score) == (1, 0.9)


@pytest.mark.parametrize(("kwargs", "err", "msg"), [
    ({"patience": 0}, ValueError, "patience must be a positive integer"),
    ({"min_delta": -1.0}, ValueError, "min_delta must be >= 0"),
    ({"score_function": 3}, TypeError, "score_function must be callable"),
    ({"trainer": object()}, TypeError, "trainer must be an Engine"),
])
def test_bad_arguments(kwargs, err, msg):
    args = {"patience": 1, "score_function": lambda e: 0.0, "trainer": FakeTrainer(), **kwargs}
    with pytest.raises(err, match=msg):
        EarlyStopping(**args)


async def test_terminates_a_real_trainer_from_an_evaluator():
    scores = iter([0.5, 0.6, 0.55, 0.58, 0.9, 0.95])
    evaluator = Engine(lambda e, b: b)
    evaluator.state.metrics = {}
    trainer = Engine(lambda e, b: b)
    evaluator.add_event_handler(Events.COMPLETED, EarlyStopping(2, lambda e: next(scores), trainer))

    @trainer.on(Events.EPOCH_COMPLETED)
    async def validate(engine):
        await evaluator.run([0])

    state = await trainer.run(range(3), max_epochs=10)
    assert state.epoch == 4  # best at epoch 2, no gain in 3 and 4: stop
