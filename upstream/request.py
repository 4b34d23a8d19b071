"""Building the upstream request: a URL from fixed parts, and the forwarded headers."""

from __future__ import annotations

import urllib.parse

from tornado.httputil import HTTPHeaders, HTTPServerRequest

from settings import BackendURL
from upstream.headers import request_headers_to_forward
from upstream.paths import BackendPath

__all__ = ["upstream_headers", "upstream_url"]


def upstream_url(backend: BackendURL, path: BackendPath, query: str) -> str:
    """``BACKEND_URL/<path>?<query>``: scheme, host and port are always the backend's own.

    ``path`` was validated by `parse_backend_path` (no empty or dot segments), so the joined
    path starts with exactly one ``/`` and cannot be read as an authority. The query string is
    passed on byte for byte; bytes outside printable ASCII, and ``#``, percent-encoded.
    """
    if not query.isascii() or "#" in query:
        query = _escape_query(query)
    return urllib.parse.urlunsplit((backend.scheme, backend.netloc, f"{backend.base_path}/{path.raw}", query, ""))


# Printable ASCII but "#", which would start a fragment in the upstream URL.
_QUERY_SAFE = "".join(chr(c) for c in range(0x21, 0x7F) if chr(c) != "#")


def _escape_query(query: str) -> str:
    """Percent-encode the bytes a browser sent raw. Tornado hands the request line over as
    latin-1 text, so encoding it back yields the bytes that arrived (UTF-8 ``é`` stays
    ``%C3%A9``, not double-encoded)."""
    return urllib.parse.quote(query.encode("latin-1"), safe=_QUERY_SAFE)


def upstream_headers(request: HTTPServerRequest, request_id: str, access_token: str | None) -> HTTPHeaders:
    """The browser's forwardable headers plus what the gateway vouches for."""
    headers = HTTPHeaders()
    for name, value in request_headers_to_forward(request.headers):
        headers.add(name, value)
    if access_token is not None:
        headers["Authorization"] = f"Bearer {access_token}"
    headers["X-Forwarded-For"] = request.remote_ip or ""
    headers["X-Forwarded-Proto"] = request.protocol
    headers["X-Forwarded-Host"] = request.host
    headers["X-Request-ID"] = request_id
    return headers
