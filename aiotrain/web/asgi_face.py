"""The ASGI face: the same neutral routes as an ASGI 3 application (no framework needed).

Mount it in FastAPI or Starlette with ``app.mount("/runs", asgi)``: the path below the mount
point (``root_path``) is what the routes see. A streamed answer ends when the client
disconnects (the ``http.disconnect`` message cancels the stream).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

from ..runtime import to_io
from .guard import Guard
from .http import MAX_BODY, Request, Response, Routes, close_stream, error_response, secure, serve

__all__ = ["ASGIApp", "answer", "asgi_app"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
_CHUNK = 1 << 16


def asgi_app(routes: Routes, guard: Guard) -> ASGIApp:
    """An ASGI application serving ``routes`` behind ``guard``."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":  # a websocket: refused before it is accepted
            await send({"type": "websocket.close", "code": 1008})
            return
        await answer(scope, receive, send, lambda request: serve(routes, guard, request))

    return app


async def answer(scope: Scope, receive: Receive, send: Send,
                 respond: Callable[[Request], Awaitable[Response]], path: str | None = None) -> None:
    """Read the request of ``scope`` (413 past MAX_BODY), get ``respond``'s answer and send it;
    ``path`` overrides the path the routes see (a framework that routed it already)."""
    body = await _read_body(receive)
    if body is None:
        await _send(send, False, secure(error_response(413, f"the body is over {MAX_BODY} bytes")))
        return
    gone = asyncio.Event()
    response = await respond(_request(scope, body, gone.is_set, path))
    head = scope["method"] == "HEAD"
    if isinstance(response.body, bytes | Path):
        await _send(send, head, response)
    elif head:  # the stream's headers only
        await close_stream(response.body)
        await _send(send, head, Response(response.status, b"", response.content_type, response.headers))
    else:
        await _stream(send, receive, response, response.body, gone)


def _request(scope: Scope, body: bytes, disconnected: Callable[[], bool], path: str | None) -> Request:
    root = scope.get("root_path", "") or ""
    full = scope["path"]
    if path is not None:
        root = full[:len(full) - len(path)] if full.endswith(path) else root
    elif root and full.startswith(root):  # Starlette keeps the whole path and names the mount
        path = full[len(root):]
    else:
        path = full
    headers: dict[str, str] = {}
    for raw_name, raw_value in scope.get("headers", []):
        name, value = raw_name.decode("latin-1").lower(), raw_value.decode("latin-1")
        if name in headers:
            value = headers[name] + ("; " if name == "cookie" else ", ") + value
        headers[name] = value
    server = scope.get("server")
    return Request(method=scope["method"], path=path,
                   query=tuple(parse_qsl(scope.get("query_string", b"").decode("latin-1"),
                                         keep_blank_values=True)),
                   headers=headers, body=body, prefix=root,
                   local=server[0] if server and server[1] is not None else None,  # not a unix socket
                   disconnected=disconnected)


async def _read_body(receive: Receive) -> bytes | None:
    """The request's body, or None when it is over MAX_BODY."""
    parts, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY:
            return None
        parts.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(parts)


def _start(response: Response, length: int | None = None) -> Message:
    headers = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in response.headers.items()]
    headers.append((b"content-type", response.content_type.encode("latin-1")))
    if length is not None:
        headers.append((b"content-length", str(length).encode()))
    return {"type": "http.response.start", "status": response.status, "headers": headers}


async def _send(send: Send, head: bool, response: Response) -> None:
    if isinstance(response.body, Path):
        await _send_file(send, head, response, response.body)
        return
    body = response.body if isinstance(response.body, bytes) else b""
    await send(_start(response, len(body)))
    await send({"type": "http.response.body", "body": b"" if head else body})


async def _send_file(send: Send, head: bool, response: Response, path: Path) -> None:
    try:
        f = await to_io(open, path, "rb")
    except OSError:
        await _send(send, head, secure(error_response(404, "no such file")))
        return
    try:
        await send(_start(response, os.fstat(f.fileno()).st_size))
        while not head and (chunk := await to_io(f.read, _CHUNK)):
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
    finally:
        await to_io(f.close)


async def _stream(send: Send, receive: Receive, response: Response, chunks: AsyncIterator[bytes],
                  gone: asyncio.Event) -> None:
    """Send ``chunks`` until they end or the client disconnects (then they are cancelled)."""

    async def pump() -> None:
        async for chunk in chunks:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    async def watch() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        gone.set()

    await send(_start(response))
    tasks = [asyncio.ensure_future(pump()), asyncio.ensure_future(watch())]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.wait(tasks)
        with contextlib.suppress(RuntimeError):  # still running in a cancelled pump
            await close_stream(chunks)
    pumped = tasks[0]
    if not pumped.cancelled() and (exc := pumped.exception()) is not None and not isinstance(exc, OSError):
        raise exc  # a failing stream is the server's error; a send to a gone client is not


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
