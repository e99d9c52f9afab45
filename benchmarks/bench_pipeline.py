"""Real pipelines: fetch latency *and* CPU work per item, aiotrain's worker processes vs DataLoader.

Mixed items: 5 ms of fetch latency + 2 ms of GIL-holding Python work per item, batch 32, a 10 ms
GIL-free step (it sleeps, as a GPU step releases the GIL). aiotrain fetches on the loop (``aget``
tasks) and runs the 2 ms in ``workers=N`` processes; DataLoader(num_workers=N) does both in each
worker, one item after another. Measured for N = 2 and N = the machine's core count, then
DataLoader num_workers is raised until it really matches aiotrain's N=2 throughput (or the cap,
``--max-workers``, is reached: then ``dataloader_workers_to_match_aiotrain_w2`` is null).

Images: JPEG bytes (256x256, generated at start) decoded with Pillow, random resized crop to 224,
random flip, normalised: aiotrain (sync reads + transform in the workers) vs DataLoader at equal N.

The transforms work in numpy and draw from the generator they are given (aiotrain:
``rng="numpy"``, the item's own; DataLoader: numpy's per-worker global). aiotrain's workers are
spawned (``worker_start="spawn"``): they never import torch; ``aiotrain_fork_w2`` is the same
loader with forked workers, for comparison. DataLoader's workers are forked, its default.

Each configuration runs in its own subprocess, with the libraries imported before the clock
starts. ``items_per_s`` is the steady rate between the first and the last step;
``first_batch_s`` is the start-up (workers started, first batch ready); ``total_items_per_s``
includes it. Peak memory is summed over the process and its children: ``peak_rss_mb`` (shared
pages counted in every process that maps them, as ``ps`` shows) and ``peak_pss_mb`` (shared
pages split among their users: the memory the processes really hold). ``cpu_ms_per_item``: CPU
time of the main process (less the memory sampler's) and of the workers. One JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import math
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))

LATENCY, WORK, BATCH, STEP = 0.005, 0.002, 32, 0.010
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
SCALE = tuple(1 / (255 * s) for s in STD)  # (x / 255 - mean) / std == x * SCALE - SHIFT
SHIFT = tuple(m / s for m, s in zip(MEAN, STD, strict=True))


def busy(seconds: float) -> int:
    """Pure-Python work that holds the GIL for ``seconds``."""
    end, n = time.perf_counter() + seconds, 0
    while time.perf_counter() < end:
        n += 1
    return n


class Mixed:
    """Items behind LATENCY; the CPU part (WORK) is the transform's (aiotrain) or in __getitem__."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    async def aget(self, i: int) -> int:
        await asyncio.sleep(LATENCY)
        return i

    def __getitem__(self, i: int):  # DataLoader: fetch then work, in the worker
        time.sleep(LATENCY)
        return mixed_work(i, None)


def mixed_work(i, gen):
    import numpy as np

    busy(WORK)
    return np.full((32,), float(i), dtype=np.float32)


class Jpegs:
    def __init__(self, blobs: list[bytes], n: int, transform: bool) -> None:
        self.blobs, self.n, self.transform = blobs, n, transform

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        raw = self.blobs[i % len(self.blobs)]
        return augment_jpeg(raw, None) if self.transform else raw


def make_jpegs(count: int = 16) -> list[bytes]:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    blobs = []
    for _ in range(count):  # smooth gradients plus noise: compresses like a photo, not like noise
        y, x = np.mgrid[0:256, 0:256]
        base = np.stack([(x + rng.integers(256)) % 256, (y + rng.integers(256)) % 256,
                         (x + y) // 2], axis=-1)
        img = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
        out = io.BytesIO()
        Image.fromarray(img).save(out, format="JPEG", quality=90)
        blobs.append(out.getvalue())
    return blobs


def augment_jpeg(raw: bytes, gen):
    """Decode, random resized crop to 224 (scale 0.08-1, ratio 3/4-4/3), random flip, normalise
    to a 3x224x224 float32 array. Draws from ``gen`` (aiotrain: the item's generator) or numpy's
    global generator (DataLoader seeds it in each worker)."""
    import numpy as np
    from PIL import Image

    draw = gen.random if gen is not None else np.random.random
    img = Image.open(io.BytesIO(raw)).convert("RGB")
    w, h = img.size
    r = draw(5)
    area = w * h * (0.08 + 0.92 * r[0])
    ratio = math.exp(math.log(3 / 4) + (math.log(4 / 3) - math.log(3 / 4)) * r[1])
    cw = min(w, round(math.sqrt(area * ratio)))
    ch = min(h, round(math.sqrt(area / ratio)))
    left, top = int(r[2] * (w - cw)), int(r[3] * (h - ch))
    img = img.resize((224, 224), Image.BILINEAR, box=(left, top, left + cw, top + ch))
    if r[4] < 0.5:
        img = img.transpose(Image.FLIP_LEFT_RIGHT)
    x = np.asarray(img, dtype=np.float32)
    x *= SCALE
    x -= SHIFT
    return x.transpose(2, 0, 1)  # CHW view: collation copies it into the batch once


STAMPS: list[float] = []  # when each step began


def step(engine, batch) -> None:
    STAMPS.append(time.perf_counter())
    time.sleep(STEP)


def run_config(kind: str, impl: str, workers: int, n_batches: int) -> dict:
    import bench_pipeline as bp  # by name, so spawned workers can unpickle its functions
    import torch
    from _common import PeakRss

    from aiotrain import AsyncLoader, Engine  # noqa: F401 - imported before the clock starts

    torch.set_num_threads(1)
    n = n_batches * BATCH
    blobs = make_jpegs() if kind == "images" else None
    before = os.times()
    with PeakRss(pss=True) as rss:
        t0 = time.perf_counter()
        bp.run_pipeline(kind, impl, workers, n, blobs)
        elapsed = time.perf_counter() - t0
    after = os.times()
    stamps = bp.STAMPS
    steady = (len(stamps) - 1) * BATCH / (stamps[-1] - stamps[0])
    main_cpu = after.user + after.system - before.user - before.system - rss.cpu_s
    workers_cpu = after.children_user + after.children_system \
        - before.children_user - before.children_system
    return {"items_per_s": round(steady, 1), "first_batch_s": round(stamps[0] - t0, 3),
            "total_items_per_s": round(n / elapsed, 1), "peak_rss_mb": rss.mb,
            "peak_pss_mb": rss.pss_mb, "cpu_ms_per_item": {
                "main": round(main_cpu / n * 1e3, 3), "workers": round(workers_cpu / n * 1e3, 3)},
            "batches": n_batches}


def run_pipeline(kind: str, impl: str, workers: int, n: int, blobs: list[bytes] | None) -> None:
    if impl.startswith("aiotrain"):
        from aiotrain import AsyncLoader, Engine

        start = "fork" if impl == "aiotrain_fork" else "spawn"
        if kind == "mixed":
            loader = AsyncLoader(Mixed(n), BATCH, transform=mixed_work, workers=workers,
                                 rng="numpy", worker_start=start, concurrency=256,
                                 prefetch=max(4, 2 * workers))
        else:
            loader = AsyncLoader(Jpegs(blobs, n, False), BATCH, transform=augment_jpeg,
                                 workers=workers, rng="numpy", worker_start=start,
                                 prefetch=max(4, 2 * workers))
        try:
            Engine(step).run_sync(loader, max_epochs=1)
        finally:
            loader.close()
    else:
        from torch.utils.data import DataLoader

        ds = Mixed(n) if kind == "mixed" else Jpegs(blobs, n, True)
        for batch in DataLoader(ds, batch_size=BATCH, num_workers=workers):
            step(None, batch)


def measure(kind: str, impl: str, workers: int, n_batches: int) -> dict:
    cmd = [sys.executable, __file__, "--config", kind, impl, str(workers), str(n_batches)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=900).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batches", type=int, default=40, help="batches per configuration")
    p.add_argument("--max-workers", type=int, default=16, help="largest DataLoader num_workers tried")
    p.add_argument("--config", nargs=4, metavar=("KIND", "IMPL", "WORKERS", "BATCHES"))
    a = p.parse_args()
    if a.config:
        kind, impl, workers, batches = a.config
        print(json.dumps(run_config(kind, impl, int(workers), int(batches))))
        return
    from _common import emit

    cores = os.cpu_count() or 1
    sizes = sorted({2, cores})
    load_before = os.getloadavg()[0]
    mixed: dict[str, dict] = {}
    for n in sizes:
        mixed[f"aiotrain_w{n}"] = measure("mixed", "aiotrain", n, a.batches)
        mixed[f"dataloader_w{n}"] = measure("mixed", "dataloader", n, a.batches)
    mixed["aiotrain_fork_w2"] = measure("mixed", "aiotrain_fork", 2, a.batches)
    target = mixed["aiotrain_w2"]["items_per_s"]
    match, k = None, 2
    while k <= a.max_workers:  # the smallest num_workers that really keeps up with aiotrain (N=2)
        got = mixed.get(f"dataloader_w{k}") or measure("mixed", "dataloader", k, a.batches)
        mixed[f"dataloader_w{k}"] = got
        if got["items_per_s"] >= target:
            match = k
            break
        k = k + 1 if k < 8 else k + 2
    best = max((v["items_per_s"], int(key.rsplit("w", 1)[1])) for key, v in mixed.items()
               if key.startswith("dataloader_w"))
    images = {}
    for n in sizes:
        images[f"aiotrain_w{n}"] = measure("images", "aiotrain", n, a.batches)
        images[f"dataloader_w{n}"] = measure("images", "dataloader", n, a.batches)
    def ratio(table: dict, a_key: str, b_key: str, field: str = "items_per_s") -> float:
        return round(table[a_key][field] / table[b_key][field], 2)

    ratios = {
        **{f"mixed_throughput_vs_dataloader_w{n}": ratio(mixed, f"aiotrain_w{n}", f"dataloader_w{n}")
           for n in sizes},
        "dataloader_workers_to_match_aiotrain_w2": match,
        "best_dataloader": {"workers": best[1], "items_per_s": best[0],
                            "vs_aiotrain_w2": round(best[0] / target, 2)},
        **{f"matching_dataloader_{m}_vs_aiotrain_w2": None if match is None else ratio(
            mixed, f"dataloader_w{match}", "aiotrain_w2", f"peak_{m}_mb") for m in ("rss", "pss")},
        **{f"images_throughput_vs_dataloader_w{n}": ratio(images, f"aiotrain_w{n}", f"dataloader_w{n}")
           for n in sizes},
    }
    emit("pipeline", latency_ms=LATENCY * 1e3, work_ms=WORK * 1e3, batch=BATCH,
         step_ms=STEP * 1e3, mixed=mixed, images=images, ratios=ratios,
         load_avg_before=round(load_before, 2), load_avg_after=round(os.getloadavg()[0], 2),
         targets={"mixed_throughput_vs_dataloader_min": 2.0, "matching_rss_ratio_min": 4.0,
                  "images_throughput_vs_dataloader_min": 1.0})


if __name__ == "__main__":
    main()
