"""Overlap of I/O latency with compute: items behind 5 ms each, batch 32, a 10 ms step.

Side by side, each in its own subprocess (so peak RSS includes DataLoader worker processes):
aiotrain (Engine + AsyncLoader, async dataset), Ignite + torch DataLoader with num_workers=0 and
2, and a plain loop; first with an in-process async/sleep dataset, then with the same items
behind a loopback HTTP server (aiohttp, 127.0.0.1 only). The 10 ms step sleeps, releasing the
GIL as a GPU step would. efficiency = compute-bound ideal time / measured time.

A DataLoader user with latency-bound items would not stop at 2 workers: so, per source, the
smallest num_workers (from 4 up) that matches aiotrain's throughput is searched for, on as many
batches as aiotrain, and its peak RSS is reported next to aiotrain's. One JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))

LATENCY, BATCH, STEP = 0.005, 32, 0.010
ITEM = b"\x00" * 128  # 32 float32
MATCH_WORKERS = (4, 8, 12, 16, 24, 32, 48, 64)


class SleepDataset:
    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n

    async def aget(self, i):
        await asyncio.sleep(LATENCY)
        return _tensor(ITEM, i)

    def __getitem__(self, i):
        time.sleep(LATENCY)
        return _tensor(ITEM, i)


class HttpDataset:
    def __init__(self, n, url):
        self.n, self.url, self.session = n, url, None

    def __len__(self):
        return self.n

    async def aget(self, i):
        import aiohttp

        if self.session is None:
            self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64))
        async with self.session.get(f"{self.url}/item/{i}") as resp:
            return _tensor(await resp.read(), i)

    def __getitem__(self, i):
        import urllib.request

        with urllib.request.urlopen(f"{self.url}/item/{i}") as resp:
            return _tensor(resp.read(), i)


def _tensor(raw, i):
    import torch

    return torch.frombuffer(bytearray(raw), dtype=torch.float32) + i


def step(engine, batch):
    time.sleep(STEP)


def run_config(name: str, n_batches: int, url: str | None) -> dict:
    import torch
    from _common import PeakRss

    n = n_batches * BATCH
    ds = HttpDataset(n, url) if url else SleepDataset(n)
    with PeakRss() as rss:
        t0 = time.perf_counter()
        if name == "aiotrain":
            from aiotrain import AsyncLoader, Engine

            Engine(step).run_sync(AsyncLoader(ds, BATCH, concurrency=64, prefetch=4), max_epochs=1)
        elif name.startswith("ignite"):
            from ignite.engine import Engine as IgniteEngine
            from torch.utils.data import DataLoader

            workers = int(name.rsplit("w", 1)[1])
            dl = DataLoader(ds, batch_size=BATCH, num_workers=workers)
            IgniteEngine(step).run(dl, max_epochs=1)
        else:  # plain loop
            for b in range(n_batches):
                torch.stack([ds[i] for i in range(b * BATCH, (b + 1) * BATCH)])
                step(None, None)
        elapsed = time.perf_counter() - t0
    ideal = n_batches * STEP
    return {"items_per_s": round(n / elapsed, 1), "peak_rss_mb": rss.mb,
            "efficiency": round(ideal / elapsed, 3), "batches": n_batches}


def serve(port_file: str) -> None:
    from aiohttp import web

    async def item(request):
        await asyncio.sleep(LATENCY)
        return web.Response(body=ITEM)

    async def main():
        app = web.Application()
        app.router.add_get("/item/{i}", item)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]
        with open(port_file, "w") as f:  # noqa: ASYNC230 - once, at start-up
            f.write(str(port))
        await asyncio.Event().wait()

    asyncio.run(main())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--batches", type=int, default=300, help="batches for aiotrain (3 s of compute; start-up included)")
    p.add_argument("--slow-batches", type=int, default=20, help="batches for the slow baselines")
    p.add_argument("--config")
    p.add_argument("--url")
    p.add_argument("--serve")
    a = p.parse_args()
    if a.serve:
        return serve(a.serve)
    if a.config:
        print(json.dumps(run_config(a.config, a.batches, a.url)))
        return
    import tempfile

    from _common import emit

    port_file = tempfile.mktemp()
    server = subprocess.Popen([sys.executable, __file__, "--serve", port_file])
    try:
        while not os.path.exists(port_file) or not open(port_file).read():
            time.sleep(0.05)
        url = f"http://127.0.0.1:{open(port_file).read()}"
        results: dict[str, dict] = {}
        matches: dict[str, int | None] = {"memory": None, "http": None}
        for source, src_url in (("memory", None), ("http", url)):
            for cfg, nb in (("aiotrain", a.batches), ("ignite_w0", a.slow_batches),
                            ("ignite_w2", a.slow_batches), ("plain", a.slow_batches)):
                cmd = [sys.executable, __file__, "--config", cfg, "--batches", str(nb)]
                if src_url:
                    cmd += ["--url", src_url]
                out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
                results[f"{source}/{cfg}"] = json.loads(out.strip().splitlines()[-1])
            goal = results[f"{source}/aiotrain"]["items_per_s"]
            for k in MATCH_WORKERS:  # enough DataLoader workers to keep up with aiotrain
                cmd = [sys.executable, __file__, "--config", f"ignite_w{k}", "--batches", str(a.batches)]
                if src_url:
                    cmd += ["--url", src_url]
                out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
                got = results[f"{source}/ignite_w{k}"] = json.loads(out.strip().splitlines()[-1])
                if got["items_per_s"] >= 0.97 * goal:
                    matches[source] = k
                    break
    finally:
        server.terminate()
        server.wait()
        os.path.exists(port_file) and os.unlink(port_file)
    ratios = {s: {"throughput_vs_dataloader_w2": round(results[f"{s}/aiotrain"]["items_per_s"]
                                                       / results[f"{s}/ignite_w2"]["items_per_s"], 2),
                  "rss_vs_dataloader_w2": round(results[f"{s}/aiotrain"]["peak_rss_mb"]
                                                / results[f"{s}/ignite_w2"]["peak_rss_mb"], 2)}
              for s in ("memory", "http")}
    for s, k in matches.items():
        ratios[s]["dataloader_workers_to_match"] = k
        ratios[s]["matching_dataloader_rss_vs_aiotrain"] = None if k is None else round(
            results[f"{s}/ignite_w{k}"]["peak_rss_mb"] / results[f"{s}/aiotrain"]["peak_rss_mb"], 2)
    emit("overlap", latency_ms=LATENCY * 1e3, batch=BATCH, step_ms=STEP * 1e3, results=results,
         load_avg=round(os.getloadavg()[0], 2),
         ratios=ratios, targets={"efficiency_min": 0.90, "throughput_vs_dataloader_w2_min": 5,
                                 "rss_vs_dataloader_w2_max": 1.0})


if __name__ == "__main__":
    main()
