"""Checkpoint cost on the training loop: aiotrain's Checkpoint vs a blocking torch.save handler vs
torch.distributed.checkpoint.async_save, side by side in one run, plus training with no saves.

The state is a model of ~50 M float32 parameters (200 MB) with its Adam state (400 MB more). A step
stands for a GPU-bound step: ~1 ms of CPU work on the compute thread, then a wait until 20 ms are
up (as a CUDA sync would wait), so the CPU is free for the writer the way it is beside a GPU. A save
triggers every ``--every`` steps. Figures per variant:

- ``pause_ms``: how long the training loop stood still per save (the handler's time, timed around
  it; the step loop waits for it), mean and max over the steady-state saves, and the part of it
  spent waiting for the previous write (one write in flight: a write longer than the interval
  between saves shows up here); the first save (``first_pause_ms``: buffers allocated, pages
  faulted) is measured apart, before the run.
- ``loop_gap_max_ms`` / ``loop_gap_p99_ms``: a heartbeat task's worst lateness on the event loop
  (5 ms ticks), what a co-hosted web service would feel.
- ``steps_per_s``: first to last step; ``drain_ms``: what ``run`` then waits for the last write.
- ratios: ``pause_vs_blocking`` (target <= 0.15) and ``throughput_vs_none`` (target >= 0.95).

The blocking peer is the common ``torch.save(state, path)`` in a handler (no fsync); aiotrain
fsyncs the file and the folder. One JSON line; temp files live in a temp folder removed at exit.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Awaitable, Callable
from pathlib import Path

sys.path.insert(0, os.path.dirname(__file__))

import torch  # noqa: E402
from _common import emit  # noqa: E402

from aiotrain import Engine, Events  # noqa: E402
from aiotrain.handlers.checkpoint import Checkpoint  # noqa: E402
from aiotrain.runtime import run as run_main  # noqa: E402

TICK = 0.005
STEP_S = 0.020


def make_state(params_m: float) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    """A model of ``params_m`` million parameters in 2048-wide square layers, with Adam state."""
    torch.manual_seed(0)
    side = 2048
    layers = max(1, round(params_m * 1e6 / (side * side + side)))
    model = torch.nn.Sequential(*[torch.nn.Linear(side, side) for _ in range(layers)])
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()  # creates exp_avg / exp_avg_sq for every parameter
    for p in model.parameters():
        p.grad = None
    return model, opt


def make_step(model: torch.nn.Module) -> Callable[[Engine, int], None]:
    head = model[-1]
    x = torch.randn(32, head.in_features)

    def step(engine: Engine, batch: int) -> None:
        start = time.perf_counter()
        with torch.no_grad():
            head.bias.add_(head(x).mean() * 1e-6)  # ~1 ms of real work that changes the state
        rest = STEP_S - (time.perf_counter() - start)
        if rest > 0:
            time.sleep(rest)

    return step


async def heartbeat(stop: asyncio.Event, gaps: list[float]) -> None:
    while not stop.is_set():
        t = time.perf_counter()
        await asyncio.sleep(TICK)
        gaps.append((time.perf_counter() - t - TICK) * 1e3)


async def train(model: torch.nn.Module, steps: int, every: int,
                save: Callable[[Engine], Awaitable[None]] | None) -> dict:
    """Run ``steps`` steps with ``save`` every ``every`` steps; time pauses, gaps, throughput."""
    engine = Engine(make_step(model))
    pauses: list[float] = []
    marks: list[float] = []
    engine.add_compute_hook(Events.ITERATION_COMPLETED, lambda e: marks.append(time.perf_counter()))
    waits: list[float] = []
    if save is not None:
        async def timed(e: Engine) -> None:
            t = time.perf_counter()
            await save.aflush()  # the previous write, if still going (part of this save's pause)
            mid = time.perf_counter()
            await save(e)
            waits.append((mid - t) * 1e3)
            pauses.append((time.perf_counter() - t) * 1e3)

        engine.add_event_handler(Events.ITERATION_COMPLETED(every=every), timed)
    stop, gaps = asyncio.Event(), []
    beat = asyncio.create_task(heartbeat(stop, gaps))
    await engine.run(range(steps), max_epochs=1)
    done = time.perf_counter()
    stop.set()
    await beat
    gaps.sort()
    out = {"steps_per_s": round((len(marks) - 1) / (marks[-1] - marks[0]), 2),
           "drain_ms": round((done - marks[-1]) * 1e3, 1),
           "loop_gap_max_ms": round(gaps[-1], 1), "loop_gap_p99_ms": round(gaps[int(len(gaps) * 0.99)], 1)}
    if pauses:
        out.update(saves=len(pauses), pause_ms=round(statistics.mean(pauses), 1),
                   pause_max_ms=round(max(pauses), 1),
                   of_which_waiting_for_previous_write_ms=round(statistics.mean(waits), 1))
    return out


def blocking_saver(model: torch.nn.Module, opt: torch.optim.Optimizer, folder: Path):
    async def save(engine: Engine) -> None:
        torch.save({"model": model.state_dict(), "optimizer": opt.state_dict()}, folder / "blocking.pt")

    async def flush() -> None:  # nothing is ever in flight
        return None
    save.flush = flush  # type: ignore[attr-defined]
    return save


def aiotrain_saver(model: torch.nn.Module, opt: torch.optim.Optimizer, folder: Path):
    ckpt = Checkpoint({"model": model, "optimizer": opt}, folder / "aiotrain", n_saved=1)

    async def save(engine: Engine) -> None:
        await ckpt(engine)
    save.flush = ckpt.flush  # type: ignore[attr-defined]
    return save


def dcp_saver(model: torch.nn.Module, opt: torch.optim.Optimizer, folder: Path):
    import torch.distributed.checkpoint as dcp

    warnings.filterwarnings("ignore", message="torch.distributed is disabled")  # one process, on purpose
    state = {"pending": None, "n": 0}

    async def save(engine: Engine) -> None:
        await flush()  # one write in flight, as aiotrain
        shutil.rmtree(folder / f"dcp{state['n'] - 2}", ignore_errors=True)
        sd = {"model": model.state_dict(), "optimizer": opt.state_dict()}
        fut = dcp.async_save(sd, checkpoint_id=str(folder / f"dcp{state['n']}"))
        state["pending"], state["n"] = fut, state["n"] + 1
        if hasattr(engine, "add_pending"):
            engine.add_pending(fut)

    async def flush() -> None:
        if state["pending"] is not None:
            await asyncio.wrap_future(state["pending"])
    save.flush = flush  # type: ignore[attr-defined]
    return save


async def first_pause(save, engine: Engine) -> float:
    """The first save of a run (allocations, page faults), outside the timed run."""
    t = time.perf_counter()
    await save(engine)
    pause = (time.perf_counter() - t) * 1e3
    await save.aflush()
    return round(pause, 1)


async def main_async(args: argparse.Namespace, folder: Path) -> dict:
    model, opt = make_state(args.params_m)
    n_params = sum(p.numel() for p in model.parameters())
    state_mb = sum(t.numel() * t.element_size() for t in [*model.parameters(),
                   *(v for s in opt.state.values() for v in s.values() if torch.is_tensor(v))]) / 2**20
    results: dict[str, dict] = {"none": await train(model, args.steps, args.every, None)}
    savers = {"blocking_torch_save": blocking_saver, "aiotrain": aiotrain_saver,
              "dcp_async_save": dcp_saver}
    probe = Engine(lambda e, b: None)
    for name, make in savers.items():
        try:
            save = make(model, opt, folder)
            first = await first_pause(save, probe)
        except Exception as exc:  # DCP may not run in one process on some builds
            results[name] = {"skipped": f"{type(exc).__name__}: {exc}"[:200]}
            continue
        results[name] = {"first_pause_ms": first, **await train(model, args.steps, args.every, save)}
    base = results["none"]["steps_per_s"]
    blocking = results["blocking_torch_save"].get("pause_ms")
    for name in savers:
        r = results[name]
        if "steps_per_s" in r:
            r["throughput_vs_none"] = round(r["steps_per_s"] / base, 3)
            if blocking:
                r["pause_vs_blocking"] = round(r["pause_ms"] / blocking, 3)
    return {"params_m": round(n_params / 1e6, 1), "state_mb": round(state_mb), "steps": args.steps,
            "every": args.every, "step_ms": STEP_S * 1e3, "results": results,
            "targets": {"pause_vs_blocking_max": 0.15, "throughput_vs_none_min": 0.95}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--params-m", type=float, default=50.0, help="model size, millions of parameters")
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--every", type=int, default=50, help="steps between saves")
    p.add_argument("--dir", default=None, help="where the temp folder goes (default: the system's)")
    args = p.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="bench_checkpoint_", dir=args.dir))
    try:
        figures = run_main(main_async(args, folder))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    emit("checkpoint", **figures)


if __name__ == "__main__":
    main()
