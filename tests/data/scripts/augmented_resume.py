"""A deterministic run whose data goes through a random augmentation in worker processes, and
which resumes from the latest checkpoint in its folder.

Usage: augmented_resume.py SAVE_DIR OUT WORKERS [STEP_SLEEP_S]. Prints ``start <iteration>``,
trains 4 epochs, writes the final weights to OUT. The test SIGKILLs it mid-epoch and compares the
resumed weights with uninterrupted runs using 0 and 2 workers.
"""

from __future__ import annotations

import sys
import time

import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from aiotrain.data.loader import AsyncLoader
from aiotrain.engine import Engine
from aiotrain.events import Events
from aiotrain.handlers.checkpoint import Checkpoint
from aiotrain.runtime import run as run_main

EPOCHS = 4


def points() -> TensorDataset:
    """64 fixed points in 4 classes, read with a sync ``__getitem__`` (in the workers)."""
    gen = torch.Generator().manual_seed(1234)
    return TensorDataset(torch.randn(64, 16, generator=gen), torch.randint(0, 4, (64,), generator=gen))


def jitter(item, gen: torch.Generator):
    """Random noise and a random feature flip, drawn from the item's own generator."""
    x, y = item
    x = x + 0.1 * torch.randn(x.shape, generator=gen)
    if torch.rand((), generator=gen) < 0.5:
        x = x.flip(0)
    return x, y


async def main(save_dir: str, out: str, workers: int, step_sleep: float) -> None:
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    loader = AsyncLoader(points(), batch_size=8, shuffle=True, seed=7, transform=jitter,
                         workers=workers)

    def step(engine: Engine, batch) -> float:
        x, y = batch
        optimizer.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        if step_sleep:
            time.sleep(step_sleep)
        return loss.item()

    trainer = Engine(step)
    to_save = {"model": model, "optimizer": optimizer, "trainer": trainer, "loader": loader}
    checkpoint = Checkpoint(to_save, save_dir, n_saved=2)
    trainer.add_event_handler(Events.ITERATION_COMPLETED(every=3), checkpoint)
    path = Checkpoint.latest(save_dir)
    if path is not None:
        Checkpoint.load_objects(to_save, path)
    print("start", trainer.state.iteration, flush=True)
    async with loader:
        await trainer.run(loader, max_epochs=EPOCHS)
    torch.save({k: v.clone() for k, v in model.state_dict().items()}, out)


if __name__ == "__main__":
    run_main(main(sys.argv[1], sys.argv[2], int(sys.argv[3]),
                  float(sys.argv[4]) if len(sys.argv) > 4 else 0.0))
