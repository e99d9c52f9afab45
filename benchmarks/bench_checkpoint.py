"""Checkpoint cost on the training loop, side by side in one run: aiotrain's Checkpoint, a durable
blocking torch.save handler, torch.distributed.checkpoint.async_save, Lightning's AsyncCheckpointIO
(when installed), and training with no saves; then sharded checkpoints on 2 Gloo ranks.

``aiotrain`` is the default Checkpoint (the optimizer's state copied behind the next step);
``aiotrain_overlap_off`` copies everything at the event, for comparison.

The state is a model of ``--params-m`` million float32 parameters with its Adam state (3x the
parameter bytes in all). A step stands for a GPU-bound step: ~1 ms of CPU work on the compute
thread (a small model's forward, backward and optimizer step), a wait until 20 ms are up (as a
CUDA sync would wait, GIL-free), so the CPU is free for the writer the way it is beside a GPU, and
then the saved model's own ``optimizer.step()``: without gradients it changes nothing, but it
waits, as a real step would, for a checkpoint copy of its state still running behind the step.

First the disk's write time is measured: one durable save of the whole state (torch.save to a temp
file, fsync, rename, fsync of the folder), ``disk_write_s``. A save then triggers every ``--every`` steps; by
default the fewest steps that make the save interval at least twice that write time (the regime
the throughput target is about). Figures per variant:

- ``pause_ms``: how long the training loop stood still per save (the handler's time, timed around
  it; the step loop waits for it), mean and max over the saves after the first;
  ``first_pause_ms`` (buffers allocated, pages faulted) is measured apart, before the run.
- ``next_step_extra_ms``: how much longer than a normal step the step after a save took (for
  aiotrain: its optimizer step waiting for the copy of the optimizer state still running behind
  it); ``stall_ms`` = ``pause_ms`` + ``next_step_extra_ms``: all the training loop lost per save.
- ``loop_gap_max_ms`` / ``loop_gap_p99_ms``: a heartbeat task's worst lateness on the event loop
  (5 ms ticks), what a co-hosted web service would feel.
- ``steps_per_s`` (first to last step), ``drain_ms`` (what ``run`` then waits for the last write);
  ratios ``stall_vs_blocking`` (target <= 0.10; ``pause_vs_blocking`` is the handler time alone)
  and ``throughput_vs_none`` (target >= 0.95).

Sharded: two processes (Gloo, CPU) shard the same model with FSDP2 and save it with
``Checkpoint(backend="sharded")``: per rank, the mean pause per save and the bytes it wrote into
the last checkpoint folder, beside the bytes of the whole state.

One JSON line; temp files live in a temp folder removed at exit.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import shutil
import socket
import statistics
import subprocess
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
from aiotrain import distributed as dist  # noqa: E402
from aiotrain.handlers.checkpoint import Checkpoint, single_file  # noqa: E402
from aiotrain.runtime import run as run_main  # noqa: E402

TICK = 0.005
STEP_S = 0.020
SIDE = 1024


def make_state(params_m: float) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    """A model of ``params_m`` million parameters in square layers, with Adam state."""
    torch.manual_seed(0)
    layers = max(2, round(params_m * 1e6 / (SIDE * SIDE + SIDE)))
    model = torch.nn.Sequential(*[torch.nn.Linear(SIDE, SIDE) for _ in range(layers)])
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()  # creates exp_avg / exp_avg_sq for every parameter
    opt.zero_grad(set_to_none=True)
    return model, opt


def state_bytes(model: torch.nn.Module, opt: torch.optim.Optimizer) -> int:
    tensors = [*model.parameters(), *(v for s in opt.state.values() for v in s.values() if torch.is_tensor(v))]
    return sum(t.numel() * t.element_size() for t in tensors)


def make_step(head: torch.nn.Linear, saved: torch.optim.Optimizer) -> Callable[[Engine, int], None]:
    """~1 ms of real work that updates ``head`` through an optimizer step, the GPU's wait, then
    the saved model's optimizer step (gradient-free: a no-op that still passes its pre-hooks)."""
    x = torch.randn(32, head.in_features)
    opt = torch.optim.SGD(head.parameters(), lr=1e-6)

    def step(engine: Engine, batch: int) -> None:
        start = time.perf_counter()
        head(x).mean().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        rest = STEP_S - (time.perf_counter() - start)
        if rest > 0:
            time.sleep(rest)
        saved.step()

    return step


async def heartbeat(stop: asyncio.Event, gaps: list[float]) -> None:
    while not stop.is_set():
        t = time.perf_counter()
        await asyncio.sleep(TICK)
        gaps.append((time.perf_counter() - t - TICK) * 1e3)


async def train(head: torch.nn.Linear, saved: torch.optim.Optimizer, steps: int, every: int,
                save: Callable[[Engine], Awaitable[None]] | None) -> dict:
    """Run ``steps`` steps with ``save`` every ``every`` steps; time pauses, gaps, throughput."""
    engine = Engine(make_step(head, saved))
    pauses: list[float] = []
    marks: list[float] = []
    engine.add_compute_hook(Events.ITERATION_COMPLETED, lambda e: marks.append(time.perf_counter()))
    if save is not None:
        async def timed(e: Engine) -> None:
            t = time.perf_counter()
            await save(e)
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
        intervals = [b - a for a, b in zip(marks, marks[1:], strict=False)]
        saved_at = set(range(every - 1, len(marks) - 1, every))  # index of the step that saved
        normal = statistics.median(d for i, d in enumerate(intervals) if i not in saved_at and i - 1 not in saved_at)
        after = [intervals[i + 1] for i in saved_at if i + 1 < len(intervals)]
        extra = (statistics.mean(after) - normal) * 1e3 if after else 0.0
        out.update(saves=len(pauses), pause_ms=round(statistics.mean(pauses), 2),
                   pause_max_ms=round(max(pauses), 1), next_step_extra_ms=round(extra, 1),
                   stall_ms=round(statistics.mean(pauses) + max(extra, 0.0), 2))
    return out


def blocking_saver(model: torch.nn.Module, opt: torch.optim.Optimizer, folder: Path):
    async def save(engine: Engine) -> None:
        single_file.atomic_save({"model": model.state_dict(), "optimizer": opt.state_dict()}, folder / "blocking.pt")

    async def flush() -> None:  # nothing is ever in flight
        return None
    save.aflush = flush  # type: ignore[attr-defined]
    return save


def aiotrain_saver(model: torch.nn.Module, opt: torch.optim.Optimizer, folder: Path, overlap: bool = True):
    ckpt = Checkpoint({"model": model, "optimizer": opt}, folder / f"aiotrain{int(overlap)}", n_saved=1,
                      overlap=overlap)

    async def save(engine: Engine) -> None:
        await ckpt(engine)
    save.aflush = ckpt.aflush  # type: ignore[attr-defined]
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
    save.aflush = flush  # type: ignore[attr-defined]
    return save


def lightning_saver(model: torch.nn.Module, opt: torch.optim.Optimizer, folder: Path):
    """Lightning's AsyncCheckpointIO over its TorchCheckpointIO, as its Trainer drives it."""
    try:
        from lightning.pytorch.plugins.io import AsyncCheckpointIO, TorchCheckpointIO
    except ImportError:
        from pytorch_lightning.plugins.io import AsyncCheckpointIO, TorchCheckpointIO
    io = AsyncCheckpointIO(TorchCheckpointIO())

    async def save(engine: Engine) -> None:
        io.save_checkpoint({"model": model.state_dict(), "optimizer": opt.state_dict()},
                           str(folder / "lightning.ckpt"))

    async def flush() -> None:
        await asyncio.to_thread(io.teardown)  # waits for the writes it queued
        io.__init__(TorchCheckpointIO())  # teardown closes its executor: a fresh one for the next
    save.aflush = flush  # type: ignore[attr-defined]
    return save


def lightning_installed() -> bool:
    for name in ("lightning", "pytorch_lightning"):
        try:
            __import__(name)
            return True
        except ImportError:
            continue
    return False


async def first_pause(save, engine: Engine) -> float:
    """The first save of a run (allocations, page faults), outside the timed run."""
    t = time.perf_counter()
    await save(engine)
    pause = (time.perf_counter() - t) * 1e3
    await save.aflush()
    return round(pause, 1)


async def single_process(args: argparse.Namespace, folder: Path) -> dict:
    model, opt = make_state(args.params_m)
    head = torch.nn.Linear(SIDE, SIDE)
    nbytes = state_bytes(model, opt)
    t = time.perf_counter()
    single_file.atomic_save({"model": model.state_dict(), "optimizer": opt.state_dict()}, folder / "probe.pt")
    write_s = time.perf_counter() - t
    (folder / "probe.pt").unlink()
    every = args.every or max(1, math.ceil(2 * write_s / STEP_S))
    steps = args.steps or every * (args.saves + 1)
    results: dict[str, dict] = {"none": await train(head, opt, steps, every, None)}
    savers = {"blocking_durable_torch_save": blocking_saver, "aiotrain": aiotrain_saver,
              "aiotrain_overlap_off": lambda m, o, f: aiotrain_saver(m, o, f, overlap=False),
              "dcp_async_save": dcp_saver}
    if lightning_installed():
        savers["lightning_async_checkpoint_io"] = lightning_saver
    else:
        results["lightning_async_checkpoint_io"] = {"skipped": "lightning is not installed"}
    probe = Engine(lambda e, b: None)
    for name, make in savers.items():
        try:
            save = make(model, opt, folder)
            first = await first_pause(save, probe)
        except Exception as exc:  # a peer that cannot run here is reported, not fatal
            results[name] = {"skipped": f"{type(exc).__name__}: {exc}"[:200]}
            continue
        results[name] = {"first_pause_ms": first, **await train(head, opt, steps, every, save)}
    base = results["none"]["steps_per_s"]
    blocking = results["blocking_durable_torch_save"].get("stall_ms")
    for name in savers:
        r = results[name]
        if "steps_per_s" in r:
            r["throughput_vs_none"] = round(r["steps_per_s"] / base, 3)
            if blocking:
                r["pause_vs_blocking"] = round(r["pause_ms"] / blocking, 3)
                r["stall_vs_blocking"] = round(r["stall_ms"] / blocking, 3)
    return {"params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 1),
            "state_mb": round(nbytes / 2**20), "disk_write_s": round(write_s, 2),
            "save_interval_s": round(every * STEP_S, 2), "interval_vs_write": round(every * STEP_S / write_s, 2),
            "steps": steps, "every": every, "step_ms": STEP_S * 1e3, "results": results}


# sharded: 2 Gloo ranks --------------------------------------------------------------------------
async def sharded_rank(args: argparse.Namespace) -> None:
    """One rank: FSDP2-shard the model, save every ``every`` steps, print its figures as JSON."""
    from aiotrain.parallel import parallelize

    model, _ = make_state(args.params_m)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    parallelize(model, "fsdp", optimizer=opt)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()  # sharded Adam state
    opt.zero_grad(set_to_none=True)
    folder = Path(args.sharded_rank)
    ckpt = Checkpoint({"model": model, "optimizer": opt}, folder, n_saved=1)
    head = torch.nn.Linear(SIDE, SIDE)
    every = args.every
    figures = await train(head, opt, every * (args.saves + 1), every, ckpt)
    last = ckpt.last_checkpoint
    rank = dist.rank()
    mine = [p for p in last.iterdir() if p.name.startswith(f"__{rank}_") or p.name == f"rank{rank}.pt"]
    local = sum(p.to_local().numel() * p.element_size() for p in model.parameters())
    print(json.dumps({"rank": rank, "pause_ms": figures["pause_ms"], "pause_max_ms": figures["pause_max_ms"],
                      "steps_per_s": figures["steps_per_s"], "bytes_written": sum(p.stat().st_size for p in mine),
                      "local_param_bytes": local, "backend": ckpt.backend}), flush=True)


def sharded_two_ranks(args: argparse.Namespace, folder: Path, every: int) -> dict:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = []
    for rank in range(2):
        env = {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2",
               "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
               "OMP_NUM_THREADS": "1"}
        procs.append(subprocess.Popen([sys.executable, __file__, "--params-m", str(args.params_m),
                                       "--every", str(every), "--saves", str(args.saves),
                                       "--sharded-rank", str(folder / "sharded")],
                                      env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    ranks = []
    for proc in procs:
        out, err = proc.communicate(timeout=1800)
        if proc.returncode != 0:
            return {"skipped": f"rank exited {proc.returncode}: {err.strip().splitlines()[-1:]}"}
        ranks.append(json.loads(out.strip().splitlines()[-1]))
    return {"every": every, "per_rank": sorted(ranks, key=lambda r: r["rank"])}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--params-m", type=float, default=10.0, help="model size, millions of parameters")
    p.add_argument("--every", type=int, default=0, help="steps between saves (0: 2x the disk's write time)")
    p.add_argument("--saves", type=int, default=5, help="saves per timed run")
    p.add_argument("--steps", type=int, default=0, help="steps per run (0: every x (saves + 1))")
    p.add_argument("--dir", default=None, help="where the temp folder goes (default: the system's)")
    p.add_argument("--no-sharded", action="store_true", help="skip the 2-rank sharded run")
    p.add_argument("--sharded-rank", default=None, help=argparse.SUPPRESS)  # internal: one rank
    args = p.parse_args()
    if args.sharded_rank:
        dist.init()
        try:
            run_main(sharded_rank(args))
        finally:
            dist.destroy()
        return
    folder = Path(tempfile.mkdtemp(prefix="bench_checkpoint_", dir=args.dir))
    load_before = os.getloadavg()[0]
    try:
        figures = run_main(single_process(args, folder))
        if not args.no_sharded:
            figures["sharded_2_gloo_ranks"] = sharded_two_ranks(args, folder, figures["every"])
            model, opt = make_state(args.params_m)
            figures["sharded_2_gloo_ranks"]["whole_state_bytes"] = state_bytes(model, opt)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    emit("checkpoint", **figures, load_avg_1m=[round(load_before, 2), round(os.getloadavg()[0], 2)],
         targets={"stall_vs_blocking_max": 0.10, "throughput_vs_none_min": 0.95})


if __name__ == "__main__":
    main()
