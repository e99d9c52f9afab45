"""Truncate and rewrite data files in place under live views, N times; print one JSON line.

Usage: truncate_torture.py FOLDER N. Each round writes a file of float32 records in place (same
inode), opens an MmapDataset over it through a CacheManager, takes views, then - while a thread
keeps reading every view and the dataset - truncates the file in place to a random size (or
rewrites it in place), and checks: the old views still read their old values, and the next
dataset access is a DatasetError naming the file. A SIGBUS anywhere kills this process, which the
calling test sees as a negative return code.
"""

from __future__ import annotations

import json
import os
import random
import sys
import threading

import torch

from aiotrain.data import CacheManager, DatasetError, MmapDataset

RECORDS, SHAPE = 256, (64,)


def main(folder: str, rounds: int) -> None:
    rng = random.Random(1)
    path = os.path.join(folder, "records.f32")
    with open(path, "wb"):
        pass
    counts = {"truncations": 0, "rewrites": 0, "dataset_errors": 0, "old_view_reads": 0,
              "reads_during_change": 0}
    for k in range(rounds):
        values = torch.arange(RECORDS * SHAPE[0], dtype=torch.float32) + k
        with open(path, "r+b") as f:  # in place: the same inode every round
            f.truncate(0)
            f.write(values.numpy().tobytes())
        with CacheManager(memory_limit=1 << 30) as cache:
            ds = MmapDataset(path, SHAPE, torch.float32, cache=cache)
            views = [ds[i] for i in range(0, RECORDS, 7)] + [ds.__getitems__([0, RECORDS - 1])]
            stop = threading.Event()

            def reader(stop: threading.Event, views: list, ds: MmapDataset) -> None:
                while not stop.is_set():  # keeps touching the views and the dataset meanwhile
                    for v in views:
                        float(v.sum())
                    try:
                        float(ds[RECORDS - 1].sum())
                    except DatasetError:
                        pass
                    counts["reads_during_change"] += 1

            thread = threading.Thread(target=reader, args=(stop, views, ds))
            thread.start()
            if rng.random() < 0.75:
                os.truncate(path, rng.randrange(0, RECORDS * SHAPE[0] * 4, 4))
                counts["truncations"] += 1
            else:
                with open(path, "r+b") as f:
                    f.write(b"\xff" * 64)
                    os.utime(path, ns=(0, k))  # a rewrite in place, even with a forged mtime
                counts["rewrites"] += 1
            stop.set()
            thread.join()
            for i, v in zip(range(0, RECORDS, 7), views, strict=False):
                assert v[0].item() == values[i * SHAPE[0]].item(), "an old view changed"
                counts["old_view_reads"] += 1
            try:
                ds[rng.randrange(RECORDS)]
            except DatasetError as exc:
                assert path in str(exc), exc
                counts["dataset_errors"] += 1
            ds.close()
    print(json.dumps(counts), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
