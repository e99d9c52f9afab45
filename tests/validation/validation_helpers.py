"""Builders for the validation tests: a small healthy classifier, its data and a CHECK_ONLY run."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from aiotrain.validation import RuntimeValidator, ValidationMode

FEATURES, CLASSES = 12, 4


class Net(nn.Module):
    """Linear -> BatchNorm -> ReLU -> Dropout -> Linear: every stateful piece a check could disturb."""

    def __init__(self, dead: bool = False) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(FEATURES, 16), nn.BatchNorm1d(16), nn.ReLU(),
                                  nn.Dropout(0.2))
        self.head = nn.Linear(16, CLASSES)
        self.dead = nn.Linear(16, CLASSES) if dead else None  # built, never called

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def dataset(n: int = 96, labels_high: int = CLASSES) -> TensorDataset:
    gen = torch.Generator().manual_seed(1)
    return TensorDataset(torch.randn(n, FEATURES, generator=gen),
                         torch.randint(0, labels_high, (n,), generator=gen))


def loader(n: int = 96, batch_size: int = 16, **kw) -> DataLoader:
    return DataLoader(dataset(n, **kw), batch_size=batch_size, shuffle=True)


async def check(model, data, optimizer=None, loss_fn=None, **kw):
    """The report of a CHECK_ONLY validation with defaults for the optional pieces."""
    optimizer = optimizer or torch.optim.SGD(model.parameters(), lr=0.1)
    validator = RuntimeValidator(ValidationMode.CHECK_ONLY, **kw)
    return await validator.validate_all(model, data, optimizer, loss_fn or nn.CrossEntropyLoss())
