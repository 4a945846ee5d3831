"""The HTTP API, the dashboard and the Prometheus endpoint (needs the ``web`` extra).

``create_app(forge)`` returns an ASGI app; ``taskforge serve`` runs it on uvicorn.
"""

from .app import WebSettings, create_app

__all__ = ["WebSettings", "create_app"]
