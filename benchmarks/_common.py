"""Small helpers shared by the benchmarks: machine description and JSON output."""

from __future__ import annotations

import json
import os
import platform
import sys
import threading
import time

import psutil
import torch


def machine() -> dict:
    """What the figures were measured on."""
    return {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


class PeakRss:
    """Peak resident memory of this process plus its children, sampled every 5 ms on a thread
    of the benchmark (instrumentation, not library code). ``with PeakRss() as p: ...; p.mb``"""

    def __init__(self) -> None:
        self.peak = 0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        proc = psutil.Process()
        while not self._done.is_set():
            rss = proc.memory_info().rss
            for child in proc.children(recursive=True):
                try:
                    rss += child.memory_info().rss
                except psutil.Error:
                    pass
            self.peak = max(self.peak, rss)
            time.sleep(0.005)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()

    @property
    def mb(self) -> float:
        return round(self.peak / 2**20, 1)


def emit(name: str, **figures) -> None:
    """Print one JSON line: the benchmark's name, its figures, and the machine."""
    print(json.dumps({"bench": name, **figures, "machine": machine()}), flush=True)
    sys.stdout.flush()
