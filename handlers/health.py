"""Liveness and readiness for orchestrators.

``/healthz`` says the process serves requests: 200 until it exits, drain included.
``/readyz`` says it wants traffic: 200 ``{"status": "ready", ...}``, or, from the first moment
of a drain (``ops/drain.py``), 503 ``{"status": "draining", ...}`` so a load balancer routes
elsewhere. `ReadyHandler.readiness` builds the report; a check adds its field there.
"""

from __future__ import annotations

from typing import Any

from handlers.base import BaseHandler

__all__ = ["HealthHandler", "ReadyHandler"]


class HealthHandler(BaseHandler):
    """``GET /healthz``: the process serves requests."""

    route = "healthz"

    def get(self) -> None:
        self.send_json({"status": "ok"})


class ReadyHandler(BaseHandler):
    """``GET /readyz``: configuration is loaded, the upstream client is ready, and the process
    is not draining."""

    route = "readyz"

    def get(self) -> None:
        report = self.readiness()
        self.send_json(report, 200 if report["status"] == "ready" else 503)

    def readiness(self) -> dict[str, Any]:
        """The report: ``status`` (``ready`` or ``draining``) decides the answer's status.
        ``redis`` (with ``REDIS_URL``) is ``ok`` or ``unavailable``, and never makes it 503:
        without Redis, gatehouse serves on with per-process state (``docs/operations.md``)."""
        report: dict[str, Any] = {
            "status": "draining" if self.lifecycle.draining else "ready",
            "demo": self.ctx.settings.demo,
        }
        if self.ctx.redis_status is not None:
            report["redis"] = self.ctx.redis_status
        return report
