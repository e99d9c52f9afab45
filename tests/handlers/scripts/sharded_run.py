"""A small FSDP2 training run (Gloo on CPU, one process per rank) with sharded checkpoints.

Usage (one process per rank, with RANK / WORLD_SIZE / MASTER_ADDR / MASTER_PORT set, or alone):

  sharded_run.py train SAVE_DIR OUT [STEP_SLEEP_S]   resume from the latest checkpoint if any,
      train to the end, write the full model and optimizer state (rank 0) to OUT; prints
      ``start <iteration>`` on rank 0 once training starts.
  sharded_run.py load CHECKPOINT OUT                 load a checkpoint folder on this many ranks,
      write the full state (rank 0) to OUT.
  sharded_run.py die SAVE_DIR                        save once, then die (exit 17) on rank 0 just
      before the second save's folder would be renamed into place.
  sharded_run.py torn SAVE_DIR                       rank 1 alone writes its optimizer state in
      place right after the first save; every rank must then fail with the CheckpointError that
      refuses that save (exit 3, the message on stderr), none may hang.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from aiotrain import distributed as dist
from aiotrain.data.loader import AsyncLoader
from aiotrain.engine import Engine
from aiotrain.events import Events
from aiotrain.handlers.checkpoint import Checkpoint, CheckpointError, staging
from aiotrain.parallel import parallelize

EPOCHS = 3
EVERY = 4  # 8 steps per epoch: saves mid-epoch and at epoch ends
N_SAVED = 2


def points() -> TensorDataset:
    """64 fixed points in 3 classes."""
    gen = torch.Generator().manual_seed(1234)
    return TensorDataset(torch.randn(64, 12, generator=gen), torch.randint(0, 3, (64,), generator=gen))


def build(save_dir: str, step_sleep: float = 0.0):
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(0)  # the same initial weights on every rank
    model = torch.nn.Sequential(torch.nn.Linear(12, 32), torch.nn.ReLU(), torch.nn.Dropout(0.2),
                                torch.nn.Linear(32, 32), torch.nn.ReLU(), torch.nn.Linear(32, 3))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    parallelize(model, "fsdp", optimizer=optimizer)
    torch.manual_seed(100 + dist.rank())  # dropout draws differ per rank: resume must restore each
    sampler = torch.utils.data.DistributedSampler(points(), num_replicas=dist.world_size(),
                                                  rank=dist.rank(), shuffle=True, seed=0)
    loader = AsyncLoader(points(), batch_size=4, sampler=sampler)

    def step(engine: Engine, batch) -> float:
        model.train()
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
    ckpt = Checkpoint(to_save, save_dir, n_saved=N_SAVED, backend="sharded")
    trainer.add_event_handler(Events.ITERATION_COMPLETED(every=EVERY), ckpt, priority=-100)
    return model, optimizer, trainer, loader, ckpt


def full_state(model, optimizer) -> dict:
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    opts = StateDictOptions(full_state_dict=True, cpu_offload=True, flatten_optimizer_state_dict=True)
    return {"model": get_model_state_dict(model, options=opts),
            "optimizer": get_optimizer_state_dict(model, optimizer, options=opts)}


async def train(save_dir: str, out: str, step_sleep: float) -> None:
    model, optimizer, trainer, loader, ckpt = build(save_dir, step_sleep)
    latest = Checkpoint.latest(save_dir)
    if latest is not None:
        Checkpoint.load_objects(ckpt.to_save, latest)
    if dist.is_main():
        print("start", trainer.state.iteration, flush=True)
    await trainer.run(loader, max_epochs=EPOCHS)
    state = full_state(model, optimizer)
    if dist.is_main():
        torch.save(state, out)


async def load(path: str, out: str) -> None:
    model, optimizer, trainer, loader, _ = build(os.path.dirname(path) + "/unused")
    Checkpoint.load_objects({"model": model, "optimizer": optimizer, "trainer": trainer,
                             "loader": loader}, Path(path))
    state = full_state(model, optimizer)
    if dist.is_main():
        torch.save({**state, "iteration": trainer.state.iteration}, out)


async def die(save_dir: str) -> None:
    model, optimizer, trainer, loader, ckpt = build(save_dir)

    @trainer.on(Events.ITERATION_COMPLETED(once=EVERY + 1))
    async def arm(engine: Engine) -> None:
        """Once the first save is durable, rank 0 dies where the second one would be renamed
        into place (its manifest, then its folder)."""
        await ckpt.aflush()
        if dist.is_main():
            os.replace = lambda src, dst: os._exit(17)

    await trainer.run(loader, max_epochs=1)


async def torn(save_dir: str) -> None:
    model, optimizer, trainer, loader, ckpt = build(save_dir)
    reset = threading.Event()
    copy_deferred = staging.Staging.copy_deferred

    def late(self: staging.Staging, later: list) -> None:  # rank 1's copy starts after the write
        reset.wait(60)
        copy_deferred(self, later)

    if dist.rank() == 1:
        staging.Staging.copy_deferred = late  # type: ignore[method-assign]
    else:
        reset.set()

    @trainer.on(Events.ITERATION_COMPLETED(once=EVERY), priority=-200)  # after the Checkpoint
    def reset_moments(engine: Engine) -> None:
        if dist.rank() == 1:
            with torch.no_grad():
                for state in optimizer.state.values():
                    state["exp_avg"].zero_()
            reset.set()

    try:
        await trainer.run(loader, max_epochs=1)
    except CheckpointError as exc:
        print(exc, file=sys.stderr, flush=True)
        dist.destroy()
        os._exit(3)


if __name__ == "__main__":
    from aiotrain.runtime import run

    dist.init()
    mode, *args = sys.argv[1:]
    if mode == "train":
        run(train(args[0], args[1], float(args[2]) if len(args) > 2 else 0.0))
    elif mode == "load":
        run(load(args[0], args[1]))
    elif mode == "torn":
        run(torn(args[0]))
    else:
        run(die(args[0]))
    dist.destroy()
