"""System information recorded in every run's metadata (computed once per process)."""

from __future__ import annotations

import functools
import os
import platform
import socket
import sys
from typing import Any

__all__ = ["system_info"]


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
