"""The dashboard's costs: chart data for a 10^6-point history, the runs table over 1,000 runs,
and the system metrics sampler's share of training throughput.

* ``chart_data``: a run logs N records (train/loss, lr) through ``Track.run``, so its writer
  also fills the binary column cache (metrics.columns/). The dashboard app is served over
  loopback HTTP (aiohttp's test server, in process). ``cold_ms`` is the first ``/api/series``
  request of a fresh app (columns read from the cache), ``warm_ms`` the median of the next ones,
  ``append_ms`` a request after 1,000 lines appended to the jsonl behind the cache's back (read
  as JSON). Peers, same run: ``cold_jsonl_ms``, the first request of another fresh app with the
  cache removed (the whole file decoded, as before the cache existed); the same history sent
  without downsampling (``full_json_ms``: encoding all N points, ``full_json_mb``).
* ``runs_table``: 1,000 runs written through ``Track.run``; ``/api/runs`` cold (a fresh app:
  every run's row.json read and checked against its SDN files' size and mtime), warm (index
  refreshed: a stat per file), and with a filter + sort. Peers: ``cold_sdn_ms``, a fresh app
  with the row files hidden (every metadata.sdn and summary.sdn parsed), and ``list_runs``
  (loads every run again, as ``runs ls`` did).
* ``system_sampler``: one ``SystemSampler.sample()`` (median), and its share of one core at the
  default interval; then a CPU-bound training loop (aiotrain Engine, small MLP) run inside
  ``async with Track.run(...)`` with the sampler at the default interval and at 0.1 s, against
  the sampler off, in alternating rounds; ``throughput_ratio`` = on / off (median of rounds).

Prints one JSON line per part. ``--quick`` shrinks the sizes (for smoke runs).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import emit  # noqa: E402


async def _get(client, path, **params):
    t0 = time.perf_counter()
    resp = await client.get(path, params=params)
    body = await resp.read()
    assert resp.status == 200, body[:300]
    return (time.perf_counter() - t0) * 1000, len(body)


def _append(path: Path, first: int, end: int) -> int:
    """Append records ``first..end-1`` (step, timestamp, train/loss, lr); returns the file size."""
    import msgspec

    enc = msgspec.json.Encoder()
    with open(path, "ab") as f:
        for start in range(first, end, 100_000):
            f.write(enc.encode_lines([{"step": i, "timestamp": 1.7e9 + i * 0.01, "train/loss": 1.0 / (i + 1),
                                       "lr": 0.001} for i in range(start, min(end, start + 100_000))]))
    return os.path.getsize(path)


async def _first_series(root: Path, params: dict) -> float:
    """The first ``/api/series`` request of a fresh dashboard app over ``root``."""
    from aiohttp.test_utils import TestClient, TestServer

    from aiotrain.dashboard import dashboard_app

    client = TestClient(TestServer(dashboard_app(root)))
    await client.start_server()
    try:
        return (await _get(client, "/api/series", **params))[0]
    finally:
        await client.close()


async def chart_data(root: Path, n: int) -> dict:
    import shutil

    import msgspec
    from aiohttp.test_utils import TestClient, TestServer

    from aiotrain.dashboard import dashboard_app
    from aiotrain.runtime import to_io
    from aiotrain.tracking import Track
    from aiotrain.tracking.columns import cache_dir

    def write() -> Path:
        with Track.run("bench", name="big", dir=root, system_interval=None) as run:
            for i in range(n):
                run.log({"train/loss": 1.0 / (i + 1), "lr": 0.001})
        return run.dir

    t0 = time.perf_counter()
    run_dir = await to_io(write)
    write_s = time.perf_counter() - t0
    jsonl = run_dir / "metrics.jsonl"
    size_mb = jsonl.stat().st_size / 2**20
    cache_mb = sum(p.stat().st_size for p in cache_dir(jsonl).iterdir()) / 2**20
    params = {"run": f"bench/{run_dir.name}", "key": "train/loss", "points": "1500"}
    cold = await _first_series(root, params)
    client = TestClient(TestServer(dashboard_app(root)))
    await client.start_server()
    try:
        await _get(client, "/api/series", **params)
        warm = [(await _get(client, "/api/series", **params)) for _ in range(10)]
        _append(jsonl, n, n + 1000)
        append, _ = await _get(client, "/api/series", **params)
    finally:
        await client.close()
    shutil.rmtree(cache_dir(jsonl))
    cold_jsonl = await _first_series(root, params)
    from aiotrain.tracking.series import SeriesFile

    series = SeriesFile(jsonl)
    series.refresh()
    column = series.column("train/loss")
    t0 = time.perf_counter()
    full = msgspec.json.encode({"step": column.step.tolist(), "time": column.time.tolist(),
                                "value": column.value.tolist()})
    full_ms = (time.perf_counter() - t0) * 1000
    warm_ms = statistics.median(w[0] for w in warm)
    return {"points": n, "file_mb": round(size_mb, 1), "cache_mb": round(cache_mb, 1),
            "write_s": round(write_s, 1), "cold_ms": round(cold, 1), "warm_ms": round(warm_ms, 2),
            "append_ms": round(append, 2), "response_kb": round(warm[0][1] / 1024, 1),
            "cold_jsonl_ms": round(cold_jsonl, 1), "cold_jsonl_vs_cold": round(cold_jsonl / cold, 1),
            "full_json_ms": round(full_ms, 1), "full_json_mb": round(len(full) / 2**20, 1),
            "warm_vs_full_json": round(full_ms / warm_ms, 1)}


def _rename_rows(root: Path, old: str, new: str) -> None:
    for path in root.glob(f"runs/*/*/{old}"):
        os.rename(path, path.with_name(new))


async def runs_table(root: Path, runs: int) -> dict:
    from aiohttp.test_utils import TestClient, TestServer

    from aiotrain.dashboard import dashboard_app
    from aiotrain.tracking import Track
    from aiotrain.tracking.index import ROW_FILE
    from aiotrain.tracking.reader import list_runs

    t0 = time.perf_counter()
    for i in range(runs):
        with Track.run(f"p{i % 4}", name=f"run{i}", config={"lr": 10 ** -(i % 5), "model": {"width": 32 * (i % 8)},
                                                            "seed": i}, tags=[f"t{i % 3}"], dir=root) as run:
            run.log({"train/loss": 1.0 / (i + 1), "val/acc": (i % 100) / 100})
    made_s = time.perf_counter() - t0
    _rename_rows(root, ROW_FILE, "row.hidden")  # the peer first: SDN files only, as before row files
    client = TestClient(TestServer(dashboard_app(root)))
    await client.start_server()
    try:
        cold_sdn, _ = await _get(client, "/api/runs")
    finally:
        await client.close()
    _rename_rows(root, "row.hidden", ROW_FILE)
    client = TestClient(TestServer(dashboard_app(root)))
    await client.start_server()
    try:
        cold, size = await _get(client, "/api/runs")
        warm = []
        for _ in range(5):
            await asyncio.sleep(1.05)  # past the 1 s coalescing window: a real refresh each time
            warm.append((await _get(client, "/api/runs"))[0])
        await asyncio.sleep(1.05)
        filtered, _ = await _get(client, "/api/runs", filter="config.lr<0.01", sort="-val/acc",
                                 columns="config.lr,val/acc")
    finally:
        await client.close()
    t0 = time.perf_counter()
    assert len(list_runs(root=root)) >= runs
    reload_ms = (time.perf_counter() - t0) * 1000
    warm_ms = statistics.median(warm)
    return {"runs": runs, "cold_ms": round(cold, 1), "cold_sdn_ms": round(cold_sdn, 1),
            "cold_sdn_vs_cold": round(cold_sdn / cold, 1), "warm_ms": round(warm_ms, 1),
            "filter_sort_ms": round(filtered, 1), "response_kb": round(size / 1024, 1),
            "peer_list_runs_ms": round(reload_ms, 1), "warm_vs_list_runs": round(reload_ms / warm_ms, 1),
            "setup_s": round(made_s, 1)}


async def _train(root: Path, interval: float | None, iterations: int) -> float:
    import torch

    from aiotrain import Engine
    from aiotrain.tracking import Track

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.ReLU(), torch.nn.Linear(256, 1))
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    x, y = torch.randn(128, 64), torch.randn(128, 1)

    def step(engine, batch):
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(net(x), y)
        loss.backward()
        opt.step()
        return loss.item()

    async with Track.run("sampler", dir=root, system_interval=interval) as run:
        trainer = Engine(step)
        t0 = time.perf_counter()
        await trainer.run(range(iterations), max_epochs=1)
        elapsed = time.perf_counter() - t0
        run.log({"it_per_s": iterations / elapsed})
    return iterations / elapsed


async def system_sampler(root: Path, rounds: int, iterations: int) -> dict:
    from aiotrain.runtime import to_io
    from aiotrain.tracking.run import Run
    from aiotrain.tracking.system_metrics import SystemSampler

    sampler = await to_io(SystemSampler)
    times = []
    for _ in range(200):
        t0 = time.perf_counter()
        sampler.sample()
        times.append(time.perf_counter() - t0)
    sample_us = statistics.median(times) * 1e6
    default = Run.__init__.__kwdefaults__["system_interval"]
    ratios: dict[str, list[float]] = {"default": [], "fast": []}
    await _train(root, None, iterations // 4)  # warm-up
    for _ in range(rounds):
        off = await _train(root, None, iterations)
        on = await _train(root, default, iterations)
        fast = await _train(root, 0.1, iterations)
        ratios["default"].append(on / off)
        ratios["fast"].append(fast / off)
    return {"sample_us": round(sample_us, 1), "default_interval_s": default,
            "cpu_share_at_default_pct": round(100 * sample_us / (default * 1e6), 4),
            "throughput_ratio_default": round(statistics.median(ratios["default"]), 4),
            "throughput_ratio_0.1s": round(statistics.median(ratios["fast"]), 4),
            "rounds": rounds, "iterations": iterations}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    p.add_argument("--parts", default="chart,table,sampler", help="which parts, comma-separated")
    a = p.parse_args()
    parts = set(a.parts.split(","))
    n, runs, rounds, iterations = (20_000, 50, 1, 300) if a.quick else (1_000_000, 1000, 5, 3000)
    load = os.getloadavg()[0]
    from aiotrain.runtime import run

    with tempfile.TemporaryDirectory() as tmp:
        if "chart" in parts:
            emit("dashboard_chart_data", **run(chart_data(Path(tmp) / "a", n)), load=round(load, 2))
        if "table" in parts:
            emit("dashboard_runs_table", **run(runs_table(Path(tmp) / "b", runs)), load=round(os.getloadavg()[0], 2))
        if "sampler" in parts:
            emit("system_sampler", **run(system_sampler(Path(tmp) / "c", rounds, iterations)),
                 load=round(os.getloadavg()[0], 2))


if __name__ == "__main__":
    main()
