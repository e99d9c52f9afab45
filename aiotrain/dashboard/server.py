"""Serving the dashboard on its own: ``aiotrain runs serve [--dir D] [--host H] [--port P]``."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from pathlib import Path

from aiohttp import web

from .app import dashboard_app

__all__ = ["serve"]


async def serve(root: str | os.PathLike[str], host: str = "127.0.0.1", port: int = 8765,
                on_ready: Callable[[str], None] = print) -> None:
    """Serve the dashboard over ``root`` until cancelled; ``on_ready`` gets its URL once bound.

    Binds to 127.0.0.1 by default: the runs (configs, notes, files) are not for the network
    unless the user says so with ``host``.
    """
    if not (Path(root) / "runs").is_dir():
        raise FileNotFoundError(f"no runs under {root} (its runs/ folder is missing); "
                                "pass --dir with the tracking root your training wrote to")
    runner = web.AppRunner(dashboard_app(root), access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound = runner.addresses[0][1]
        shown = f"[{host}]" if ":" in host else host
        on_ready(f"http://{shown}:{bound}/")
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
