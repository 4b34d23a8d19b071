"""The metrics listener's application: ``GET /metrics`` and nothing else.

It is served on its own listener (``METRICS_HOST``:``METRICS_PORT``, ``server.py``), never on the
gateway's port, so the figures are never public by accident. ``GET /metrics`` answers with the
`Exposition <ops.metrics_exposition.Exposition>` in the format the scraper asked for; any other
path is a JSON 404 and any other method a JSON 405. Scrapes are neither logged nor counted.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from tornado.web import Application, HTTPError, RequestHandler

if TYPE_CHECKING:  # imported by server.serve only when metrics are on: it imports prometheus_client
    from ops.metrics_exposition import Exposition

__all__ = ["make_metrics_app"]

_ERRORS = {
    404: ("not_found", "No such route: the metrics are at /metrics."),
    405: ("method_not_allowed", "The metrics are read with GET."),
}


class _JsonErrors(RequestHandler):
    def set_default_headers(self) -> None:
        self.clear_header("Server")
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("Cache-Control", "no-store")

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        code, message = _ERRORS.get(status_code, ("internal_error", "Something went wrong on our side."))
        if status_code == 405:
            self.set_header("Allow", "GET")
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps({"error": code, "message": message}, separators=(",", ":")))


class MetricsHandler(_JsonErrors):
    SUPPORTED_METHODS = ("GET",)

    def initialize(self, exposition: Exposition) -> None:
        self.exposition = exposition

    async def get(self) -> None:
        body, content_type = await self.exposition.render(self.request.headers.get("Accept", ""))
        self.set_header("Content-Type", content_type)
        self.finish(body)


class _NotFound(_JsonErrors):
    def prepare(self) -> None:
        raise HTTPError(404)


def make_metrics_app(exposition: Exposition) -> Application:
    return Application(
        [(r"/metrics", MetricsHandler, {"exposition": exposition})],
        default_handler_class=_NotFound,
        log_function=lambda handler: None,
        compress_response=False,
        serve_traceback=False,
    )
