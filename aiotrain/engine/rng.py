"""The process's RNG states (torch CPU/CUDA, numpy, ``random``): saved for exact resume and
put back by the validator's snapshot. Stored as tensors and plain values only, so a checkpoint
holding them loads with ``torch.load(weights_only=True)``."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import NotRequired, TypedDict

import numpy as np
import torch

__all__ = ["RngState", "rng_state", "seed_everything", "set_rng_state"]


class NumpyRngState(TypedDict):
    """numpy's legacy global generator state, with its key array as a tensor."""

    kind: str
    keys: torch.Tensor
    pos: int
    has_gauss: int
    gauss: float


class RngState(TypedDict):
    """Every RNG state of a process (``cuda`` only once CUDA is initialised)."""

    torch: torch.Tensor
    python: tuple[int, Sequence[int], float | None]  # random.getstate(): version, internal, gauss
    numpy: NumpyRngState
    cuda: NotRequired[list[torch.Tensor]]


def seed_everything(seed: int) -> None:
    """Seed ``random``, numpy and torch from one integer."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> RngState:
    """Every RNG state of this process, at this moment."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state(legacy=True)
    assert isinstance(keys, np.ndarray)  # the legacy tuple form: (kind, keys, pos, has_gauss, gauss)
    state: RngState = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": {"kind": str(kind), "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: RngState) -> None:
    """Put back what ``rng_state`` returned."""
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    npst = state["numpy"]
    np.random.set_state((npst["kind"], npst["keys"].numpy().astype(np.uint32), npst["pos"],
                         npst["has_gauss"], npst["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
