"""CORS for the origins in ``ALLOWED_ORIGINS``, and for no other.

A front end on another origin (``https://app.example.com`` calling gatehouse at
``https://api.example.com``) needs the browser's permission to read gatehouse's answers and to
send anything beyond a simple request. Gatehouse grants it to the listed origins only:

* **Preflight** (``OPTIONS`` with ``Access-Control-Request-Method``): answered by gatehouse
  itself, never by the backend, with no session needed: ``204`` with the methods and request
  headers allowed, ``Access-Control-Allow-Credentials: true`` and a ``Max-Age``. A preflight from
  an origin not listed gets ``403 cors_rejected`` and no CORS header, so the browser never sends
  the request it asked about.
* **Answers** to a listed origin carry ``Access-Control-Allow-Origin: <that origin>`` (never
  ``*``: credentials are always allowed), ``-Allow-Credentials: true`` and ``-Expose-Headers``
  for what a front end reads. Every answer says ``Vary: Origin`` once any origin is listed, as
  the same URL answers differently per origin.
* An upstream's own ``Access-Control-*`` headers are never relayed (``upstream/headers.py``):
  which sites may read through gatehouse is gatehouse's decision.

CORS only lets a page *read* answers and send non-simple requests; it is not what refuses
cross-site requests. That is the CSRF rule (``auth/csrf.py``), which also trusts the listed
origins, and which still refuses an unlisted origin's simple POST (which needs no preflight).
"""

from __future__ import annotations

import dataclasses

from tornado.httputil import HTTPHeaders

from settings import origin_of

__all__ = ["ALLOWED_METHODS", "CorsPolicy"]

ALLOWED_METHODS = "GET, POST, PUT, PATCH, DELETE"  # what the API routes take
# What a front end sends beyond the CORS-safelisted headers: JSON, the CSRF header, its own
# request id, a Supabase Bearer token, and W3C trace context.
_ALLOWED_HEADERS = "Content-Type, X-CSRF, X-Request-ID, Authorization, Last-Event-ID, traceparent, tracestate"
_EXPOSED_HEADERS = "X-Request-ID, Retry-After"
MAX_AGE_SECONDS = 600  # Chromium caps a preflight's cache at 2 hours, Firefox at 24


@dataclasses.dataclass(frozen=True)
class CorsPolicy:
    allowed_origins: frozenset[str]

    @property
    def enabled(self) -> bool:
        return bool(self.allowed_origins)

    def listed_origin(self, headers: HTTPHeaders) -> str | None:
        """The request's ``Origin`` when it is one of the listed origins, else None."""
        claimed = headers.get("Origin")
        if claimed is None or not self.allowed_origins:
            return None
        origin = origin_of(claimed)
        return origin if origin is not None and origin in self.allowed_origins else None

    @staticmethod
    def is_preflight(method: str, headers: HTTPHeaders) -> bool:
        return method == "OPTIONS" and "Access-Control-Request-Method" in headers and "Origin" in headers

    @staticmethod
    def answer_headers(origin: str) -> list[tuple[str, str]]:
        """The headers an answer to a listed ``origin`` carries."""
        return [
            ("Access-Control-Allow-Origin", origin),
            ("Access-Control-Allow-Credentials", "true"),
            ("Access-Control-Expose-Headers", _EXPOSED_HEADERS),
        ]

    @staticmethod
    def preflight_headers(origin: str) -> list[tuple[str, str]]:
        """The headers a preflight from a listed ``origin`` is answered with."""
        return [
            ("Access-Control-Allow-Origin", origin),
            ("Access-Control-Allow-Credentials", "true"),
            ("Access-Control-Allow-Methods", ALLOWED_METHODS),
            ("Access-Control-Allow-Headers", _ALLOWED_HEADERS),
            ("Access-Control-Max-Age", str(MAX_AGE_SECONDS)),
        ]
