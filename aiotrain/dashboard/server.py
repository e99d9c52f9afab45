"""Serving the dashboard on its own: ``aiotrain runs serve [--dir D] [--host H] [--port P]``."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Iterable
from pathlib import Path

from aiohttp import web

from ..web.guard import Guard, is_loopback
from .app import dashboard_app

__all__ = ["serve"]


async def serve(root: str | os.PathLike[str], host: str = "127.0.0.1", port: int = 8765,
                on_ready: Callable[[str], None] = print, *, allowed_hosts: Iterable[str] = (),
                token: str | None = None) -> None:
    """Serve the dashboard over ``root`` until cancelled; ``on_ready`` gets its URL once bound.

    Binds to 127.0.0.1 by default: the runs (configs, notes, files) are not for the network
    unless the user says so with ``host``. A non-loopback ``host`` needs a token (``token``, or
    a new random one): the URL given to ``on_ready`` carries it, once; the browser keeps it in a
    cookie. The server answers to the loopback names, ``host`` and ``allowed_hosts`` only.
    """
    if not (Path(root) / "runs").is_dir():
        raise FileNotFoundError(f"no runs under {root} (its runs/ folder is missing); "
                                "pass --dir with the tracking root your training wrote to")
    guard = Guard.for_bind(host, allowed_hosts=allowed_hosts, token=token)
    runner = web.AppRunner(dashboard_app(root, guard=guard), access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound = runner.addresses[0][1]
        on_ready(_url(host, bound, guard))
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


def _url(host: str, port: int, guard: Guard) -> str:
    """The URL to open; off loopback it carries the token (shown this once)."""
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{port}/"
    return url + f"?token={guard.token}" if guard.token is not None and not is_loopback(host) else url
