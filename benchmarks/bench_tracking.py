"""Cost of ``log`` on the training thread and the GIL bursts of the trackers' background work:
aiotrain vs wandb (offline), TensorBoard's SummaryWriter and MLflow, side by side in one run.

Two measurements per tracker, each with the load average before and after it:

* **Per call** (``calls``): a fresh run logs ``{"train/loss": x, "lr": y}`` once per step in a
  tight loop on this thread, every call timed (``time.perf_counter`` around it; the timer pair's
  own cost is ``timer_us``): the median, the mean over the first 5,000 calls (where first-use
  work shows: a writer's first drain, lazy imports), the p99, the max and the counts of calls over
  1 ms and 5 ms. Background work (aiotrain's drains, wandb's threads, the SummaryWriter's writer
  thread) counts only as far as it makes this thread wait (the GIL, the CPU). aiotrain's plain
  ``us_per_call`` is also timed untimed-per-call (the loop's total over the calls, median of
  ``--rounds``), with ``finish`` timed apart and every step checked on disk afterwards.
* **GIL probe** (``gil``): inside an event loop (``aiotrain.run``), a run is created and logs
  ``--per-step`` records after every ``await asyncio.sleep(0.001)`` (the loop idle, as beside a
  step that releases the GIL) for ``--paced-s`` seconds, while a probe thread sleeps 1 ms in a
  loop and records how late it wakes (``_gil_probe.py``): the worst lateness in the first
  ``--start-s`` seconds after the run is created (``start``: its creation and first drains) and
  after (``steady``), the worst one that did not overlap a garbage collection, the worst wait for
  the GIL (the lateness less the time the probe and the busiest thread waited for a core: the
  figure that stays fair on a loaded machine) and which thread was busiest, and the collections
  over 1 ms; and ``loop_late_max_ms``, the worst lateness of a heartbeat task that sleeps 1 ms
  at a time on the same loop (the loop stalled, or waiting for the GIL). aiotrain's run is started as ``async with`` starts it
  (``astart``: its files, and the system sampler, every 0.1 s here, 20x the default, so the
  sampler is measured too); ``create_ms`` is the time from creating the run until it is started.
  This phase runs first for each tracker, so its start includes the tracker's first-use work in
  this process (the modules themselves are imported before anything is measured). aiotrain runs
  it twice: with the two-scalar records, and (``gil_wide``) with ``--wide-keys`` more keys per
  record (a per-layer norm each, as ``watch`` logs), where drains are big. The heap is
  collected (``gc.collect()``) before each phase, so a full collection of the start-up heap (the
  first one after importing torch costs ~75 ms of CPU, on whichever thread allocates) does not
  land on one tracker by chance; any collection that does happen is reported.

TensorBoard's "call" is two ``add_scalar`` calls (one per value); wandb runs with
``WANDB_MODE=offline`` in a temp dir and never reaches the network; MLflow logs to a local sqlite
store (per-call figures only: a database write per call). Targets (issues 7 and 26): aiotrain
<= 4 us per call, >= 20x faster than the fastest peer, no GIL burst over 5 ms in steady state and
none over 20 ms at start (``worst_gil_wait_ms``, not counting collections of the heap). Prints
one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _gil_probe import GilProbe  # noqa: E402

from aiotrain.runtime import run as run_loop  # noqa: E402
from aiotrain.tracking import Track  # noqa: E402
from aiotrain.tracking.reader import read_history  # noqa: E402

FIRST = 5000


class Tracker:
    """One tracker behind the same calls: ``start`` a run, ``log`` step ``i``, ``finish``; inside
    an event loop ``astart`` / ``afinish`` (what an async application calls)."""

    name = ""

    def __init__(self, root: Path) -> None:
        self.root = root / self.name
        self.root.mkdir(parents=True, exist_ok=True)

    def start(self) -> None:
        raise NotImplementedError

    def log(self, i: int) -> None:
        raise NotImplementedError

    def finish(self) -> None:
        raise NotImplementedError

    async def astart(self) -> None:
        self.start()

    async def afinish(self) -> None:
        self.finish()

    def folder(self) -> Path:
        """A new empty folder for one run."""
        return Path(tempfile.mkdtemp(dir=self.root))


class Aiotrain(Tracker):
    name = "aiotrain"
    keys = 0  # extra keys per record (the wide variant)

    def start(self) -> None:
        self.run = Track.run("bench", dir=self.folder(), system_interval=0.1)
        self.run_log = self.run.log
        self.extra = {f"layer{j}/grad_norm": 0.5 for j in range(self.keys)}

    def log(self, i: int) -> None:
        if self.keys:
            self.run_log({"train/loss": 1.0 / (i + 1), "lr": 0.001, **self.extra})
        else:
            self.run_log({"train/loss": 1.0 / (i + 1), "lr": 0.001})

    def finish(self) -> None:
        self.run.finish()

    async def astart(self) -> None:
        self.start()
        await self.run.astart()  # what ``async with`` does: files, and the system sampler task

    async def afinish(self) -> None:
        await self.run.afinish()


class Wandb(Tracker):
    name = "wandb_offline"

    def start(self) -> None:
        import wandb

        root = self.folder()
        os.environ.update(WANDB_MODE="offline", WANDB_SILENT="true", WANDB_DIR=str(root),
                          WANDB_CACHE_DIR=str(root / "cache"), WANDB_CONFIG_DIR=str(root / "config"),
                          WANDB_DATA_DIR=str(root / "data"), WANDB_DISABLE_GIT="true",
                          WANDB_DISABLE_CODE="true", WANDB_CONSOLE="off")
        self.run = wandb.init(project="bench", dir=str(root), mode="offline")

    def log(self, i: int) -> None:
        self.run.log({"train/loss": 1.0 / (i + 1), "lr": 0.001}, step=i)

    def finish(self) -> None:
        self.run.finish()


class TensorBoard(Tracker):
    name = "tensorboard"

    def start(self) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(self.folder()))

    def log(self, i: int) -> None:
        self.writer.add_scalar("train/loss", 1.0 / (i + 1), i)
        self.writer.add_scalar("lr", 0.001, i)

    def finish(self) -> None:
        self.writer.close()


class Mlflow(Tracker):
    name = "mlflow_sqlite"

    def start(self) -> None:
        import mlflow

        mlflow.set_tracking_uri(f"sqlite:///{self.folder() / 'mlflow.db'}")
        self.mlflow = mlflow
        self.active = mlflow.start_run()

    def log(self, i: int) -> None:
        self.mlflow.log_metrics({"train/loss": 1.0 / (i + 1), "lr": 0.001}, step=i)

    def finish(self) -> None:
        self.mlflow.end_run()


def installed(tracker: type[Tracker]) -> bool:
    """Import the tracker's module now, so that no measurement includes the import itself."""
    modules = {"wandb_offline": "wandb", "tensorboard": "torch.utils.tensorboard", "mlflow_sqlite": "mlflow"}
    if tracker.name not in modules:
        return True
    try:
        __import__(modules[tracker.name])
    except ImportError:
        return False
    if tracker.name == "mlflow_sqlite":
        for name in ("mlflow", "alembic"):
            logging.getLogger(name).setLevel(logging.ERROR)
    return True


def per_call(tracker: Tracker, n: int) -> dict[str, Any]:
    """Every call of a fresh run timed; the run's creation and finish timed apart."""
    clock = time.perf_counter
    gc.collect()
    load = os.getloadavg()[0]
    t0 = clock()
    tracker.start()
    start_s = clock() - t0
    log = tracker.log
    times = [0.0] * n
    for i in range(n):
        t = clock()
        log(i)
        times[i] = clock() - t
    t1 = clock()
    tracker.finish()
    finish_s = clock() - t1
    ordered = sorted(times)
    return {
        "n": n, "median_us": round(ordered[n // 2] * 1e6, 2),
        "mean_us": round(sum(times) / n * 1e6, 2),
        "mean_first_5000_us": round(sum(times[:FIRST]) / min(n, FIRST) * 1e6, 2),
        "p99_us": round(ordered[int(n * 0.99)] * 1e6, 2), "max_ms": round(ordered[-1] * 1e3, 2),
        "over_1ms": sum(1 for t in times if t > 1e-3), "over_5ms": sum(1 for t in times if t > 5e-3),
        "start_s": round(start_s, 3), "finish_s": round(finish_s, 3),
        "load_1m": [round(load, 2), round(os.getloadavg()[0], 2)],
    }


def gil_probe(tracker: Tracker, seconds: float, start_s: float, per_step: int) -> dict[str, Any]:
    """The probe's view of a run created and logging inside an event loop (see the module doc)."""
    clock = time.perf_counter

    beats: list[tuple[float, float]] = []  # (woke at, late s) of a heartbeat task on the loop

    async def heartbeat() -> None:
        while True:
            t = clock()
            await asyncio.sleep(0.001)
            now = clock()
            beats.append((now, now - t - 0.001))

    async def main() -> dict[str, float]:
        beat = asyncio.create_task(heartbeat())
        await asyncio.sleep(0.05)
        t0 = clock()
        await tracker.astart()
        created = clock()
        i = 0
        while clock() - created < seconds:
            await asyncio.sleep(0.001)
            for _ in range(per_step):
                tracker.log(i)
                i += 1
        end = clock()
        beat.cancel()
        await tracker.afinish()
        return {"t0": t0, "created": created, "end": end, "logged": i}

    def loop_late(t0: float, t1: float) -> float:
        return round(max((late for woke, late in beats if t0 <= woke <= t1), default=0.0) * 1e3, 2)

    gc.collect()
    load = os.getloadavg()[0]
    with GilProbe() as probe:
        marks = run_loop(main())
    split = marks["created"] + start_s
    return {
        "start": {**probe.window(marks["t0"], split), "loop_late_max_ms": loop_late(marks["t0"], split)},
        "steady": {**probe.window(split, marks["end"]), "loop_late_max_ms": loop_late(split, marks["end"])},
        "create_ms": round((marks["created"] - marks["t0"]) * 1e3, 2), "logged": marks["logged"],
        "load_1m": [round(load, 2), round(os.getloadavg()[0], 2)],
    }


def aiotrain_rounds(root: Path, n: int, rounds: int) -> dict[str, Any]:
    """The plain per-call cost (no timer per call), median of ``rounds``; every step checked on disk."""
    per, finish_s, ok = [], [], True
    for r in range(rounds):
        run = Track.run("bench", name=f"round{r}", dir=root)
        log = run.log
        t0 = time.perf_counter()
        for i in range(n):
            log({"train/loss": 1.0 / (i + 1), "lr": 0.001})
        per.append((time.perf_counter() - t0) / n)
        t1 = time.perf_counter()
        run.finish()
        finish_s.append(time.perf_counter() - t1)
        ok = ok and [rec["step"] for rec in read_history(run.dir / "metrics.jsonl")] == list(range(n))
    return {"us_per_call": round(statistics.median(per) * 1e6, 3),
            "us_per_call_rounds": [round(p * 1e6, 3) for p in per],
            "finish_s": round(statistics.median(finish_s), 4), "all_steps_on_disk": ok}


def tensor_scalars(root: Path, n: int) -> float:
    """The same with 0-d tensors (the ``.item()`` conversion on the caller included)."""
    import torch

    loss, lr = torch.tensor(0.5), torch.tensor(0.001)
    with Track.run("bench", name="tensors", dir=root) as run:
        t0 = time.perf_counter()
        for _ in range(n):
            run.log({"train/loss": loss, "lr": lr})
        return round((time.perf_counter() - t0) / n * 1e6, 3)


def timer_cost() -> float:
    clock = time.perf_counter
    best = 1.0
    for _ in range(5):
        t0 = clock()
        for _ in range(10000):
            t = clock()
            _ = clock() - t
        best = min(best, (clock() - t0) / 10000)
    return round(best * 1e6, 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200_000, help="aiotrain log calls (per round, and timed)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--peer-calls", type=int, default=FIRST, help="wandb / TensorBoard calls, timed")
    parser.add_argument("--mlflow-calls", type=int, default=200, help="MLflow calls (a DB write each)")
    parser.add_argument("--paced-s", type=float, default=4.0, help="seconds of the GIL-probe phase")
    parser.add_argument("--start-s", type=float, default=1.5, help="what counts as the start of a run")
    parser.add_argument("--per-step", type=int, default=4, help="records logged per loop wake-up")
    parser.add_argument("--wide-keys", type=int, default=200, help="keys per record of the wide variant")
    parser.add_argument("--skip", nargs="*", default=[], choices=["wandb", "tensorboard", "mlflow"])
    args = parser.parse_args()

    kinds: list[tuple[type[Tracker], int, bool]] = [
        (Aiotrain, args.calls, True), (Wandb, args.peer_calls, True),
        (TensorBoard, args.peer_calls, True), (Mlflow, args.mlflow_calls, False)]
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-tracking-") as tmp:
        root = Path(tmp)
        kinds = [k for k in kinds if k[0].name.split("_")[0] not in args.skip and installed(k[0])]
        with contextlib.redirect_stdout(sys.stderr):  # peers may print; one JSON line is ours
            for kind, _, probe in kinds:  # the probe first: a run's start includes first-use work
                if probe:
                    results[kind.name] = {"gil": gil_probe(kind(root), args.paced_s, args.start_s, args.per_step)}
            wide = Aiotrain(root)
            wide.keys = args.wide_keys
            results["aiotrain"]["gil_wide"] = gil_probe(wide, args.paced_s, args.start_s, args.per_step)
            for kind, n, _ in kinds:
                results.setdefault(kind.name, {})["calls"] = per_call(kind(root), n)
            ours = aiotrain_rounds(root / "rounds", args.calls, args.rounds)
            ours["us_per_call_tensor_scalars"] = tensor_scalars(root / "tensors", args.calls // 4)
    from _common import emit  # imports psutil: only now, so no tracker's start finds it imported

    aiotrain = {**ours, **results.pop("aiotrain")}
    peers = results
    us = {name: p["calls"]["mean_us"] for name, p in peers.items()}
    fastest = min(us, key=us.__getitem__) if us else None
    ratio = us[fastest] / ours["us_per_call"] if fastest else None
    start_worst = aiotrain["gil"]["start"]["worst_gil_wait_ms"]
    steady_worst = aiotrain["gil"]["steady"]["worst_gil_wait_ms"]
    emit("tracking_log_call",
         aiotrain=aiotrain, peers=peers, timer_us=timer_cost(),
         fastest_peer=fastest, speedup_vs_fastest_peer=round(ratio, 1) if ratio else None,
         ratios={name: round(v / ours["us_per_call"], 1) for name, v in us.items()},
         target={"us_per_call_max": 4.0, "speedup_min": 20.0, "gil_steady_max_ms": 5.0, "gil_start_max_ms": 20.0},
         meets_target=bool(ours["us_per_call"] <= 4.0 and (ratio is None or ratio >= 20.0)
                           and ours["all_steps_on_disk"]),
         meets_gil_target=bool(steady_worst <= 5.0 and start_worst <= 20.0),
         load_1m_end=round(os.getloadavg()[0], 2), cores=os.cpu_count())


if __name__ == "__main__":
    main()
