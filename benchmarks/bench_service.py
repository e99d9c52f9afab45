"""examples/service.py while it trains: /health latency, the loop's heartbeat, GC's share of the
worst pauses, and how fast a job starts.

Each scenario starts the service on a loopback port (127.0.0.1 only) under the loop probe
(``_loop_probe.py``: a heartbeat task on the service's own loop, waking every 5 ms, and a
``gc.callbacks`` recorder), so what is measured is the service's loop, not the client's.

- ``health``: as before this benchmark grew, /health every 20 ms while a "cold" job trains (the
  first in a fresh process, examples/text.sdn, whose async task factory runs on the loop) and
  then a "warm" digits job; p50/p99/max of each (targets: p99 <= 20 ms, max <= 50 ms).
- ``two_jobs``: two digits jobs at once, in the service's process (``--in-process``: TrainJobs on
  its loop) and in job processes; the heartbeat's p50/p99/max while they train, the ten worst
  pauses, and the share of those pauses' time that a garbage collection overlapped (by
  generation). Target: heartbeat max <= 20 ms in-process (on a quiet machine).
- ``gc``: one full (generation-2) collection in a process with the service's imports, with the
  heap as it is and frozen (what ``aiotrain.runtime.heap`` does while runs go).
- ``job_start``: POST /jobs to the first ITERATION_COMPLETED event (SSE), for job processes:
  the first job of a freshly started service (its job server may still be importing) and later
  ones (warm). Target: <= 0.3 s warm.

One JSON line; the machine's load average goes with it (figures on a busy machine are upper
bounds).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, os.path.dirname(__file__))
from _common import emit  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DIGITS = "examples/digits.sdn"


class Service:
    """examples/service.py under the loop probe, in a temp store."""

    def __init__(self, store: str, in_process: bool) -> None:
        self.out = os.path.join(store, f"probe-{time.monotonic_ns()}.json")
        env = {**os.environ, "AIOTRAIN_DIR": store, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1",
               "AIOTRAIN_PROBE_OUT": self.out}
        self.proc = subprocess.Popen(
            [sys.executable, "benchmarks/_loop_probe.py", "examples/service.py", "--port", "0",
             "--overridable", "seed,train.,optim.,model.,data.extra_vocab",
             *(["--in-process"] if in_process else [])], cwd=ROOT, env=env,
            stdout=subprocess.PIPE, text=True)
        self.url = self.proc.stdout.readline().split("listening on ")[1].strip()

    def samples(self) -> dict:
        self.proc.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + 30
        while not os.path.exists(self.out) and time.monotonic() < deadline:
            time.sleep(0.05)
        with open(self.out) as f:
            data = json.load(f)
        os.unlink(self.out)
        return data

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait()
        self.proc.stdout.close()


def _pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[max(0, int(len(values) * q) - 1)]


def heartbeat(samples: dict, t0: float, t1: float) -> dict:
    """p50/p99/max of the heartbeat in [t0, t1], the ten worst pauses, and GC's share of them."""
    beats = [(t, lag) for t, lag in samples["beats"] if t0 <= t <= t1]
    lags = [lag for _, lag in beats]
    worst = sorted(beats, key=lambda b: -b[1])[:10]
    gcs = samples["collections"]
    total = overlap = 0.0
    by_gen: dict[str, float] = {}
    for woke, lag in worst:
        start = woke - (lag + samples["tick_ms"]) / 1e3  # the beat slept from here
        total += lag
        for g0, g1, gen, _thread in gcs:
            shared = max(0.0, min(g1, woke) - max(g0, start)) * 1e3
            if shared:
                overlap += shared
                by_gen[str(gen)] = by_gen.get(str(gen), 0.0) + shared
    gen2 = [(g1 - g0) * 1e3 for g0, g1, gen, _ in gcs if gen == 2 and t0 <= g1 <= t1]
    sites: dict[str, int] = {}  # what the threads were doing while the loop was stalled
    for when, sample in samples.get("stalls", []):
        if t0 <= when <= t1:
            for thread, frames in sample.items():
                if frames and "probe" not in thread:
                    key = f"{thread.rstrip('0123456789-')}: {frames[-1]}"
                    sites[key] = sites.get(key, 0) + 1
    return {"beats": len(lags), "p50_ms": round(statistics.median(lags), 2),
            "p99_ms": round(_pct(lags, 0.99), 2), "max_ms": round(max(lags), 2),
            "worst10_ms": [round(lag, 1) for _, lag in worst],
            "gc_share_of_worst10": round(min(1.0, overlap / total), 3) if total else 0.0,
            "gc_ms_in_worst10_by_generation": {k: round(v, 1) for k, v in sorted(by_gen.items())},
            "gen2_collections": len(gen2), "gen2_max_ms": round(max(gen2), 1) if gen2 else 0.0,
            "stall_samples_top5": sorted(sites.items(), key=lambda kv: -kv[1])[:5]}


async def post(s: aiohttp.ClientSession, url: str, job: dict) -> str:
    async with s.post(f"{url}/jobs", json=job) as r:
        return (await r.json())["id"]


async def wait_ended(s: aiohttp.ClientSession, url: str, job_id: str) -> str:
    """The job's final status and the epochs it ran, e.g. ``completed after 6 epochs``."""
    while True:
        async with s.get(f"{url}/jobs/{job_id}") as r:
            view = await r.json()
        if view["status"] not in ("pending", "running"):
            return f"{view['status']} after {view.get('epoch')} epochs"
        await asyncio.sleep(0.1)


async def probe_health(url: str, job: dict) -> dict:
    lat = []
    async with aiohttp.ClientSession() as s:
        job_id = await post(s, url, job)
        while True:
            t0 = time.perf_counter()
            async with s.get(f"{url}/health") as r:
                await r.read()
            lat.append((time.perf_counter() - t0) * 1e3)
            async with s.get(f"{url}/jobs/{job_id}") as r:
                status = (await r.json())["status"]
            if status not in ("pending", "running"):
                break
            await asyncio.sleep(0.02)
    return {"status": status, "probes": len(lat), "p50_ms": round(statistics.median(lat), 2),
            "p99_ms": round(_pct(lat, 0.99), 2), "max_ms": round(max(lat), 2)}


async def two_jobs(url: str, epochs: int) -> tuple[float, float, list[str]]:
    job = {"config": DIGITS, "overrides": [f"train.max_epochs={epochs}", "train.patience=null"]}
    async with aiohttp.ClientSession() as s:
        t0 = time.monotonic()
        ids = await asyncio.gather(post(s, url, job), post(s, url, {**job, "overrides": [
            *job["overrides"], "seed=1"]}))
        statuses = await asyncio.gather(*(wait_ended(s, url, i) for i in ids))
        return t0, time.monotonic(), list(statuses)


async def job_start(url: str) -> float:
    """Seconds from POST /jobs to the first ITERATION_COMPLETED event; the job then ends."""
    job = {"config": DIGITS, "overrides": ["train.max_epochs=1", "train.patience=null"]}
    async with aiohttp.ClientSession() as s:
        t0 = time.perf_counter()
        job_id = await post(s, url, job)
        first = None
        async with s.get(f"{url}/jobs/{job_id}/events") as r:
            async for line in r.content:
                if first is None and line.startswith(b"event: iteration_completed"):
                    first = time.perf_counter() - t0
        await wait_ended(s, url, job_id)
    if first is None:
        raise SystemExit("the job never reported an iteration")
    return first


def full_collection_ms() -> dict:
    """A generation-2 collection in a process that imported a service's stack (torch, aiotrain,
    the digits task), with the heap as it is and frozen as ``runtime.heap`` freezes it while
    runs go: the pause a full collection costs every thread, the loop's included."""
    import gc

    sys.path.insert(0, str(ROOT))
    import aiotrain.job.isolation  # noqa: F401
    import examples.digits  # noqa: F401

    def timed() -> float:
        gc.collect()
        t0 = time.perf_counter()
        gc.collect()
        return (time.perf_counter() - t0) * 1e3

    tracked = len(gc.get_objects())
    plain = min(timed() for _ in range(3))
    gc.freeze()
    frozen = min(timed() for _ in range(3))
    gc.unfreeze()
    return {"tracked_objects": tracked, "unfrozen_ms": round(plain, 1), "frozen_ms": round(frozen, 2)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--epochs", type=int, default=2, help="epochs of the cold (text) job")
    p.add_argument("--warm-epochs", type=int, default=20, help="epochs of the warm (digits) job")
    p.add_argument("--pair-epochs", type=int, default=6, help="epochs of each of the two jobs at once")
    p.add_argument("--starts", type=int, default=4, help="job starts timed (the first on a fresh service)")
    p.add_argument("--in-process", action="store_true",
                   help="the health part runs jobs on the service's loop (its --in-process)")
    p.add_argument("--part", choices=("health", "two_jobs", "job_start", "gc", "all"), default="all")
    a = p.parse_args()
    res: dict = {}
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as store:
        if a.part in ("health", "all"):
            svc = Service(store, a.in_process)
            try:
                cold = {"config": "examples/text.sdn",
                        "overrides": [f"train.max_epochs={a.epochs}", "data.extra_vocab=20000"]}
                warm = {"config": DIGITS,
                        "overrides": [f"train.max_epochs={a.warm_epochs}", "train.patience=null"]}
                res["health"] = {"jobs": "in the service's process" if a.in_process else "in job processes",
                                 "cold_first_job_async_factory": asyncio.run(probe_health(svc.url, cold)),
                                 "warm_job": asyncio.run(probe_health(svc.url, warm))}
            finally:
                svc.close()
        if a.part in ("two_jobs", "all"):
            res["two_jobs"] = {}
            for label, in_process in (("in_process", True), ("job_processes", False)):
                svc = Service(store, in_process)
                try:
                    asyncio.run(two_jobs(svc.url, 1))  # first jobs: imports, caches, the job server
                    t0, t1, statuses = asyncio.run(two_jobs(svc.url, a.pair_epochs))
                    res["two_jobs"][label] = {"statuses": statuses, "seconds": round(t1 - t0, 1),
                                              **heartbeat(svc.samples(), t0, t1)}
                finally:
                    svc.close()
        if a.part in ("gc", "all"):
            res["full_collection"] = full_collection_ms()
        if a.part in ("job_start", "all"):
            svc = Service(store, False)
            try:
                starts = [asyncio.run(job_start(svc.url)) for _ in range(a.starts)]
            finally:
                svc.close()
            res["job_start"] = {"first_s": round(starts[0], 3),
                                "warm_s": [round(s, 3) for s in starts[1:]],
                                "warm_median_s": round(statistics.median(starts[1:]), 3)}
    emit("service", **res, load_before=round(load, 2), load_after=round(os.getloadavg()[0], 2),
         targets={"health_p99_ms_max": 20, "health_max_ms_max": 50,
                  "in_process_heartbeat_max_ms_max": 20, "warm_job_start_s_max": 0.3})


if __name__ == "__main__":
    main()
