"""Small helpers shared by the benchmarks: machine description and JSON output."""

from __future__ import annotations

import json
import os
import platform
import sys

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


def emit(name: str, **figures) -> None:
    """Print one JSON line: the benchmark's name, its figures, and the machine."""
    print(json.dumps({"bench": name, **figures, "machine": machine()}), flush=True)
    sys.stdout.flush()
