"""/health latency of examples/service.py while it trains digits jobs on the same event loop.

Starts the service on a loopback port (127.0.0.1 only), then runs two jobs one after the other
and probes /health every 20 ms while each trains: the "cold" job is the first in a fresh process
and has an async task factory (examples/text.sdn: its factory runs on the loop, so any one-time
import or lazy initialisation it triggers there would stall the service), the "warm" one is a
digits job in a running service. Reports p50/p99/max of each and the machine's load average.
Targets: p99 <= 20 ms and max <= 50 ms, cold job included. One JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import os
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


async def probe(url: str, job: dict) -> dict:
    lat = []
    async with aiohttp.ClientSession() as s:
        async with s.post(f"{url}/jobs", json=job) as r:
            job_id = (await r.json())["id"]
        t_end = None
        while True:
            t0 = time.perf_counter()
            async with s.get(f"{url}/health") as r:
                await r.read()
            lat.append((time.perf_counter() - t0) * 1e3)
            async with s.get(f"{url}/jobs/{job_id}") as r:
                status = (await r.json())["status"]
            if status not in ("pending", "running"):
                t_end = status
                break
            await asyncio.sleep(0.02)
    lat.sort()
    return {"status": t_end, "probes": len(lat), "p50_ms": round(statistics.median(lat), 2),
            "p99_ms": round(lat[max(0, int(len(lat) * 0.99) - 1)], 2), "max_ms": round(lat[-1], 2)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--epochs", type=int, default=2, help="epochs of the cold (text) job")
    p.add_argument("--warm-epochs", type=int, default=20, help="epochs of the warm (digits) job")
    p.add_argument("--in-process", action="store_true",
                   help="the service runs jobs on its own loop (its --in-process), not in job processes")
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as store:
        env = {**os.environ, "AIOTRAIN_DIR": store, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
        proc = subprocess.Popen([sys.executable, "examples/service.py", "--port", "0",
                                 "--overridable", "seed,train.,optim.,model.,data.extra_vocab",
                                 *(["--in-process"] if a.in_process else [])], cwd=ROOT,
                                env=env, stdout=subprocess.PIPE, text=True)
        try:
            url = proc.stdout.readline().split("listening on ")[1].strip()
            cold = {"config": "examples/text.sdn",
                    "overrides": [f"train.max_epochs={a.epochs}", "data.extra_vocab=20000"]}
            warm = {"config": "examples/digits.sdn",
                    "overrides": [f"train.max_epochs={a.warm_epochs}", "train.patience=null"]}
            res = {"cold_first_job_async_factory": asyncio.run(probe(url, cold)),
                   "warm_job": asyncio.run(probe(url, warm))}
        finally:
            proc.terminate()
            proc.wait()
    emit("service_health", jobs="in the service's process" if a.in_process else "in job processes",
         **res, load_avg_1m=round(os.getloadavg()[0], 2),
         targets={"p99_ms_max": 20, "max_ms_max": 50})


if __name__ == "__main__":
    main()
