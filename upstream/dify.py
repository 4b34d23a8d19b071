"""Dify's service API, as gatehouse calls it: URLs, headers, error answers and stopping a task.

The API key lives here and goes only into the ``Authorization`` header of requests to
``DIFY_API_URL``. Dify learns nothing about the browser: no cookie, no client header, no IP;
only the Supabase user id, as Dify's ``user`` (which scopes conversations and files).

Dify's errors before a stream (``{"code", "message", "status"}``) become gatehouse's own
error answers by `dify_error`: a 4xx the browser caused keeps its status and Dify's code and
message; 401/403 mean *our* key was refused and become 502 ``upstream_auth_failed``, so the
browser never thinks it is signed out; 5xx and unreadable answers become 502.
"""

from __future__ import annotations

import json
import logging
import urllib.parse
from collections.abc import Mapping

from tornado.httputil import HTTPHeaders

from upstream.client import UpstreamClient
from upstream.errors import GatewayError
from upstream.relay import HeldResponse

__all__ = ["DifyClient", "DifyError", "dify_error"]

log = logging.getLogger("gatehouse")
_MAX_MESSAGE = 500


class DifyError(GatewayError):
    """An error Dify gave before any stream began, in gatehouse's words (`dify_error`)."""


class DifyClient:
    """Builds requests to one Dify app; one per process."""

    def __init__(self, base_url: str, api_key: str, client: UpstreamClient, timeout: float) -> None:
        self._base = base_url.rstrip("/")
        self._key = api_key
        self._client = client
        self._timeout = timeout

    def url(self, path: str, query: Mapping[str, str] | None = None) -> str:
        """``DIFY_API_URL/<path>?<query>``; ``path`` segments are the gateway's own or validated ids."""
        encoded = f"?{urllib.parse.urlencode(query)}" if query else ""
        return f"{self._base}/{path}{encoded}"

    def headers(self, content_type: str | None = None) -> HTTPHeaders:
        headers = HTTPHeaders({"Authorization": f"Bearer {self._key}", "Accept": "application/json"})
        if content_type is not None:
            headers["Content-Type"] = content_type
        return headers

    def redact(self, text: str) -> str:
        """``text`` without the API key in it, should an upstream ever echo it."""
        return text.replace(self._key, "[redacted]") if self._key in text else text

    async def stop(self, task_id: str, user: str) -> bool:
        """Ask Dify to stop generating ``task_id`` (and billing for it). True when it agreed;
        failures are logged, never raised: the browser that wanted it is already gone."""
        body = json.dumps({"user": user}).encode()
        try:
            response = await self._client.call(
                self.url(f"chat-messages/{task_id}/stop"),
                body,
                self._timeout,
                headers={"Authorization": f"Bearer {self._key}"},
            )
        except Exception as exc:
            log.warning("dify stop failed", extra={"task_id": task_id, "error": type(exc).__name__})
            return False
        if response.code != 200:
            log.warning("dify stop refused", extra={"task_id": task_id, "dify_status": response.code})
            return False
        return True


def dify_error(held: HeldResponse, client: DifyClient) -> DifyError:
    """Gatehouse's answer to an error Dify gave before any stream began."""
    code, message = _code_and_message(bytes(held.body))
    message = client.redact(message)[:_MAX_MESSAGE] if message else ""
    status = held.status
    if status in (401, 403):
        return DifyError(
            502,
            "upstream_auth_failed",
            "The chat service refused this gateway's credentials" + (f": {message}" if message else "."),
        )
    if status >= 500 or status < 400:
        return DifyError(502, "bad_gateway", message or "The chat service failed to answer.")
    retry_after = held.headers.get("Retry-After") if status == 429 else None
    return DifyError(
        status,
        code or ("rate_limited" if status == 429 else "bad_request"),
        message or "The chat service refused the request.",
        {"Retry-After": retry_after} if retry_after is not None else None,
    )


def _code_and_message(body: bytes) -> tuple[str | None, str | None]:
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        return None, None
    if not isinstance(data, dict):
        return None, None
    code, message = data.get("code"), data.get("message")
    return (
        code if isinstance(code, str) and code.isascii() and code.replace("_", "").isalnum() else None,
        message if isinstance(message, str) else None,
    )
