"""Framework-neutral HTTP: the request and response the routes see, the route table, JSON bodies.

The dashboard's and the job service's routes are written once against these types; thin faces
turn an aiohttp request or an ASGI scope into a :class:`Request` and a :class:`Response` back
into the framework's own (``aiotrain.web.aiohttp_face``, ``aiotrain.web.asgi_face``). Every
request goes through :func:`serve`, which applies the :class:`~aiotrain.web.guard.Guard`,
routes it, turns a :class:`HTTPError` into a one-line JSON error and adds the security headers.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec

from ..tracking.store import encode_nonfinite

if TYPE_CHECKING:
    from .guard import Guard

__all__ = ["MAX_BODY", "SECURITY_HEADERS", "HTTPError", "Request", "Response", "Routes",
           "close_stream", "decode_json", "error_response", "file_response", "json_response", "secure", "serve"]

MAX_BODY = 1 << 20  # bytes a request body may have (413 beyond): every body here is a small JSON

# sent with every answer: no script but the app's own files, no framing, no sniffing
SECURITY_HEADERS: Mapping[str, str] = {
    # plotly.js sets style attributes, hence 'unsafe-inline' for styles only; scripts are 'self'
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
                               "img-src 'self' data: blob:; connect-src 'self'; object-src 'none'; "
                               "base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Resource-Policy": "same-origin",
}

_log = logging.getLogger("aiotrain.web")


class HTTPError(Exception):
    """An answer other than success: ``status`` and a one-line ``message`` for the client."""

    def __init__(self, status: int, message: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message = status, message
        self.headers = dict(headers or {})


@dataclass(frozen=True)
class Request:
    """One HTTP request as the routes see it, whatever server received it.

    ``path`` is percent-decoded and relative to where the app is mounted (``prefix``, as the
    client sees it); ``headers`` have lower-case names; ``local`` is the address of this
    server's socket the request arrived on (None when the server does not say);
    ``disconnected()`` tells a long answer (a stream) that the client has gone.
    """

    method: str
    path: str
    query: tuple[tuple[str, str], ...] = ()
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""
    prefix: str = ""
    local: str | None = None
    disconnected: Callable[[], bool] = lambda: False

    def arg(self, name: str, default: str | None = None) -> str | None:
        """The first query value of ``name``."""
        return next((v for k, v in self.query if k == name), default)

    def args(self, name: str) -> list[str]:
        """Every query value of ``name``, in order."""
        return [v for k, v in self.query if k == name]

    def json(self) -> object:
        """The body decoded as JSON (untrusted: checked by whoever reads it); HTTPError 400 when it is not JSON or nests too deeply."""
        return decode_json(self.body, "the request body")


@dataclass
class Response:
    """An answer: ``body`` is bytes, a file to send, or an async iterator of chunks (a stream)."""

    status: int = 200
    body: bytes | Path | AsyncIterator[bytes] = b""
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)


Handler = Callable[[Request, dict[str, str]], Awaitable[Response]]


@dataclass(frozen=True)
class Route:
    """One route: ``method`` and a ``pattern`` such as ``/api/runs/{project}/{id}``; a last
    segment ``{name*}`` takes the rest of the path (``a/b/c``)."""

    method: str
    pattern: str
    handler: Handler

    def match(self, segments: list[str]) -> dict[str, str] | None:
        parts = [p for p in self.pattern.split("/") if p]
        params: dict[str, str] = {}
        for i, part in enumerate(parts):
            if part.startswith("{") and part.endswith("*}"):
                rest = segments[i:]
                if not rest or not all(rest):
                    return None
                params[part[1:-2]] = "/".join(rest)
                return params
            if i >= len(segments):
                return None
            if part.startswith("{") and part.endswith("}"):
                if not segments[i]:
                    return None
                params[part[1:-1]] = segments[i]
            elif part != segments[i]:
                return None
        return params if len(segments) == len(parts) else None


class Routes:
    """A route table, and other tables mounted under a prefix (the dashboard in the service)."""

    def __init__(self) -> None:
        self.routes: list[Route] = []
        self.mounts: list[tuple[str, Routes]] = []

    def add(self, method: str, pattern: str, handler: Handler) -> None:
        self.routes.append(Route(method.upper(), pattern, handler))

    def mount(self, prefix: str, routes: Routes) -> None:
        """Serve ``routes`` under ``prefix`` (one or more path segments, e.g. ``/dashboard``)."""
        self.mounts.append((prefix.strip("/"), routes))

    def resolve(self, method: str, path: str) -> tuple[Handler, dict[str, str]]:
        """The handler for ``method`` on ``path`` and its parameters; HTTPError 404 or 405."""
        segments = path.split("/")[1:] if path.startswith("/") else path.split("/")
        if segments == [""]:
            segments = []
        elif segments and segments[-1] == "" and len(segments) > 1:
            segments = segments[:-1]
        for prefix, inner in self.mounts:
            head = prefix.split("/")
            if segments[:len(head)] == head:
                if len(segments) == len(head) and not path.endswith("/"):
                    raise _to_folder(head[-1])
                return inner.resolve(method, "/" + "/".join(segments[len(head):]))
        allowed = []
        for route in self.routes:
            params = route.match(segments)
            if params is not None:
                if route.method == method or (method == "HEAD" and route.method == "GET"):
                    return route.handler, params
                allowed.append(route.method)
        if allowed:
            raise HTTPError(405, f"{method} is not allowed here; allowed: {', '.join(allowed)}",
                            {"Allow": ", ".join(allowed)})
        raise HTTPError(404, f"no such page: {path or '/'}")


def _to_folder(name: str) -> HTTPError:
    """A redirect from ``.../name`` to ``.../name/``: the page's relative URLs need the slash."""
    return HTTPError(308, f"see {name}/", {"Location": f"{name}/"})


def json_response(data: object, status: int = 200) -> Response:
    """``data`` as a JSON answer (non-finite floats as the strings "nan", "inf", "-inf")."""
    return Response(status, msgspec.json.encode(encode_nonfinite(data)))


def error_response(status: int, message: str, headers: Mapping[str, str] | None = None) -> Response:
    """The one shape of every refusal: ``{"error": "one line"}``."""
    return Response(status, json.dumps({"error": message}).encode(), headers=dict(headers or {}))


def file_response(path: Path, *, trusted: bool = False) -> Response:
    """A file answer. Files others can write (``trusted=False``: a run's media) are shown inline
    only as raster images; anything else comes as an attachment under a sandboxing policy, so
    a logged ``.html`` or ``.svg`` can never run script in the dashboard's origin."""
    kind = _TYPES.get(path.suffix.lower(), "application/octet-stream")
    headers: dict[str, str] = {}
    if not trusted:
        headers["Content-Security-Policy"] = "default-src 'none'; sandbox"
        if not kind.startswith("image/"):
            kind = "application/octet-stream"
            headers["Content-Disposition"] = "attachment"
    return Response(200, path, kind, headers)


# the types served (a fixed table: the platform's mimetypes reads files at first use, and may
# map an extension to a scriptable type)
_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".gif": "image/gif",
          ".webp": "image/webp", ".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
          ".css": "text/css; charset=utf-8", ".json": "application/json"}


def decode_json(data: bytes | str, what: str) -> object:
    """JSON from a client: HTTPError 400 naming ``what`` when it is malformed or nests deeper
    than the decoder's recursion limit (a deep body is a client error, not a crash)."""
    try:
        value: object = msgspec.json.decode(data)
    except msgspec.DecodeError as exc:
        raise HTTPError(400, f"{what} is not valid JSON: {exc}") from None
    except RecursionError:
        raise HTTPError(400, f"{what} nests too deeply") from None
    return value


async def serve(routes: Routes, guard: Guard, request: Request) -> Response:
    """Answer ``request``: the guard's checks, then the route; every error a one-line JSON answer
    (an unexpected exception is logged and answered 500 without its details)."""
    response = guard.check(request)
    if response is None:
        try:
            if not request.path:  # the mount point itself, without its slash
                raise _to_folder(request.prefix.rstrip("/").rsplit("/", 1)[-1] or ".")
            handler, params = routes.resolve(request.method, request.path)
            response = await handler(request, params)
        except HTTPError as exc:
            response = error_response(exc.status, exc.message, exc.headers)
        except Exception:
            _log.exception("%s %s failed", request.method, request.path)
            response = error_response(500, "internal error (the server's log has the details)")
    return secure(response)


async def close_stream(chunks: AsyncIterator[bytes]) -> None:
    """End a streamed answer's generator (its ``finally`` runs now, not at garbage collection)."""
    close = getattr(chunks, "aclose", None)
    if close is not None:
        await close()


def secure(response: Response) -> Response:
    """``response`` with :data:`SECURITY_HEADERS` added where it sets none of its own."""
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    return response
