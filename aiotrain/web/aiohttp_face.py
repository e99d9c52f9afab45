"""The aiohttp face: an ``aiohttp.web.Application`` that hands every request to neutral routes.

One catch-all route turns the aiohttp request into a :class:`~aiotrain.web.http.Request`, and
:func:`~aiotrain.web.http.serve` answers it; mounted with ``outer.add_subapp("/prefix/", app)``
it serves under that prefix.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

from aiohttp import web

from .guard import Guard
from .http import MAX_BODY, Request, Response, Routes, close_stream, error_response, secure, serve

__all__ = ["aiohttp_app"]


def aiohttp_app(routes: Routes, guard: Guard) -> web.Application:
    """An aiohttp Application serving ``routes`` behind ``guard``."""

    async def handle(request: web.Request) -> web.StreamResponse:
        tail = request.match_info.get("tail", "")
        prefix = request.path[:len(request.path) - len(tail)].rstrip("/")
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return await _send(request, secure(error_response(413, f"the body is over {MAX_BODY} bytes")))
        transport = request.transport
        sock = transport.get_extra_info("sockname") if transport is not None else None
        neutral = Request(
            method=request.method, path="/" + tail, query=tuple(request.query.items()),
            headers={k.lower(): v for k, v in request.headers.items()}, body=body, prefix=prefix,
            local=sock[0] if isinstance(sock, tuple) else None,
            disconnected=lambda: request.transport is None or request.transport.is_closing())
        return await _send(request, await serve(routes, guard, neutral))

    app = web.Application(client_max_size=MAX_BODY)
    app.router.add_route("*", "/{tail:.*}", handle)
    return app


async def _send(request: web.BaseRequest, response: Response) -> web.StreamResponse:
    body = response.body
    headers = {**response.headers, "Content-Type": response.content_type}
    if isinstance(body, bytes):
        return web.Response(status=response.status, body=body, headers=headers)
    if isinstance(body, Path):
        return web.FileResponse(body, status=response.status, headers=headers)
    return await _stream(request, response, body)


async def _stream(request: web.BaseRequest, response: Response,
                  chunks: AsyncIterator[bytes]) -> web.StreamResponse:
    headers = {**response.headers, "Content-Type": response.content_type}
    out = web.StreamResponse(status=response.status, headers=headers)
    await out.prepare(request)
    try:
        async for chunk in chunks:
            await out.write(chunk)
    except ConnectionResetError:  # the client left; the stream ends with it
        pass
    finally:
        await close_stream(chunks)
    return out
