"""System metrics sampled while a run is open: CPU, memory, disk and network I/O, GPUs.

A run used inside an event loop (``async with Track.run(...)``, or ``await run.astart()``) starts
one task that, every ``system_interval`` seconds, takes a sample in the I/O executor (psutil reads
/proc; NVML is initialised there on first use) and appends it to the run's ``system.jsonl`` as
``system/*`` keys, at the run's current step. They live in their own file so that the metric
history a user logged (``metrics.jsonl``) holds exactly what they logged. Rates (disk and network
MB/s) are over the time since the previous sample; CPU percentages too (psutil's non-blocking
form). GPU keys appear only where NVML (the ``pynvml`` module of ``nvidia-ml-py``, extra ``gpu``) or CUDA reports devices.

psutil is imported by the first ``SystemSampler`` (or earlier, by ``system.warm_up`` when the run
is created), never when this module is: the run imports this module on the event loop when it
starts the sampler task, and psutil's first import costs tens of milliseconds of CPU.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable
from typing import Any

from ..runtime import to_io

__all__ = ["SystemSampler", "sample_forever"]

_MB = 1024.0 * 1024.0


class SystemSampler:
    """Takes one ``system/*`` sample per call; rates cover the time since the previous call.

    Create it off the loop (first use of psutil and NVML can take milliseconds).
    """

    def __init__(self) -> None:
        import psutil

        self._psutil = psutil
        self._proc = psutil.Process()
        self._proc.cpu_percent(None)  # the first call only primes the counters
        psutil.cpu_percent(None)
        self._last = time.monotonic()
        self._disk = _disk(psutil)
        self._net = psutil.net_io_counters()
        self._gpus = _gpu_probe()

    def sample(self) -> dict[str, float]:
        """CPU %, process RSS and CPU %, available memory, disk/network MB/s, per-GPU use."""
        now = time.monotonic()
        dt = max(now - self._last, 1e-6)
        self._last = now
        psutil = self._psutil
        vm = psutil.virtual_memory()
        out = {
            "system/cpu_percent": psutil.cpu_percent(None),
            "system/proc_cpu_percent": self._proc.cpu_percent(None),
            "system/proc_rss_mb": self._proc.memory_info().rss / _MB,
            "system/mem_available_mb": vm.available / _MB,
            "system/mem_percent": vm.percent,
        }
        disk = _disk(psutil)
        if disk is not None and self._disk is not None:
            out["system/disk_read_mbps"] = (disk.read_bytes - self._disk.read_bytes) / _MB / dt
            out["system/disk_write_mbps"] = (disk.write_bytes - self._disk.write_bytes) / _MB / dt
        self._disk = disk
        net = psutil.net_io_counters()
        if net is not None and self._net is not None:
            out["system/net_sent_mbps"] = (net.bytes_sent - self._net.bytes_sent) / _MB / dt
            out["system/net_recv_mbps"] = (net.bytes_recv - self._net.bytes_recv) / _MB / dt
        self._net = net
        for probe in self._gpus:
            out.update(probe())
        return out


def _disk(psutil: Any) -> Any:
    try:
        return psutil.disk_io_counters()
    except (OSError, RuntimeError):  # containers without /proc/diskstats
        return None


def _gpu_probe() -> list[Callable[[], dict[str, float]]]:
    """One callable per GPU: NVML when available (utilisation and memory of the device), else
    torch's view of this process's CUDA memory. Empty without GPUs."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available():
        return []
    count = torch.cuda.device_count()
    try:
        import pynvml

        pynvml.nvmlInit()
        handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
    except Exception:  # no NVML library or no permission: fall back to torch's counters
        return [_torch_probe(torch, i) for i in range(count)]
    return [_nvml_probe(pynvml, h, i) for i, h in enumerate(handles)]


def _nvml_probe(pynvml: Any, handle: Any, index: int) -> Callable[[], dict[str, float]]:
    prefix = f"system/gpu{index}"

    def probe() -> dict[str, float]:
        util = pynvml.nvmlDeviceGetUtilizationRates(handle)
        mem = pynvml.nvmlDeviceGetMemoryInfo(handle)
        return {f"{prefix}/util_percent": float(util.gpu), f"{prefix}/mem_used_mb": mem.used / _MB,
                f"{prefix}/mem_percent": 100.0 * mem.used / max(mem.total, 1)}

    return probe


def _torch_probe(torch: Any, index: int) -> Callable[[], dict[str, float]]:
    prefix = f"system/gpu{index}"

    def probe() -> dict[str, float]:
        return {f"{prefix}/mem_allocated_mb": torch.cuda.memory_allocated(index) / _MB,
                f"{prefix}/mem_reserved_mb": torch.cuda.memory_reserved(index) / _MB}

    return probe


async def sample_forever(record: Callable[[dict[str, float]], None], interval: float) -> None:
    """Every ``interval`` seconds, hand one sample to ``record`` (runs until cancelled)."""
    sampler = await to_io(SystemSampler)
    while True:
        await asyncio.sleep(interval)
        record(await to_io(sampler.sample))
