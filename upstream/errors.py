"""`GatewayError`: the one family of errors that become a client's JSON answer.

Every layer that refuses or fails a request raises (or returns) one: ``handlers.errors.ApiError``
for what a handler refuses, `upstream.relay.RelayError` for an upstream that failed before its
answer began, `upstream.dify.DifyError` for Dify's own errors in gatehouse's words. The handler
answers any of them the same way: ``status``, ``{"error": code, "message": message}`` and
``headers`` (e.g. ``Retry-After``). It lives here, the lowest layer that raises one, so that
``upstream/`` needs nothing of the handlers.
"""

from __future__ import annotations

__all__ = ["GatewayError"]


class GatewayError(Exception):
    """``str(exc)`` is the message: a sentence for the client, never a secret or request bytes."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers or {}
