"""Digits, streamed from object storage: the digits example's data packed into shards in an S3
bucket (or any URL RemoteDataset reads) and trained from there.

``python -m examples.remote_digits pack URL`` packs scikit-learn's bundled digits into
``URL/train`` and ``URL/val`` (packed format, ~8 shards for training); ``aiotrain train
examples/remote_digits.sdn data.url=URL`` trains from them: shards are fetched ahead on the event
loop, cached locally (``data.cache``), decoded and augmented in worker processes, in an order
that resumes exactly (the loader's state is in the ``last`` checkpoint). The data figures
(bytes/s, requests in flight, cache hit rate, time waiting on data) are logged to the run as
``data/...`` metrics, so ``aiotrain runs`` and the dashboard show them. ``make demo-remote`` does
all of it against a local S3 server.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np
import torch
from torch import nn

from aiotrain import AsyncLoader
from aiotrain.data.remote import DataMetrics, RemoteDataset, ShardCache, pack
from aiotrain.job import Task
from aiotrain.metrics import Accuracy, Loss
from examples.digits import SmallCNN, _digits_csv, augment


def pack_digits(url: str, val_fraction: float = 0.2, seed: int = 0) -> None:
    """Pack the digits as ``{"x": float32 (1, 8, 8), "y": int}`` items into ``url/train`` and
    ``url/val``."""
    table = np.loadtxt(_digits_csv(), delimiter=",")
    x = (table[:, :64].astype(np.float32) / 16.0 - 0.5).reshape(-1, 1, 8, 8)
    y = table[:, 64].astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(y))
    n_val = int(len(order) * val_fraction)
    for name, rows in (("val", order[:n_val]), ("train", order[n_val:])):
        pack(({"x": x[i], "y": int(y[i])} for i in rows), f"{url.rstrip('/')}/{name}",
             shard_bytes=64 << 10)


def to_pair(item: dict, gen: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """A stored item as (image, label) tensors, augmented as in the digits example."""
    return augment((torch.from_numpy(np.array(item["x"])), torch.tensor(item["y"])), gen)


def to_pair_plain(item: dict, gen: Any) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.from_numpy(np.array(item["x"])), torch.tensor(item["y"])


async def build(cfg: Any) -> Task:
    """The task: datasets opened (and checked) from ``data.url``, then the digits model."""
    torch.manual_seed(cfg.seed)
    cache = ShardCache(cfg.data.cache, disk_bytes=1 << 30)
    train_ds = await RemoteDataset.aopen(f"{cfg.data.url}/train", cache=cache)
    val_ds = await RemoteDataset.aopen(f"{cfg.data.url}/val", cache=cache)
    train_loader = AsyncLoader(train_ds, cfg.data.batch_size, sampler=train_ds.sampler(seed=cfg.seed),
                               transform=to_pair, seed=cfg.seed, workers=cfg.data.get("workers", 0))
    val_loader = AsyncLoader(val_ds, 256, sampler=val_ds.sampler(shuffle="none"),
                             transform=to_pair_plain)
    model = SmallCNN(cfg.model.channels, cfg.model.dropout)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.optim.lr)
    loss_fn = nn.CrossEntropyLoss()
    return Task(model=model, optimizer=optimizer, loss_fn=loss_fn, train_loader=train_loader,
                val_loader=val_loader, metrics={"accuracy": Accuracy(), "loss": Loss(loss_fn)},
                score_name="accuracy", handlers=[DataMetrics(train_ds.stats, every=10)],
                resources=[train_loader, train_ds, val_ds])


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] != "pack":
        sys.exit("usage: python -m examples.remote_digits pack URL")
    pack_digits(sys.argv[2])
    print(f"packed the digits into {sys.argv[2]}/train and {sys.argv[2]}/val")
