"""The local web dashboard over tracked runs (``aiotrain runs serve``; needs aiohttp and plotly).

``dashboard_app(root)``: an aiohttp Application; ``asgi_app(dir=root)``: the same routes as an
ASGI app for FastAPI/Starlette (``app.mount("/runs", asgi_app(dir=root))``).
"""

from .app import asgi_app, dashboard_app

__all__ = ["asgi_app", "dashboard_app"]
