"""A training job service: submit, watch (SSE), cancel jobs over HTTP, with the dashboard.

``JobService(Policy(configs, tasks))`` holds the jobs; serve it with aiohttp
(``await serve(service, host, port)``), mount it in an ASGI app
(``app.mount("/train", service_asgi_app(service))``), or include its FastAPI router
(``from aiotrain.service.fastapi import job_router``). Every face applies the same policy,
bounds and Host/Origin/token checks (docs/security.md).
"""

from .jobs import Job, JobService
from .policy import Policy
from .server import serve, service_asgi_app

__all__ = ["Job", "JobService", "Policy", "serve", "service_asgi_app"]
