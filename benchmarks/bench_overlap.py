"""Overlap of I/O latency with compute: items behind 5 ms each, batch 32, a 10 ms step.

Side by side, each in its own subprocess (so peak memory includes DataLoader worker processes):
aiotrain (Engine + AsyncLoader, async dataset), Ignite + torch DataLoader with num_workers=0 and
2, and a plain loop; first with an in-process async/sleep dataset, then with the same items
behind a loopback HTTP server (aiohttp, 127.0.0.1 only). The 10 ms step sleeps, releasing the
GIL as a GPU step would. efficiency = compute-bound ideal time / measured time.

A DataLoader user with latency-bound items would not stop at 2 workers: so, per source,
num_workers is doubled from 4 until DataLoader matches aiotrain's throughput, or stops gaining
(under 5 % more than the previous try: it is saturated, the machine's cores are busy), or
reaches ``--max-workers``; its figures are reported next to aiotrain's whether it matched or not.

Libraries are imported before the clock starts. ``items_per_s`` is the steady rate between the
first and the last step, ``first_batch_s`` the start-up. Memory is summed over the process and
its children: ``peak_rss_mb`` counts shared pages in every process (as ``ps`` does),
``peak_pss_mb`` splits them among their users (what the processes really hold). One JSON line.
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


STAMPS: list[float] = []  # when each step began


def step(engine, batch):
    STAMPS.append(time.perf_counter())
    time.sleep(STEP)


def run_config(name: str, n_batches: int, url: str | None) -> dict:
    import torch
    from _common import PeakRss
    from ignite.engine import Engine as IgniteEngine
    from torch.utils.data import DataLoader

    from aiotrain import AsyncLoader, Engine

    n = n_batches * BATCH
    ds = HttpDataset(n, url) if url else SleepDataset(n)
    with PeakRss(pss=True) as rss:
        t0 = time.perf_counter()
        if name == "aiotrain":
            Engine(step).run_sync(AsyncLoader(ds, BATCH, concurrency=64, prefetch=4), max_epochs=1)
        elif name.startswith("ignite"):
            workers = int(name.rsplit("w", 1)[1])
            dl = DataLoader(ds, batch_size=BATCH, num_workers=workers)
            IgniteEngine(step).run(dl, max_epochs=1)
        else:  # plain loop
            for b in range(n_batches):
                torch.stack([ds[i] for i in range(b * BATCH, (b + 1) * BATCH)])
                step(None, None)
        elapsed = time.perf_counter() - t0
    steady = (len(STAMPS) - 1) * BATCH / (STAMPS[-1] - STAMPS[0])
    ideal = (n_batches - 1) * STEP
    return {"items_per_s": round(steady, 1), "first_batch_s": round(STAMPS[0] - t0, 3),
            "total_items_per_s": round(n / elapsed, 1), "peak_rss_mb": rss.mb,
            "peak_pss_mb": rss.pss_mb, "efficiency": round(ideal / (STAMPS[-1] - STAMPS[0] + STEP), 3),
            "batches": n_batches}


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
    p.add_argument("--batches", type=int, default=300, help="batches for aiotrain (3 s of compute)")
    p.add_argument("--slow-batches", type=int, default=20, help="batches for the slow baselines")
    p.add_argument("--match-batches", type=int, default=100,
                   help="batches for each DataLoader tried in the match search")
    p.add_argument("--max-workers", type=int, default=64, help="largest num_workers tried")
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

    def measure(cfg: str, batches: int, url: str | None) -> dict:
        cmd = [sys.executable, __file__, "--config", cfg, "--batches", str(batches)]
        if url:
            cmd += ["--url", url]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=600).stdout
        got = json.loads(out.strip().splitlines()[-1])
        print(f"{cfg} {url or 'memory'}: {got}", file=sys.stderr, flush=True)
        return got

    load_before = os.getloadavg()[0]
    port_file = tempfile.mktemp()
    server = subprocess.Popen([sys.executable, __file__, "--serve", port_file])
    results: dict[str, dict] = {}
    matches: dict[str, int | None] = {"memory": None, "http": None}
    best: dict[str, tuple[float, int]] = {}
    try:
        while not os.path.exists(port_file) or not open(port_file).read():
            time.sleep(0.05)
        url = f"http://127.0.0.1:{open(port_file).read()}"
        for source, src_url in (("memory", None), ("http", url)):
            for cfg, nb in (("aiotrain", a.batches), ("ignite_w0", a.slow_batches),
                            ("ignite_w2", a.slow_batches), ("plain", a.slow_batches)):
                results[f"{source}/{cfg}"] = measure(cfg, nb, src_url)
            goal = results[f"{source}/aiotrain"]["items_per_s"]
            k, previous = 4, results[f"{source}/ignite_w2"]["items_per_s"]
            while k <= a.max_workers:  # enough DataLoader workers to keep up with aiotrain
                got = results[f"{source}/ignite_w{k}"] = measure(f"ignite_w{k}", a.match_batches,
                                                                 src_url)
                best[source] = max(best.get(source, (0.0, 0)), (got["items_per_s"], k))
                if got["items_per_s"] >= goal:
                    matches[source] = k
                    break
                if got["items_per_s"] < 1.05 * previous:
                    break  # saturated: more workers only add processes
                previous, k = got["items_per_s"], 2 * k
    finally:
        server.terminate()
        server.wait()
        os.path.exists(port_file) and os.unlink(port_file)

    def ratio(s: str, x: str, y: str, field: str) -> float:
        return round(results[f"{s}/{x}"][field] / results[f"{s}/{y}"][field], 2)

    ratios: dict[str, dict] = {}
    for s in ("memory", "http"):
        k = matches[s]
        ratios[s] = {
            "throughput_vs_dataloader_w2": ratio(s, "aiotrain", "ignite_w2", "items_per_s"),
            "rss_vs_dataloader_w2": ratio(s, "aiotrain", "ignite_w2", "peak_rss_mb"),
            "dataloader_workers_to_match": k,
            "best_dataloader": {"workers": best[s][1], "items_per_s": best[s][0],
                                "vs_aiotrain": round(best[s][0] / results[f"{s}/aiotrain"]["items_per_s"], 2)},
            **{f"{'matching' if k else 'best'}_dataloader_{m}_vs_aiotrain": ratio(
                s, f"ignite_w{k or best[s][1]}", "aiotrain", f"peak_{m}_mb") for m in ("rss", "pss")},
        }
    emit("overlap", latency_ms=LATENCY * 1e3, batch=BATCH, step_ms=STEP * 1e3, results=results,
         load_avg_before=round(load_before, 2), load_avg_after=round(os.getloadavg()[0], 2),
         ratios=ratios, targets={"efficiency_min": 0.90, "throughput_vs_dataloader_w2_min": 5,
                                 "rss_vs_dataloader_w2_max": 1.0})


if __name__ == "__main__":
    main()
