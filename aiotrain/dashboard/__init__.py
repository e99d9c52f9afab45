"""The local web dashboard over tracked runs (``aiotrain runs serve``; needs aiohttp and plotly)."""

from .app import dashboard_app

__all__ = ["dashboard_app"]
