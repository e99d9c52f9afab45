"""The seam Protocols match what really crosses each seam, and reject what does not."""

from __future__ import annotations

import pytest
import torch

from aiotrain.data.loader import AsyncLoader
from aiotrain.engine import Engine
from aiotrain.events import Events
from aiotrain.handlers.checkpoint import Checkpoint
from aiotrain.handlers.tracking import TrackingHandler
from aiotrain.protocols import EpochAware, MetricLogger, Stateful


class OnlySaves:
    def state_dict(self):
        return {}


def test_what_a_checkpoint_saves_is_stateful(tmp_path):
    model = torch.nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, 1)
    objs = {"model": model, "opt": opt, "sched": sched, "engine": Engine(lambda e, b: None),
            "loader": AsyncLoader(list(range(4)), 2)}
    assert all(isinstance(o, Stateful) for o in objs.values())
    Checkpoint(objs, tmp_path)
    assert not isinstance(OnlySaves(), Stateful)
    with pytest.raises(TypeError, match="'half': OnlySaves has no state_dict/load_state_dict"):
        Checkpoint({"half": OnlySaves()}, tmp_path)


def test_samplers_and_loaders_are_epoch_aware():
    ds = list(range(8))
    sampler = torch.utils.data.DistributedSampler(ds, num_replicas=2, rank=0)
    assert isinstance(sampler, EpochAware) and isinstance(AsyncLoader(ds, 2), EpochAware)
    assert not isinstance(torch.utils.data.SequentialSampler(ds), EpochAware)


def test_tracking_handler_takes_any_metric_logger():
    class Sink:
        def __init__(self):
            self.logged = []

        def log(self, metrics, step=None):
            self.logged.append((step, dict(metrics)))

    sink = Sink()
    assert isinstance(sink, MetricLogger)
    trainer = Engine(lambda e, b: float(b))
    trainer.add_event_handler(Events.ITERATION_COMPLETED, TrackingHandler(sink))
    trainer.run_sync([3, 4], max_epochs=1)
    assert sink.logged == [(1, {"train/output": 3.0}), (2, {"train/output": 4.0})]
    with pytest.raises(TypeError, match="needs a tracking Run"):
        TrackingHandler(object())
