"""A small deterministic training run that resumes from the latest checkpoint in its folder.

Usage: resume_train.py SAVE_DIR OUT [STEP_SLEEP_S]. Prints ``start <iteration>`` when training
starts (0 for a fresh run), trains 8 epochs, then writes the final weights to OUT. The exact-resume
tests SIGKILL it at random moments and compare the final weights with an uninterrupted run's.
``build`` is also imported by those tests for the in-process (cancel / terminate) scenarios.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from aiotrain.data.loader import AsyncLoader
from aiotrain.engine import Engine
from aiotrain.events import Events
from aiotrain.handlers.checkpoint import Checkpoint

EPOCHS = 8
EVERY = 5  # saves fall mid-epoch and at varying epoch positions (12 batches per epoch)
BALLAST = 1_000_000  # floats: a 4 MB buffer, so writes take long enough for kills to land in them


class Points:
    """96 fixed points in 4 classes; ``aget`` makes the loader fetch them as tasks."""

    def __init__(self) -> None:
        gen = torch.Generator().manual_seed(1234)
        self.x = torch.randn(96, 16, generator=gen)
        self.y = torch.randint(0, 4, (96,), generator=gen)

    def __len__(self) -> int:
        return len(self.x)

    async def aget(self, i: int):
        return self.x[i], self.y[i]


@dataclass
class Run:
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    trainer: Engine
    loader: AsyncLoader
    checkpoint: Checkpoint

    def resume(self) -> int:
        """Load the latest checkpoint, if any; returns the iteration training continues from."""
        path = Checkpoint.latest(self.checkpoint.save_dir)
        if path is not None:
            Checkpoint.load_objects(self.checkpoint.to_save, path)
        return self.trainer.state.iteration

    def weights(self) -> dict[str, torch.Tensor]:
        return {k: v.clone() for k, v in self.model.state_dict().items()}


def build(save_dir: str | Path, step_sleep: float = 0.0, save_on=None) -> Run:
    """The run; ``save_on`` is the checkpoint's event (default: every EVERY iterations)."""
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Dropout(0.3),
                                torch.nn.Linear(32, 4))
    model.register_buffer("ballast", torch.zeros(BALLAST))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=7, gamma=0.8)
    loader = AsyncLoader(Points(), batch_size=8, shuffle=True, seed=0)

    def step(engine: Engine, batch) -> float:
        model.train()
        x, y = batch
        optimizer.zero_grad()
        loss = F.cross_entropy(model(x), y)  # dropout draws from the global RNG
        loss.backward()
        optimizer.step()
        scheduler.step()
        model.ballast.add_(1.0)
        if step_sleep:
            time.sleep(step_sleep)
        return loss.item()

    trainer = Engine(step)

    @trainer.on(Events.ITERATION_COMPLETED(every=2), priority=10)
    def jitter(engine: Engine) -> None:  # a loop-side handler that draws RNG before the save
        with torch.no_grad():
            model[0].bias.add_(1e-3 * torch.randn(32))

    to_save = {"model": model, "optimizer": optimizer, "scheduler": scheduler, "trainer": trainer,
               "loader": loader}
    checkpoint = Checkpoint(to_save, save_dir, n_saved=2)
    trainer.add_event_handler(save_on or Events.ITERATION_COMPLETED(every=EVERY), checkpoint, priority=-100)
    return Run(model, optimizer, scheduler, trainer, loader, checkpoint)


async def main(save_dir: str, out: str, step_sleep: float) -> None:
    run = build(save_dir, step_sleep)
    print("start", run.resume(), flush=True)
    await run.trainer.run(run.loader, max_epochs=EPOCHS)
    torch.save(run.weights(), out)


if __name__ == "__main__":
    from aiotrain.runtime import run as run_main

    run_main(main(sys.argv[1], sys.argv[2], float(sys.argv[3]) if len(sys.argv) > 3 else 0.0))
