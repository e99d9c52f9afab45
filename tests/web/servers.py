"""Real servers on 127.0.0.1 for the tests: aiohttp and uvicorn (ASGI), on this test's loop."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest

from aiotrain.web.aiohttp_face import aiohttp_app
from aiotrain.web.guard import Guard
from aiotrain.web.http import Routes


@contextlib.asynccontextmanager
async def aiohttp_server(routes: Routes, guard: Guard | None = None) -> AsyncIterator[str]:
    """``routes`` served by aiohttp on a free loopback port; yields the base URL."""
    from aiohttp import web

    runner = web.AppRunner(aiohttp_app(routes, guard or Guard()), access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


@contextlib.asynccontextmanager
async def uvicorn_server(app: Any) -> AsyncIterator[str]:
    """An ASGI ``app`` served by uvicorn on a free loopback port; yields the base URL."""
    uvicorn = pytest.importorskip("uvicorn", reason="the ASGI tests need uvicorn: pip install 'aiotrain[asgi]'")
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning",
                                           lifespan="off", timeout_graceful_shutdown=1))
    task = asyncio.create_task(server.serve(sockets=None))
    try:
        while not server.started:
            if task.done():
                task.result()
            await asyncio.sleep(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)
