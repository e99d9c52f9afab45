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
    """Peak resident memory of this process plus its children, sampled every 10 ms on a thread
    of the benchmark (instrumentation, not library code). ``with PeakRss() as p: ...; p.mb``

    RSS counts pages shared between processes (a forked child's inherited ones) once per
    process; with ``pss=True`` the peak of the summed proportional set size (each shared page
    split among its users: what the processes really hold together) is sampled too, every
    20 samples since it is dearer to read: ``p.pss_mb``. ``pid``: sample that process and its
    children instead (from outside, so the sampler shares no GIL with what it measures: a
    sample lists every process of the machine), every ``every_s``."""

    def __init__(self, pss: bool = False, pid: int | None = None, every_s: float = 0.01) -> None:
        self.peak = 0
        self.peak_pss = 0
        self._pss = pss
        self._pid, self._every_s = pid, every_s
        self.cpu_s = 0.0  # CPU time the sampler itself used (to leave out of the process's)
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        try:
            proc = psutil.Process(self._pid)
        except psutil.Error:
            return
        tick = 0
        while not self._done.is_set():
            try:
                procs = [proc, *proc.children(recursive=True)]
            except psutil.Error:  # the process measured has ended
                break
            rss = pss = 0
            full = self._pss and tick % 20 == 0
            for p in procs:
                try:
                    if full:
                        m = p.memory_full_info()
                        rss, pss = rss + m.rss, pss + m.pss
                    else:
                        rss += p.memory_info().rss
                except psutil.Error:
                    pass
            self.peak = max(self.peak, rss)
            if full:
                self.peak_pss = max(self.peak_pss, pss)
            tick += 1
            time.sleep(self._every_s)
        self.cpu_s = time.thread_time()

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()

    @property
    def mb(self) -> float:
        return round(self.peak / 2**20, 1)

    @property
    def pss_mb(self) -> float:
        return round(self.peak_pss / 2**20, 1)


def emit(name: str, **figures) -> None:
    """Print one JSON line: the benchmark's name, its figures, and the machine."""
    print(json.dumps({"bench": name, **figures, "machine": machine()}), flush=True)
    sys.stdout.flush()
