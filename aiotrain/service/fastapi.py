"""The job API as a FastAPI router: ``app.include_router(job_router(service), prefix="/train")``.

The router is generated from the service's neutral route table (no second copy of the routes):
each route becomes a FastAPI route (listed in the app's OpenAPI schema) whose endpoint hands the
raw request to the same handler, behind the same Guard, as the aiohttp and ASGI faces; the
dashboard is served under ``/dashboard/``. Needs FastAPI (``pip install 'aiotrain[asgi]'``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import TYPE_CHECKING

from ..web.asgi_face import Receive, Scope, Send, answer
from ..web.guard import Guard
from ..web.http import Request, Response, Routes, serve
from .jobs import JobService

if TYPE_CHECKING:
    from fastapi import APIRouter

__all__ = ["job_router"]


def job_router(service: JobService, *, allowed_hosts: Iterable[str] = (), token: str | None = None
               ) -> APIRouter:
    """A ``fastapi.APIRouter`` with the job API and the dashboard of ``service``. It answers to
    the loopback names and ``allowed_hosts``; with ``token`` every request must carry it
    (required when the app serves a network address)."""
    try:
        from fastapi import APIRouter
        from starlette.requests import Request as StarletteRequest
        from starlette.responses import Response as StarletteResponse
    except ImportError:
        raise ImportError("job_router needs FastAPI: pip install 'aiotrain[asgi]'") from None

    routes = service.routes()
    guard = Guard.for_bind("localhost", allowed_hosts=allowed_hosts, token=token)

    class Answer(StarletteResponse):
        """Sends the neutral answer itself (streams and files included) when FastAPI calls it."""

        media_type = "application/json"

        def __init__(self, path: str) -> None:  # noqa: D107 - no body of Starlette's own
            self.path, self.background = path, None

        async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
            await answer(scope, receive, send, _respond(routes, guard), self.path)

    def endpoint(pattern: str) -> Callable[[StarletteRequest], Awaitable[Answer]]:
        async def handle(request: StarletteRequest) -> Answer:
            return Answer(_path(pattern, request.path_params))
        handle.__annotations__ = {"request": StarletteRequest}  # real classes for FastAPI to inspect
        return handle

    router = APIRouter()
    for route in routes.routes:
        router.add_api_route(route.pattern, endpoint(route.pattern), methods=[route.method],
                             name=f"{route.method.lower()} {route.pattern}", response_class=Answer,
                             status_code=201 if route.method == "POST" else 200)
    for prefix, _ in routes.mounts:
        for pattern in (f"/{prefix}", f"/{prefix}/{{rest:path}}"):
            router.add_api_route(pattern, endpoint(pattern), methods=["GET", "HEAD"],
                                 include_in_schema=False, response_class=Answer, status_code=200)
    return router


def _respond(routes: Routes, guard: Guard) -> Callable[[Request], Awaitable[Response]]:
    return lambda request: serve(routes, guard, request)


def _path(pattern: str, params: Mapping[str, object]) -> str:
    """The path below the router that FastAPI matched to ``pattern`` with ``params``."""
    return pattern.replace("{rest:path}", "{rest}").format(**{k: str(v) for k, v in params.items()})
