"""The HTTP layer under the dashboard and the job service, written once for every server.

``http``: the neutral request, response and route table, and :func:`~aiotrain.web.http.serve`;
``guard``: Host, Origin, body-type and token checks; ``aiohttp_face`` and ``asgi_face``: the two
thin adapters (aiohttp Application, ASGI 3 app). Routes never see a framework's objects.
"""

from .guard import Guard
from .http import HTTPError, Request, Response, Routes

__all__ = ["Guard", "HTTPError", "Request", "Response", "Routes"]
