"""Serving a JobService: over aiohttp on its own port, or inside an ASGI app (FastAPI/Starlette).

``await serve(service, host, port)`` runs the job API with aiohttp until cancelled;
``service_asgi_app(service)`` is the same API as an ASGI app to ``mount``, and
``job_router(service)`` (in :mod:`aiotrain.service.fastapi`) a FastAPI router.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from ..web.guard import Guard, is_loopback
from .jobs import JobService

if TYPE_CHECKING:
    from ..web.asgi_face import ASGIApp

__all__ = ["serve", "service_asgi_app"]


def service_asgi_app(service: JobService, *, allowed_hosts: Iterable[str] = (), token: str | None = None) -> ASGIApp:
    """The job API (and its dashboard) as an ASGI app: ``app.mount("/train", service_asgi_app(s))``.
    It answers to the loopback names and ``allowed_hosts``; with ``token`` every request must
    carry it (required when the app serves a network address)."""
    from ..web.asgi_face import asgi_app

    return asgi_app(service.routes(), Guard.for_bind("localhost", allowed_hosts=allowed_hosts, token=token))


async def serve(service: JobService, host: str = "127.0.0.1", port: int = 8080, *,
                on_ready: Callable[[str], None] = print, allowed_hosts: Iterable[str] = (),
                token: str | None = None) -> None:
    """Serve the job API with aiohttp until cancelled (then every live job is cancelled and
    awaited); ``on_ready`` gets the URL once bound. Off loopback a token is required (``token``
    or a new random one, in the URL given to ``on_ready``: clients send ``Authorization: Bearer``)."""
    from aiohttp import web

    from ..web.aiohttp_face import aiohttp_app

    guard = Guard.for_bind(host, allowed_hosts=allowed_hosts, token=token)
    runner = web.AppRunner(aiohttp_app(service.routes(), guard), access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        shown = f"[{host}]" if ":" in host else host
        url = f"http://{shown}:{runner.addresses[0][1]}"
        await service.astart()
        on_ready(url + f"/?token={guard.token}" if guard.token and not is_loopback(host) else url)
        await asyncio.Event().wait()
    finally:
        await service.shutdown()
        await runner.cleanup()
