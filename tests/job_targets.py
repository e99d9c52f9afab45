"""Targets for job worker process tests: importable by the child without loading torch."""

from __future__ import annotations

import asyncio
import contextlib
import os
from pathlib import Path


async def echo(channel, greeting):
    got = asyncio.get_running_loop().create_future()
    channel.on_message = lambda kind, payload: got.done() or got.set_result((kind, payload))
    channel.send("hello", {"greeting": greeting, "pid": os.getpid()})
    kind, payload = await got
    return {"kind": kind, "payload": payload, "pid": os.getpid()}


async def failing(channel):
    raise KeyError("missing in the child")


async def cleanup(channel, marker):
    channel.send("started", None)
    try:
        await asyncio.sleep(3600)
    except asyncio.CancelledError:
        Path(marker).write_text("cleaned up")  # noqa: ASYNC240 - a test marker, tiny
        raise


async def stubborn(channel):
    channel.send("started", None)
    while True:  # swallows cancellation: only a kill stops it
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(3600)


async def unpicklable(channel):
    return lambda: None  # a result that cannot cross back to the parent
