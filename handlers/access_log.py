"""One JSON access line per request, and nothing secret in it.

The line carries ``request_id``, ``method``, ``route``, ``path`` (never the query string),
``status``, ``duration_ms``, ``upstream_ms``, ``bytes_out``, ``user`` (the session's ``sub``) and
``outcome``. No header, cookie, token or body is ever read here.
"""

from __future__ import annotations

import logging

from tornado.web import RequestHandler

__all__ = ["log_request"]

access_log = logging.getLogger("gatehouse.access")


def log_request(handler: RequestHandler) -> None:
    """Tornado's ``log_function`` application setting."""
    if not access_log.isEnabledFor(logging.INFO):
        return
    request = handler.request
    access_log.info(
        "request",
        extra={
            "request_id": getattr(handler, "request_id", None),
            "method": request.method,
            "route": getattr(handler, "route", "other"),
            "path": request.path,
            "status": handler.get_status(),
            "duration_ms": round(request.request_time() * 1000, 1),
            "upstream_ms": getattr(handler, "upstream_ms", None),
            "bytes_out": getattr(handler, "bytes_out", 0),
            "user": getattr(handler, "user", None),
            "outcome": getattr(handler, "outcome", "ok"),
        },
    )
