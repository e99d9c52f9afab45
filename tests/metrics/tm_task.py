"""A tiny classification task whose validation metric is a torchmetrics metric:
``task: tests.metrics.tm_task:build``. The last built task is kept in ``BUILT`` for checks."""

from __future__ import annotations

from typing import Any

import torch
import torchmetrics
from torch import nn
from torch.utils.data import TensorDataset

from aiotrain import AsyncLoader
from aiotrain.job import Task

BUILT: list[Task] = []


def build(cfg: Any) -> Task:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(96, 4, generator=g)
    y = (x[:, 0] + x[:, 1] > 0).long()
    model = nn.Linear(4, 2)
    task = Task(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                loss_fn=nn.CrossEntropyLoss(),
                train_loader=AsyncLoader(TensorDataset(x[:64], y[:64]), 16, shuffle=True),
                val_loader=AsyncLoader(TensorDataset(x[64:], y[64:]), 16),
                metrics={"accuracy": torchmetrics.classification.MulticlassAccuracy(2)})
    BUILT.append(task)
    return task
