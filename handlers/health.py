"""Liveness and readiness for orchestrators."""

from __future__ import annotations

from handlers.base import BaseHandler

__all__ = ["HealthHandler", "ReadyHandler"]


class HealthHandler(BaseHandler):
    """``GET /healthz``: the process serves requests."""

    route = "healthz"

    def get(self) -> None:
        self.send_json({"status": "ok"})


class ReadyHandler(BaseHandler):
    """``GET /readyz``: configuration is loaded and the upstream client is ready."""

    route = "readyz"

    def get(self) -> None:
        self.send_json({"status": "ready", "demo": self.ctx.settings.demo})
