"""A tiny regression task for TrainJob tests: ``task: tests.job.tiny_task:build``."""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import nn

from aiotrain import AsyncLoader
from aiotrain.job import Task
from aiotrain.metrics import Loss

SDN = """task: tests.job.tiny_task:build
seed: 0
data:
  n = 64
  batch_size = 8
  slow = null         # seconds per training step (a trial long enough to be killed)
  die_at = null       # iteration at which rank die_rank kills itself once (marker: die_marker)
  die_rank = 1
  die_marker = null
optim:
  lr = 0.05
tracking:
  project: tiny
"""
"""The task as a config file (for commands: tests of real processes, benchmarks)."""


class Pairs:
    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.x)

    def __getitems__(self, idx: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[idx], self.y[idx]


class AsyncResource:
    """Records whether its async close was awaited."""

    closed: list[str] = []

    async def aclose(self) -> None:
        AsyncResource.closed.append("closed")


def build(cfg: Any) -> Task:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(cfg.data.n, 4, generator=g)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]])
    train = Pairs(x, y)
    nan_from = cfg.data.get("nan_from_iteration")
    model = nn.Linear(4, 1)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.optim.lr)
    loss_fn = nn.MSELoss()
    if nan_from is not None:
        def loss_fn(out, target, _calls=[0]):  # noqa: B006 - a call counter
            _calls[0] += 1 if torch.is_grad_enabled() else 0
            loss = nn.functional.mse_loss(out, target)
            return loss * float("nan") if _calls[0] >= nan_from else loss
    slow = cfg.data.get("slow")
    if slow:  # seconds per training step: a trial that lasts long enough to be killed
        plain = loss_fn

        def loss_fn(out, target):
            if torch.is_grad_enabled():
                time.sleep(slow)
            return plain(out, target)
    train_step = None
    if cfg.data.get("custom_step"):
        def train_step(engine: Any, batch: Any) -> dict[str, Any]:
            opt.zero_grad()
            loss = loss_fn(model(batch[0]), batch[1])
            loss.backward()
            opt.step()
            return {"loss": loss.detach(), "custom": 1.0}
    handlers = list(cfg.data.get("handlers_log") and [_order_part(cfg.data.handlers_log)] or [])
    if cfg.data.get("die_at"):
        handlers.append(_die_once(int(cfg.data.die_at), int(cfg.data.get("die_rank", 1)),
                                  str(cfg.data.die_marker)))
    return Task(model=model, optimizer=opt, loss_fn=loss_fn,
                train_loader=AsyncLoader(train, cfg.data.batch_size, shuffle=True, seed=cfg.seed),
                val_loader=AsyncLoader(Pairs(x[:16], y[:16]), 16),
                metrics={"loss": Loss(nn.MSELoss())}, score_name="loss", score_mode="min",
                resources=[AsyncResource()], handlers=handlers,
                train_step=train_step)


def _die_once(iteration: int, rank: int, marker: str) -> Any:
    """A part that SIGKILLs this process at ``iteration`` on global ``rank``, the first time only
    (``marker`` records that it did): a worker that dies under torchrun."""
    import os
    import signal

    from aiotrain import Events
    from aiotrain import distributed as dist

    class Die:
        def attach(self, ctx: Any) -> None:
            def die(engine: Any) -> None:
                if dist.rank() == rank and not os.path.exists(marker):
                    with open(marker, "w") as f:
                        f.write(str(os.getpid()))
                    os.kill(os.getpid(), signal.SIGKILL)
            ctx.trainer.add_event_handler(Events.ITERATION_COMPLETED(once=iteration), die)

    return Die()


_ORDER: dict[str, list[str]] = {}


def _order_part(key: str) -> Any:
    from aiotrain import Events

    class Record:
        def attach(self, ctx: Any) -> None:
            async def mark(engine: Any) -> None:
                _ORDER.setdefault(key, []).append(f"task@{engine.state.epoch}")
            ctx.trainer.add_event_handler(Events.EPOCH_COMPLETED, mark)

    return Record()
