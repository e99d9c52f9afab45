"""Targets and modules for the job server tests (imported by name in the job processes)."""

from __future__ import annotations

import asyncio
import os
import random
import sys
import threading


async def describe(channel):
    """What a fresh job process looks like from inside."""
    import numpy as np
    import torch

    return {"pid": os.getpid(), "ppid": os.getppid(), "pgid": os.getpgid(0),
            "threads": threading.active_count(), "cwd": os.getcwd(),
            "env": os.environ.get("AIOTRAIN_TEST_MARK"), "stdin": os.readlink("/proc/self/fd/0"),
            "torch": torch.rand(4).tolist(), "numpy": np.random.rand(4).tolist(),
            "random": [random.random() for _ in range(4)], "torch_loaded_at_start": True}


async def seeded_weights(channel, seed):
    """Weights drawn after seeding: what a job reproduces alone and beside others."""
    import torch

    torch.manual_seed(seed)
    await asyncio.sleep(0.05)  # let a neighbour run in between
    layer = torch.nn.Linear(16, 16)
    return layer.weight.detach().clone()


async def crash(channel, how):
    channel.send("started", os.getpid())
    if how == "exit":
        os._exit(3)
    os.kill(os.getpid(), 11)  # SIGSEGV
    await asyncio.sleep(3600)


async def imports(channel, module):
    """Import ``module`` in the job; report whether it was already loaded (preloaded)."""
    import importlib

    was = module in sys.modules
    importlib.import_module(module)
    return was


async def hold(channel, marker):
    channel.send("started", os.getpid())
    try:
        await asyncio.sleep(3600)
    except asyncio.CancelledError:
        with open(marker, "w") as f:  # noqa: ASYNC230 - a test marker, tiny
            f.write("cleaned up")
        raise
