"""A reader of a mapped data file, for the truncation torture: the parent truncates the file.

``python truncate_reader.py PATH SECONDS`` maps PATH through MmapDataset over a CacheManager,
prints ``ready`` and reads random records (touching every byte) for SECONDS. It prints one
outcome line: ``named`` (a DatasetError naming the file), ``unnamed`` (a DatasetError that
does not name it), ``other TYPE`` (another exception) or ``unnoticed`` (reading went on). A
SIGBUS kills it before it can print: the parent sees the signal in its exit status.
"""

from __future__ import annotations

import random
import sys
import time

import torch

from aiotrain.data import CacheManager, DatasetError, MmapDataset

RECORD = (1024,)  # 4 KiB float32 records


def main(path: str, seconds: float) -> None:
    rng = random.Random(path)
    with CacheManager() as cache:
        ds = MmapDataset(path, RECORD, torch.float32, cache=cache)
        n = len(ds)
        print("ready", flush=True)
        deadline = time.monotonic() + seconds
        try:
            while time.monotonic() < deadline:
                if rng.random() < 0.5:
                    float(ds[rng.randrange(n)].sum())
                else:
                    float(ds.__getitems__([rng.randrange(n) for _ in range(16)]).sum())
        except DatasetError as exc:
            print("named" if path in str(exc) else f"unnamed {exc}", flush=True)
            return
        except Exception as exc:
            print(f"other {type(exc).__name__}: {exc}", flush=True)
            return
    print("unnoticed", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], float(sys.argv[2]))
