"""Datasets and transforms for spawned data workers: importable by name, and numpy-only, so a
worker that unpickles them has no reason to import torch (tests check that it does not)."""

from __future__ import annotations

import os
import signal
import sys

import numpy as np


class Items:
    """Sync items ``np.full(4, i)``; ``die`` kills the process reading that index."""

    def __init__(self, n: int = 48, die: int | None = None) -> None:
        self.n, self.die = n, die

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> np.ndarray:
        if i == self.die:
            os.kill(os.getpid(), signal.SIGKILL)
        return np.full(4, float(i), dtype=np.float32)


def augment(x: np.ndarray, gen: np.random.Generator) -> dict:
    """A random augmentation drawn from the item's numpy generator only; also reports whether
    torch is loaded in the process that ran it."""
    return {"x": x * gen.random(4, dtype=np.float32), "flip": bool(gen.random() < 0.5),
            "torch_loaded": "torch" in sys.modules}


def augment_to_tensor(x: np.ndarray, gen: np.random.Generator):
    """A transform that itself uses torch: the worker imports it, and tensors come back."""
    import torch

    return torch.from_numpy(x) * float(gen.random())
