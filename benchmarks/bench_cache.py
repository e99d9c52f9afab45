"""Random 4 KiB record reads from a file in the page cache: CacheManager mmap vs read() vs numpy.memmap.

Two shapes of read, each measured for the three peers side by side in the same run, rounds
interleaved so that machine noise hits them alike:

* batch (the headline): ``--batch`` random records gathered into one contiguous ``(B, 4096)``
  buffer, every byte copied, as a training loader needs them. CacheManager goes through
  ``MmapDataset.__getitems__`` (stat check + one ``index_select`` over the mapping); read() is a
  seek + readinto per record; numpy.memmap is one fancy-index gather.
* record: one record at a time. CacheManager and numpy.memmap hand out zero-copy views (no byte
  is touched); read() copies the 4 KiB.

Targets (issue 4): CacheManager >= 3x the records/s of read(), >= 0.8x numpy.memmap.
``first_get_s``: the first ``get`` of the file, which takes the cache's in-memory snapshot.
Prints one JSON line. The temporary file is removed on exit, also on error or Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable

import numpy as np
import torch

from aiotrain.data.cache import CacheManager, CacheMode
from aiotrain.data.mmap_dataset import MmapDataset

CHUNK = 64 << 20


def write_file(path: str, size: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(CHUNK, left)
            f.write(rng.bytes(n))
            left -= n
    with open(path, "rb") as f:  # read it once so it sits in the page cache
        while f.read(CHUNK):
            pass


def rate(fn: Callable[[np.ndarray], object], batches: list[np.ndarray]) -> float:
    """Records per second of ``fn`` over ``batches`` of record indices."""
    t0 = time.perf_counter()
    for idx in batches:
        fn(idx)
    return sum(len(b) for b in batches) / (time.perf_counter() - t0)


def batch_peers(path: str, n: int, record: int, cache: CacheManager) -> dict[str, Callable]:
    ds = MmapDataset(path, record, torch.uint8, cache=cache)
    assert cache.mode_of(path) is CacheMode.MMAP, "file did not fit the cache's memory limit"
    mm = np.memmap(path, dtype=np.uint8, mode="r", shape=(n, record))
    f = open(path, "rb", buffering=0)  # noqa: SIM115 - lives for the whole run

    def read_batch(idx: np.ndarray) -> torch.Tensor:
        out = torch.empty((len(idx), record), dtype=torch.uint8)
        raw = memoryview(out.numpy()).cast("B")
        for k, i in enumerate(idx.tolist()):
            f.seek(i * record)
            f.readinto(raw[k * record:(k + 1) * record])
        return out

    return {
        "cache_mmap": lambda idx: ds.__getitems__(torch.from_numpy(idx)),
        "read": read_batch,
        "numpy_memmap": lambda idx: torch.from_numpy(mm[idx]),
    }


def record_peers(path: str, n: int, record: int, cache: CacheManager) -> dict[str, Callable]:
    ds = MmapDataset(path, record, torch.uint8, cache=cache)
    mm = np.memmap(path, dtype=np.uint8, mode="r", shape=(n, record))
    f = open(path, "rb")  # noqa: SIM115 - lives for the whole run

    def read_records(idx: np.ndarray) -> None:
        for i in idx.tolist():
            f.seek(i * record)
            f.read(record)

    def dataset_items(idx: np.ndarray) -> None:
        for i in idx.tolist():
            ds[i]

    def memmap_rows(idx: np.ndarray) -> None:
        for i in idx.tolist():
            mm[i]

    return {"cache_mmap": dataset_items, "read": read_records, "numpy_memmap": memmap_rows}


def measure(peers: dict[str, Callable], n: int, batch: int, batches: int, rounds: int,
            rng: np.random.Generator) -> dict[str, float]:
    results: dict[str, list[float]] = {name: [] for name in peers}
    for _ in range(rounds):
        work = [rng.integers(0, n, batch) for _ in range(batches)]
        for name, fn in peers.items():
            results[name].append(rate(fn, work))
    return {name: statistics.median(r) for name, r in results.items()}


def ratios(r: dict[str, float]) -> dict[str, float]:
    return {"vs_read": round(r["cache_mmap"] / r["read"], 2),
            "vs_numpy_memmap": round(r["cache_mmap"] / r["numpy_memmap"], 2)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mb", type=int, default=1024, help="file size in MiB (default 1024)")
    ap.add_argument("--record-kb", type=int, default=4)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--batches", type=int, default=200, help="batches per peer per round")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--dir", default=None, help="where to put the temporary file")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    record = args.record_kb * 1024
    size = args.size_mb * (1 << 20) // record * record
    n = size // record
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="aiotrain-bench-cache-") as tmp:
        path = os.path.join(tmp, "records.bin")
        write_file(path, size, seed=1)
        with CacheManager(memory_limit=size) as cache:
            t0 = time.perf_counter()  # first use: the cache snapshots the file (one kernel copy)
            cache.scan_files([path])
            cache.get(path)
            first_get_s = time.perf_counter() - t0
            batch = measure(batch_peers(path, n, record, cache), n, args.batch, args.batches,
                            args.rounds, rng)
            single = measure(record_peers(path, n, record, cache), n, args.batch,
                             args.batches // 4, args.rounds, rng)
    out = {
        "bench": "cache",
        "file_mb": size >> 20, "record_bytes": record, "batch": args.batch, "rounds": args.rounds,
        "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "batch_records_per_s": {k: round(v) for k, v in batch.items()},
        "batch_ratios": ratios(batch),
        "record_records_per_s": {k: round(v) for k, v in single.items()},
        "record_ratios": ratios(single),
        "first_get_s": round(first_get_s, 3),
        "targets": {"vs_read": 3.0, "vs_numpy_memmap": 0.8},
    }
    out["batch_targets_met"] = (out["batch_ratios"]["vs_read"] >= 3.0
                                and out["batch_ratios"]["vs_numpy_memmap"] >= 0.8)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
