"""`ApiError`: a handler's refusal, the handlers' member of the `GatewayError` family (every
error a client sees, as ``{"error": "<snake_case_code>", "message": "..."}``)."""

from __future__ import annotations

from tornado.web import HTTPError

from upstream.errors import GatewayError

__all__ = ["ApiError", "stalled", "too_large"]


class ApiError(GatewayError, HTTPError):
    """A handler's refusal (`GatewayError`), raised where Tornado expects an ``HTTPError``, so
    that its ``status`` is the answer's. Headers set before an error is sent are cleared by
    Tornado: an error's own (``Retry-After``) travel with it."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        GatewayError.__init__(self, status, code, message, headers)
        HTTPError.__init__(self, status)


def too_large(limit: int) -> ApiError:
    return ApiError(413, "payload_too_large", f"The request body is larger than this route accepts ({limit} bytes).")


def stalled() -> ApiError:
    return ApiError(408, "request_timeout", "The request body stopped arriving.")
