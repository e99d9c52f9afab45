"""Event-loop responsiveness while a CPU model trains: a heartbeat task's gaps (p50/p99/max).

The heartbeat sleeps 5 ms on the same loop as ``await engine.run(...)``; its gap above 5 ms is the
loop lag a co-hosted web service would see. Measured with no handler and with 10 sync handlers
due every iteration (they run on the compute thread, so the loop stays free), and, for contrast,
the same training run inline on the loop (a naive ``async def`` training loop). One JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))

import torch  # noqa: E402
from _common import emit  # noqa: E402

from aiotrain import Engine, Events  # noqa: E402

TICK = 0.005


def make_step():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(512, 1024), torch.nn.ReLU(),
                                torch.nn.Linear(1024, 1024), torch.nn.ReLU(), torch.nn.Linear(1024, 10))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x, y = torch.randn(128, 512), torch.randint(0, 10, (128,))

    def step(engine, batch):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        return {"loss": loss.item()}

    return step


async def heartbeat(stop: asyncio.Event, lags: list[float]) -> None:
    while not stop.is_set():
        t = time.perf_counter()
        await asyncio.sleep(TICK)
        lags.append((time.perf_counter() - t - TICK) * 1e3)


async def measure(train) -> dict:
    stop, lags = asyncio.Event(), []
    hb = asyncio.create_task(heartbeat(stop, lags))
    t0 = time.perf_counter()
    steps = await train()
    elapsed = time.perf_counter() - t0
    stop.set()
    await hb
    lags.sort()
    return {"lag_p50_ms": round(statistics.median(lags), 2),
            "lag_p99_ms": round(lags[int(len(lags) * 0.99) - 1], 2),
            "lag_max_ms": round(lags[-1], 2), "ticks": len(lags),
            "step_ms": round(elapsed / steps * 1e3, 2)}


async def main_async(iters: int) -> dict:
    async def aiotrain_run():
        await Engine(make_step()).run(range(iters), max_epochs=1)
        return iters

    async def aiotrain_sync_handlers():
        engine = Engine(make_step())
        seen = []
        for _ in range(10):
            engine.add_event_handler(Events.ITERATION_COMPLETED, lambda e: seen.append(e.state.output))
        await engine.run(range(iters), max_epochs=1)
        return iters

    async def naive_inline():
        step = make_step()
        for i in range(iters):
            step(None, i)
            await asyncio.sleep(0)
        return iters

    return {"aiotrain": await measure(aiotrain_run),
            "aiotrain_10_sync_handlers_every_iteration": await measure(aiotrain_sync_handlers),
            "naive_inline_loop": await measure(naive_inline)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--iters", type=int, default=300)
    a = p.parse_args()
    res = asyncio.run(main_async(a.iters))
    emit("loop_lag", heartbeat_ms=TICK * 1e3, results=res, targets={"lag_p99_ms_max": 5})


if __name__ == "__main__":
    main()
