"""Which headers cross the gateway, in each direction.

Requests: the browser's headers minus what identifies or routes it at our hop (``Cookie``,
``Authorization``, ``Host``, hop-by-hop headers and any header named in ``Connection``,
client-sent ``X-Forwarded-*`` / ``Forwarded`` / ``X-Real-IP``, ``Expect``, framing); the
gateway adds ``Authorization``, ``X-Forwarded-*`` and ``X-Request-ID`` itself.

Responses: the upstream's headers minus hop-by-hop headers, ``Connection``-named ones and
``Set-Cookie`` (the browser's only session is the gateway's). ``Content-Length`` and
``Content-Encoding`` pass, because bodies are relayed exactly as received (no decompression).
"""

from __future__ import annotations

from collections.abc import Iterator

from tornado.httputil import HTTPHeaders

__all__ = ["HOP_BY_HOP", "request_headers_to_forward", "response_headers_to_relay"]

# RFC 9110 section 7.6.1, plus the de facto ones (Keep-Alive, Proxy-Connection).
HOP_BY_HOP = frozenset(
    h.lower()
    for h in (
        "Connection",
        "Keep-Alive",
        "Proxy-Connection",
        "Proxy-Authenticate",
        "Proxy-Authorization",
        "TE",
        "Trailer",
        "Transfer-Encoding",
        "Upgrade",
    )
)
_REQUEST_DROP = HOP_BY_HOP | frozenset(
    h.lower()
    for h in (
        "Cookie",
        "Authorization",
        "Host",
        "Forwarded",
        "X-Real-IP",
        "X-Request-ID",
        "Expect",
        "Content-Length",  # set from the body the gateway actually sends
    )
)
# X-Request-ID: the gateway's own (which the backend was sent) is the one the browser gets.
_RESPONSE_DROP = HOP_BY_HOP | frozenset(("set-cookie", "x-request-id"))


def _connection_named(headers: HTTPHeaders) -> frozenset[str]:
    named = headers.get_list("Connection")
    if not named:
        return frozenset()
    return frozenset(token.strip().lower() for value in named for token in value.split(",") if token.strip())


def request_headers_to_forward(incoming: HTTPHeaders) -> Iterator[tuple[str, str]]:
    """The browser headers that may reach the backend."""
    named = _connection_named(incoming)
    drop = _REQUEST_DROP | named if named else _REQUEST_DROP
    for name, value in incoming.get_all():
        lower = name.lower()
        if lower not in drop and not lower.startswith("x-forwarded-"):
            yield name, value


def response_headers_to_relay(upstream: HTTPHeaders) -> Iterator[tuple[str, str]]:
    """The upstream response headers that may reach the browser."""
    named = _connection_named(upstream)
    drop = _RESPONSE_DROP | named if named else _RESPONSE_DROP
    for name, value in upstream.get_all():
        if name.lower() not in drop:
            yield name, value
