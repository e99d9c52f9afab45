"""Cost of one ``log`` call of two scalars on the training thread: aiotrain vs wandb, TensorBoard, MLflow.

Each tracker logs ``{"train/loss": x, "lr": y}`` once per step in a tight loop and we time the
loop on the calling (training) thread, then divide by the number of calls. Background work
(aiotrain's I/O-executor drains, wandb's service process, the SummaryWriter's writer thread)
is not on the training thread, so it counts only as far as it slows that thread down (GIL,
CPU). The peers, where installed, run side by side in the same process after aiotrain:

* wandb in offline mode (``WANDB_MODE=offline``, ``WANDB_SILENT=true``, a temp dir; it never
  reaches the network), ``wandb.log(..., step=i)``;
* TensorBoard's ``torch.utils.tensorboard.SummaryWriter``: two ``add_scalar`` calls per step;
* MLflow on a local sqlite store: ``mlflow.log_metrics(..., step=i)``.

After ``finish()`` (timed separately), the benchmark reads metrics.jsonl back and checks that
every logged step is on disk (``all_steps_on_disk``). Target (issue 7): aiotrain <= 4 us per
call and >= 20x faster than the fastest peer.

Then each call on its own (``latency``): a fresh run, every call timed, as a training loop
that logs each step sees it: the mean over the first 5,000 calls (where one slow first drain
shows), and the p99 and max over ``--latency-calls`` calls, aiotrain (system sampler on, as a
run inside a loop has it) beside wandb and TensorBoard. A background thread that holds the GIL
shows as a slow call. Target (issue 26): no call over 5 ms in steady state, none over 20 ms
at start. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import emit  # noqa: E402


def bench_aiotrain(root: Path, n: int, rounds: int) -> dict:
    from aiotrain.tracking import Track
    from aiotrain.tracking.reader import read_history

    per_call, finish_s, ok = [], [], True
    for r in range(rounds):
        run = Track.run("bench", name=f"round{r}", dir=root)
        log = run.log
        t0 = time.perf_counter()
        for i in range(n):
            log({"train/loss": 1.0 / (i + 1), "lr": 0.001})
        per_call.append((time.perf_counter() - t0) / n)
        t1 = time.perf_counter()
        run.finish()
        finish_s.append(time.perf_counter() - t1)
        steps = [rec["step"] for rec in read_history(run.dir / "metrics.jsonl")]
        ok = ok and steps == list(range(n))
    return {"us_per_call": statistics.median(per_call) * 1e6,
            "us_per_call_rounds": [round(p * 1e6, 3) for p in per_call],
            "finish_s": round(statistics.median(finish_s), 4), "calls": n, "all_steps_on_disk": ok}


def _latency(call, n: int) -> dict:
    """Time each of ``n`` calls of ``call(i)``: mean of the first 5,000, p99 and max (us)."""
    import numpy as np

    times = np.empty(n)
    clock = time.perf_counter_ns
    for i in range(n):
        t0 = clock()
        call(i)
        times[i] = clock() - t0
    us = times / 1e3
    return {"calls": n, "first5000_mean_us": round(float(us[:5000].mean()), 2),
            "p50_us": round(float(np.percentile(us, 50)), 2),
            "p99_us": round(float(np.percentile(us, 99)), 2), "max_us": round(float(us.max()), 1),
            "max_first5000_us": round(float(us[:5000].max()), 1),
            "calls_over_1ms": int((us > 1000).sum()), "calls_over_5ms": int((us > 5000).sum())}


def latency_aiotrain(root: Path, n: int) -> dict:
    """A run as a training job has it: opened inside a loop (system sampler on), then logged
    from a thread that is not the loop's (the compute thread)."""
    import asyncio

    from aiotrain.runtime import to_compute
    from aiotrain.tracking import Track

    async def main() -> dict:
        async with Track.run("bench", name="latency", dir=root) as run:
            log = run.log
            return await to_compute(_latency, lambda i: log({"train/loss": 1.0 / (i + 1), "lr": 0.001}), n)

    return asyncio.run(main())


def latency_wandb(root: Path, n: int) -> dict | None:
    run = _wandb_run(root)
    if run is None:
        return None
    try:
        return _latency(lambda i: run.log({"train/loss": 1.0 / (i + 1), "lr": 0.001}, step=i), n)
    finally:
        run.finish()


def latency_tensorboard(root: Path, n: int) -> dict | None:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    writer = SummaryWriter(log_dir=str(root / "tb"))

    def log(i: int) -> None:
        writer.add_scalar("train/loss", 1.0 / (i + 1), i)
        writer.add_scalar("lr", 0.001, i)

    try:
        return _latency(log, n)
    finally:
        writer.close()


def bench_aiotrain_tensor(root: Path, n: int) -> float:
    """The same with 0-d tensors (the ``.item()`` conversion on the caller included)."""
    import torch

    from aiotrain.tracking import Track

    loss, lr = torch.tensor(0.5), torch.tensor(0.001)
    with Track.run("bench", name="tensors", dir=root) as run:
        t0 = time.perf_counter()
        for _ in range(n):
            run.log({"train/loss": loss, "lr": lr})
        return (time.perf_counter() - t0) / n * 1e6


def _wandb_run(root: Path):
    """An offline wandb run under ``root`` (it never reaches the network), or None."""
    try:
        import wandb
    except ImportError:
        return None
    os.environ.update(WANDB_MODE="offline", WANDB_SILENT="true", WANDB_DIR=str(root),
                      WANDB_CACHE_DIR=str(root / "cache"), WANDB_CONFIG_DIR=str(root / "config"),
                      WANDB_DATA_DIR=str(root / "data"), WANDB_DISABLE_GIT="true",
                      WANDB_DISABLE_CODE="true", WANDB_CONSOLE="off")
    return wandb.init(project="bench", dir=str(root), mode="offline")


def bench_wandb(root: Path, n: int) -> float | None:
    run = _wandb_run(root)
    if run is None:
        return None
    try:
        for i in range(50):  # warm up
            run.log({"train/loss": 1.0, "lr": 0.001}, step=i)
        t0 = time.perf_counter()
        for i in range(50, 50 + n):
            run.log({"train/loss": 1.0 / (i + 1), "lr": 0.001}, step=i)
        return (time.perf_counter() - t0) / n * 1e6
    finally:
        run.finish()


def bench_tensorboard(root: Path, n: int) -> float | None:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    writer = SummaryWriter(log_dir=str(root / "tb"))
    try:
        t0 = time.perf_counter()
        for i in range(n):
            writer.add_scalar("train/loss", 1.0 / (i + 1), i)
            writer.add_scalar("lr", 0.001, i)
        return (time.perf_counter() - t0) / n * 1e6
    finally:
        writer.close()


def bench_mlflow(root: Path, n: int) -> float | None:
    try:
        import mlflow
    except ImportError:
        return None
    import logging

    logging.getLogger("mlflow").setLevel(logging.ERROR)
    logging.getLogger("alembic").setLevel(logging.ERROR)
    mlflow.set_tracking_uri(f"sqlite:///{root / 'mlflow.db'}")
    with mlflow.start_run():
        mlflow.log_metrics({"train/loss": 1.0, "lr": 0.001}, step=0)
        t0 = time.perf_counter()
        for i in range(1, n + 1):
            mlflow.log_metrics({"train/loss": 1.0 / (i + 1), "lr": 0.001}, step=i)
        return (time.perf_counter() - t0) / n * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200_000, help="aiotrain log calls per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--peer-calls", type=int, default=2000, help="wandb / TensorBoard calls")
    parser.add_argument("--mlflow-calls", type=int, default=200, help="MLflow calls (a DB write each)")
    parser.add_argument("--skip", nargs="*", default=[], choices=["wandb", "tensorboard", "mlflow"])
    parser.add_argument("--latency-calls", type=int, default=200_000, help="calls timed one by one")
    parser.add_argument("--peer-latency-calls", type=int, default=20_000)
    parser.add_argument("--part", choices=("throughput", "latency", "all"), default="all")
    args = parser.parse_args()
    if args.part in ("throughput", "all"):
        throughput(args)
    if args.part in ("latency", "all"):
        latency(args)


def latency(args) -> None:
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="bench-tracking-") as tmp:
        root = Path(tmp)
        res = {"aiotrain": latency_aiotrain(root / "aiotrain", args.latency_calls)}
        for name, fn in (("wandb_offline", latency_wandb), ("tensorboard", latency_tensorboard)):
            if name.split("_")[0] in args.skip:
                continue
            folder = root / name
            folder.mkdir()
            with contextlib.redirect_stdout(sys.stderr):
                out = fn(folder, args.peer_latency_calls)
            if out is not None:
                res[name] = out
    ours = res["aiotrain"]
    emit("tracking_log_latency", **res, target={"max_first5000_us": 20_000, "max_us_steady": 5_000},
         meets_target=bool(ours["max_first5000_us"] <= 20_000 and ours["max_us"] <= 20_000
                           and ours["calls_over_5ms"] == 0),
         load_before=round(load, 2), load_after=round(os.getloadavg()[0], 2))


def throughput(args) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-tracking-") as tmp:
        root = Path(tmp)
        ours = bench_aiotrain(root / "aiotrain", args.calls, args.rounds)
        tensor_us = bench_aiotrain_tensor(root / "aiotrain", args.calls // 4)
        peers = {}
        for name, fn, calls in (("wandb_offline", bench_wandb, args.peer_calls),
                                ("tensorboard", bench_tensorboard, args.peer_calls),
                                ("mlflow_sqlite", bench_mlflow, args.mlflow_calls)):
            if name.split("_")[0] in args.skip:
                continue
            folder = root / name
            folder.mkdir()
            with contextlib.redirect_stdout(sys.stderr):  # peers may print; one JSON line is ours
                us = fn(folder, calls)
            if us is not None:
                peers[name] = {"us_per_call": round(us, 2), "calls": calls}
    fastest = min(peers.items(), key=lambda kv: kv[1]["us_per_call"]) if peers else None
    ratio = fastest[1]["us_per_call"] / ours["us_per_call"] if fastest else None
    emit("tracking_log_call",
         aiotrain={**ours, "us_per_call": round(ours["us_per_call"], 3),
                   "us_per_call_tensor_scalars": round(tensor_us, 3)},
         peers=peers,
         fastest_peer=fastest[0] if fastest else None,
         speedup_vs_fastest_peer=round(ratio, 1) if ratio else None,
         ratios={name: round(p["us_per_call"] / ours["us_per_call"], 1) for name, p in peers.items()},
         target={"us_per_call_max": 4.0, "speedup_min": 20.0},
         meets_target=bool(ours["us_per_call"] <= 4.0 and (ratio is None or ratio >= 20.0)
                           and ours["all_steps_on_disk"]))


if __name__ == "__main__":
    main()
