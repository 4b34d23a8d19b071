"""Which headers cross the gateway, in each direction.

Requests: the browser's headers minus what identifies or routes it at our hop (``Cookie``,
``Authorization``, ``Host``, hop-by-hop headers and any header named in ``Connection``,
client-sent ``X-Forwarded-*`` / ``Forwarded`` / ``X-Real-IP``, ``Expect``, framing); the
gateway adds ``Authorization``, ``X-Forwarded-*`` and ``X-Request-ID`` itself.

Responses: the upstream's headers minus hop-by-hop headers, ``Connection``-named ones and
``Set-Cookie`` (the browser's only session is the gateway's). ``Content-Length`` and
``Content-Encoding`` pass, because bodies are relayed exactly as received (no decompression).

Tracing: W3C Trace Context (``traceparent``, ``tracestate``) passes unchanged, to the backend
with the browser's other headers, and to an upstream that gets none of them (Dify) through
`trace_context` when ``traceparent`` is valid. `trace_id` reads the trace id for the access log.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from tornado.httputil import HTTPHeaders

__all__ = [
    "HOP_BY_HOP",
    "request_headers_to_forward",
    "response_headers_to_relay",
    "trace_context",
    "trace_id",
]

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
    """The upstream response headers that may reach the browser. An upstream's own CORS grant
    (``Access-Control-*``) never does: which sites may read through gatehouse is gatehouse's
    decision (``handlers/cors.py``)."""
    named = _connection_named(upstream)
    drop = _RESPONSE_DROP | named if named else _RESPONSE_DROP
    for name, value in upstream.get_all():
        lower = name.lower()
        if lower not in drop and not lower.startswith("access-control-"):
            yield name, value


# W3C Trace Context: version-traceid-parentid-flags, lower-case hex. Version ff is invalid; a
# later version may append "-..." fields, version 00 may not.
_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?")
_ZERO_TRACE, _ZERO_PARENT = "0" * 32, "0" * 16


def trace_id(incoming: HTTPHeaders) -> str | None:
    """The trace id of the request's ``traceparent`` when it is valid (and the only one), else None."""
    values = incoming.get_list("traceparent")
    if len(values) != 1:
        return None
    value = values[0]
    match = _TRACEPARENT.fullmatch(value.strip(" \t"))
    if match is None:
        return None
    version, trace, parent, _, rest = match.groups()
    if version == "ff" or (version == "00" and rest) or trace == _ZERO_TRACE or parent == _ZERO_PARENT:
        return None
    return trace


def trace_context(incoming: HTTPHeaders) -> list[tuple[str, str]]:
    """The request's ``traceparent`` and ``tracestate`` lines, unchanged, when ``traceparent``
    is valid (one invalid, the spec has ``tracestate`` ignored too); else none."""
    if trace_id(incoming) is None:
        return []
    return [(name, value) for name, value in incoming.get_all() if name.lower() in ("traceparent", "tracestate")]
