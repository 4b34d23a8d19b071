"""`ApiError`: every refusal a client sees, as ``{"error": "<snake_case_code>", "message": "..."}``."""

from __future__ import annotations

from tornado.web import HTTPError

__all__ = ["ApiError", "stalled", "too_large"]


class ApiError(HTTPError):
    """An error the client gets as JSON: ``{"error": code, "message": message}``, with
    ``headers`` (e.g. ``Retry-After``): Tornado clears headers set before an error is sent."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(status)
        self.code, self.message, self.headers = code, message, headers or {}


def too_large(limit: int) -> ApiError:
    return ApiError(413, "payload_too_large", f"The request body is larger than this route accepts ({limit} bytes).")


def stalled() -> ApiError:
    return ApiError(408, "request_timeout", "The request body stopped arriving.")
