"""CORS preflights, answered by gatehouse before any route sees them (``handlers/cors.py``).

`GatewayApplication` sends every preflight (``OPTIONS`` with ``Origin`` and
``Access-Control-Request-Method``) to `PreflightHandler`, whatever the path: a preflight
authenticates nothing, reaches no upstream, and must not depend on a route's own methods (the
proxy routes answer a plain ``OPTIONS`` with 405, as before).
"""

from __future__ import annotations

from typing import Any

from tornado.httputil import HTTPServerRequest
from tornado.web import Application

from handlers.base import BaseHandler
from handlers.cors import CorsPolicy
from handlers.errors import ApiError

__all__ = ["GatewayApplication", "PreflightHandler"]


class PreflightHandler(BaseHandler):
    """``OPTIONS`` preflight: 204 with the CORS grant for a listed origin, else 403."""

    SUPPORTED_METHODS = ("OPTIONS",)
    route = "preflight"

    def options(self, *_: str) -> None:
        origin = self.ctx.cors.listed_origin(self.request.headers)
        if origin is None:
            raise ApiError(403, "cors_rejected", "This origin is not allowed to call gatehouse from a browser.")
        for name, value in CorsPolicy.preflight_headers(origin):
            self.set_header(name, value)
        self.set_status(204)
        self.finish()


class GatewayApplication(Application):
    """Tornado's `Application`, with CORS preflights routed to `PreflightHandler`."""

    def find_handler(self, request: HTTPServerRequest, **kwargs: Any) -> Any:
        if CorsPolicy.is_preflight(request.method or "", request.headers):
            args = self.settings["preflight_args"]
            return self.get_handler_delegate(request, PreflightHandler, args)
        return super().find_handler(request, **kwargs)
