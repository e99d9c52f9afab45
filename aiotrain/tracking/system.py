"""System information recorded in every run's metadata (computed once per process), and the
first-use work a run does when it is created rather than in its first drain."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import platform
import socket
import sys
from typing import Any

from ..runtime import submit_io

__all__ = ["system_info", "warm_up"]


@functools.cache
def system_info() -> dict[str, Any]:
    """Hostname, platform, Python and torch versions, CPU count and GPU names."""
    info: dict[str, Any] = {
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "cpu_count": os.cpu_count() or 1,
        "torch": None,
        "gpus": [],
    }
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a hard dependency
        return info
    info["torch"] = torch.__version__
    if torch.cuda.is_available():
        info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return info


def warm_up(sampler: bool) -> None:
    """Do, once per process, the first-use work of a run: ``system_info`` (``platform`` runs
    ``uname -p`` in a subprocess, CUDA is queried) and, for a run that will sample system metrics,
    psutil's first import (tens of milliseconds of CPU). Otherwise the first drain does it on the
    writer's thread, holding the GIL while the training thread or the event loop waits.

    Called when a run is created: on the calling thread, or, when that thread runs an event loop,
    on an I/O thread (the loop never does it; an error there is left to the first drain, which
    does the same work again and raises it). Only a run created inside a loop samples (the
    sampler is a task on it), so only then is psutil imported."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        _warm_up(False)
        return
    if not _is_warm(sampler):
        with contextlib.suppress(RuntimeError):  # the executor is gone (interpreter exit): the drain does it
            submit_io(_warm_up, sampler)


def _is_warm(sampler: bool) -> bool:
    return bool(system_info.cache_info().currsize) and (not sampler or "psutil" in sys.modules)


def _warm_up(sampler: bool) -> None:
    system_info()
    if sampler:
        import psutil  # noqa: F401 - imported now so that the sampler's first use is cheap
