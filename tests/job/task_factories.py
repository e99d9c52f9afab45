"""Task factories that fail in the ways users' factories do, for tests/job/test_task.py."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from aiotrain.config import Conf
from aiotrain.errors import MissingExtra
from aiotrain.job import Task

CLOSED: list[str] = []


class Resource:
    def close(self) -> None:
        CLOSED.append("closed")


def _task(lr: float) -> Task:
    model = nn.Linear(2, 1)
    return Task(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=lr),
                loss_fn=nn.MSELoss(), train_loader=[], resources=[Resource()])


def good(cfg: Any) -> Task:
    cfg.get("model")  # an optional section of its own
    return _task(cfg.optim.lr)


def whole(cfg: Any) -> Task:
    """Uses its config whole (as a task that hands it on does): every top-level key is read."""
    plain = Conf.to_dict(cfg)
    return _task(plain["optim"]["lr"])


def bad_value(cfg: Any) -> Task:
    model = nn.Linear(2, 1)
    torch.optim.SGD(model.parameters(), lr=cfg.optim.lr)  # torch refuses a string here
    raise AssertionError("unreachable")


def value_read_earlier(cfg: Any) -> Task:
    lr = cfg.optim.lr  # not in the failing expression: no key can be named honestly
    model = nn.Linear(2, 1)
    torch.optim.SGD(model.parameters(), lr=lr)
    raise AssertionError("unreachable")


def missing_file(cfg: Any) -> Task:
    with open(f"{cfg.data.root}/train.bin", "rb"):
        pass
    raise AssertionError("unreachable")


def missing_key(cfg: Any) -> Task:
    return _task(cfg.optim.momentum)


def bug(cfg: Any) -> Task:
    return {}["no such thing"]  # a bug that no config value caused


def needs_extra(cfg: Any) -> Task:
    raise MissingExtra("sklearn", "this task")
