"""Digits: scikit-learn's bundled 8x8 digit images, a small CNN, served from memory-mapped files.

The arrays are written once to two binary files (float32 images, int64 labels) and read through
CacheManager + MmapDataset. Training images get random noise and shifts (``augment``) in AsyncLoader's
worker processes (``data.workers``); each image's shift is drawn from its own generator, seeded
from (seed, epoch, index), so a resumed run sees exactly the augmentations the original saw, with any
number of workers. Validation reads one zero-copy gather per batch, unaugmented.
``aiotrain train examples/digits.sdn`` calls ``build(cfg)``.
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from aiotrain import AsyncLoader
from aiotrain import distributed as dist
from aiotrain.data.cache import CacheManager
from aiotrain.data.mmap_dataset import MmapDataset
from aiotrain.errors import MissingExtra
from aiotrain.files import atomic_write
from aiotrain.job import Task
from aiotrain.metrics import Accuracy, Loss


def write_arrays(root: Path) -> tuple[Path, Path]:
    """Write the digits arrays to ``root`` once (atomically); return the two paths."""
    x_path, y_path = root / "digits_x.f32", root / "digits_y.i64"
    if x_path.exists() and y_path.exists():
        return x_path, y_path
    table = np.loadtxt(_digits_csv(), delimiter=",")  # 64 pixel columns, then the label
    x = (table[:, :64].astype(np.float32) / 16.0 - 0.5).reshape(-1, 1, 8, 8)
    for path, arr in ((x_path, x), (y_path, table[:, 64].astype(np.int64))):
        atomic_write(path, np.ascontiguousarray(arr).tobytes())
    return x_path, y_path


def _digits_csv() -> Path:
    """scikit-learn's bundled digits table, found without importing scikit-learn: its import
    (hundreds of modules) holds the GIL for about a second, which would stall a service's loop."""
    spec = importlib.util.find_spec("sklearn")
    if spec is None or spec.origin is None:
        raise MissingExtra("sklearn", "the digits example (its data file)")
    return Path(spec.origin).parent / "datasets" / "data" / "digits.csv.gz"


class Digits:
    """(image, label) records at ``indices`` of the mapped arrays; one gather per batch."""

    def __init__(self, images: MmapDataset, labels: MmapDataset, indices: np.ndarray) -> None:
        self.images, self.labels, self.indices = images, labels, indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        j = int(self.indices[i])
        return self.images[j], self.labels[j]

    def __getitems__(self, batch: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        rows = self.indices[batch].tolist()
        return self.images.__getitems__(rows), self.labels.__getitems__(rows)


def augment(item: tuple[torch.Tensor, torch.Tensor], gen: torch.Generator,
            noise: float = 0.05, p_shift: float = 0.2) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel noise, and now and then a one-pixel shift (zero fill), drawn only from ``gen``."""
    image, label = item
    image = image + noise * torch.randn(image.shape, generator=gen)
    if torch.rand((), generator=gen).item() < p_shift:
        dy, dx = torch.randint(-1, 2, (2,), generator=gen).tolist()
        padded = nn.functional.pad(image, (1, 1, 1, 1))
        h, w = image.shape[-2:]
        image = padded[..., 1 + dy:1 + dy + h, 1 + dx:1 + dx + w]
    return image.contiguous(), label


class SmallCNN(nn.Module):
    def __init__(self, channels: int = 16, dropout: float = 0.1) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, channels, 3, padding=1), nn.ReLU(),
            nn.Conv2d(channels, 2 * channels, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(2 * channels * 16, 64), nn.ReLU(),
                                  nn.Dropout(dropout), nn.Linear(64, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def build(cfg: Any) -> Task:
    """The digits task: data, model, optimizer, schedule and metrics from the config."""
    torch.manual_seed(cfg.seed)
    x_path, y_path = write_arrays(Path(cfg.data.root))
    cache = CacheManager()
    cache.scan_files([str(x_path), str(y_path)])
    images = MmapDataset(str(x_path), (1, 8, 8), torch.float32, cache=cache)
    labels = MmapDataset(str(y_path), (), torch.int64, cache=cache)
    order = np.random.default_rng(cfg.seed).permutation(len(labels))
    n_val = int(len(order) * cfg.data.val_fraction)
    train_ds, val_ds = Digits(images, labels, order[n_val:]), Digits(images, labels, order[:n_val])
    # Each rank takes every world_size-th item of one seeded permutation, so with a per-rank
    # batch of batch_size / world_size the ranks together train on exactly the global batches a
    # single process would: 1 and N processes are directly comparable.
    world = dist.world_size()
    if cfg.data.batch_size % world:
        raise ValueError(f"data.batch_size={cfg.data.batch_size} is not divisible by {world} ranks")
    sampler = torch.utils.data.DistributedSampler(train_ds, num_replicas=world, rank=dist.rank(),
                                                  shuffle=True, seed=cfg.seed)
    train_loader = AsyncLoader(train_ds, cfg.data.batch_size // world, sampler=sampler,
                               transform=augment, seed=cfg.seed, workers=cfg.data.get("workers", 0))
    val_loader = AsyncLoader(val_ds, 256)
    dtypes = {"float32": torch.float32, "float64": torch.float64}
    if cfg.model.get("dtype", "float32") not in dtypes:
        raise ValueError(f"model.dtype must be float32 or float64, got {cfg.model.dtype!r}")
    dtype = dtypes[cfg.model.get("dtype", "float32")]
    model = SmallCNN(cfg.model.channels, cfg.model.dropout).to(dtype)
    optimizers = {"adam": torch.optim.Adam, "sgd": torch.optim.SGD}
    name = cfg.optim.get("name", "adam")
    if name not in optimizers:
        raise ValueError(f"optim.name must be one of {sorted(optimizers)}, got {name!r}")
    optimizer = optimizers[name](model.parameters(), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.train.max_epochs)
    loss_fn = nn.CrossEntropyLoss()
    return Task(model=model, optimizer=optimizer, loss_fn=loss_fn, train_loader=train_loader,
                val_loader=val_loader, scheduler=scheduler,
                metrics={"accuracy": Accuracy(), "loss": Loss(loss_fn)}, score_name="accuracy",
                resources=[train_loader, cache], prepare_batch=functools.partial(_prepare, dtype=dtype))


def _prepare(batch: tuple[torch.Tensor, torch.Tensor], device: torch.device,
             dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Images in the model's dtype (``model.dtype``: float64 makes runs that sum gradients in a
    different order agree to 1e-12, as the distributed tests compare them), on ``device``."""
    x, y = batch
    return x.to(device, dtype), y.to(device)
