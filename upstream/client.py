"""The gateway's HTTP client: configured for proxying, and able to abort a fetch in flight.

Tornado's client defaults are wrong for a proxy: ``max_clients=10`` queues the eleventh
stream, ``request_timeout=20`` kills every longer stream, ``decompress_response=True``
rewrites bodies behind the upstream's ``Content-Length``, and ``max_body_size`` caps a
download at 100 MB. `UpstreamClient` fixes all four; time limits on streams are the relay's
job (``upstream/relay.py``), which can tell "slow to answer" from "idle" from "long".

Tornado has no public API to cancel a fetch (tornadoweb/tornado#157). This module is the one
place that reaches into ``tornado.simple_httpclient`` internals to do it: the client's
``_connection_class()`` hook returns a connection subclass that registers itself on the
`AbortableRequest`, and `AbortableRequest.abort` fails the fetch through the connection's own
``_handle_exception`` path, which answers the caller, releases the ``max_clients`` slot and
closes the socket. The same subclass makes an upstream reset fail the fetch at once (Tornado
6.6.1 leaves it hanging, or takes a reset close-delimited body for a whole one), and keeps
Tornado from adding a ``Content-Type`` the browser never sent. ``tests/test_tornado_internals.py``
fails loudly if an upgrade moves any of this.
"""

from __future__ import annotations

import sys
from typing import Any

from tornado.httpclient import HTTPRequest, HTTPResponse
from tornado.httputil import HTTPHeaders
from tornado.simple_httpclient import SimpleAsyncHTTPClient, _HTTPConnection

__all__ = ["AbortableRequest", "UpstreamAborted", "UpstreamClient"]

# Enough that the client never queues: the real limit is file descriptors (see docs/).
MAX_CONCURRENT_FETCHES = 1_000_000
UNLIMITED_BODY = sys.maxsize


class UpstreamAborted(Exception):
    """The gateway abandoned a fetch; the message says why (``client_closed``, ``idle_timeout``...)."""


class _NoDefaultContentType(HTTPHeaders):
    """Headers for a request sent without ``Content-Type``.

    Tornado's client adds ``Content-Type: application/x-www-form-urlencoded`` to any POST that
    has none (``"Content-Type" not in headers`` in ``_HTTPConnection.run``), which would make a
    backend parse an untyped body as a form. Claiming to contain the name stops that; the
    header is still never sent, because only real entries are written.
    """

    def __contains__(self, name: object) -> bool:
        return (isinstance(name, str) and name.lower() == "content-type") or super().__contains__(name)


class AbortableRequest(HTTPRequest):
    """An `HTTPRequest` that can be aborted while it is queued, connecting, or streaming, and
    whose headers are sent as given (no default ``Content-Type``)."""

    _connection: _HTTPConnection | None = None
    _abort_error: BaseException | None = None

    def __init__(self, url: str, **kwargs: Any) -> None:
        super().__init__(url, **kwargs)
        self._untyped = "Content-Type" not in self.headers

    def abort(self, error: BaseException) -> None:
        """Fail the fetch with ``error`` and close its connection. Idempotent; no-op once done."""
        if self._abort_error is not None:
            return
        self._abort_error = error
        if self._connection is not None:
            _fail(self._connection, error)

    def _attach(self, connection: _HTTPConnection) -> None:
        self._connection = connection
        if self._untyped:  # ``fetch`` replaced our headers with a plain copy; ``run()`` has not begun
            self.headers = _NoDefaultContentType(self.headers)
        if self._abort_error is not None:  # aborted before its connection existed
            _fail(connection, self._abort_error)


def _fail(connection: _HTTPConnection, error: BaseException) -> None:
    if connection.final_callback is not None:
        # Answers the fetch with a 599 carrying ``error``, releases the client slot and closes
        # the stream if one is open; a connect still in progress closes its stream on arrival.
        connection._handle_exception(type(error), error, None)
    elif getattr(connection, "stream", None) is not None:
        connection.stream.close()


class _AbortableConnection(_HTTPConnection):
    def __init__(self, client: SimpleAsyncHTTPClient | None, request: HTTPRequest, *args: Any) -> None:
        super().__init__(client, request, *args)
        # ``fetch`` wraps every request in a _RequestProxy that applies the client defaults.
        original = getattr(request, "request", request)
        if isinstance(original, AbortableRequest):
            original._attach(self)

    def on_connection_close(self) -> None:
        # Tornado raises the stream's error (a reset) from inside the close callback, where it
        # is only logged, and the fetch is never answered. Fail the fetch with it instead.
        error = self.stream.error
        if self.final_callback is not None and error is not None:
            self._handle_exception(type(error), error, None)
        else:
            super().on_connection_close()

    def finish(self) -> None:
        # A body delimited by the connection closing "ends" at any close, a reset included
        # (``_read_body_until_close``). A reset is no end: fail the fetch, do not complete it.
        error = self.stream.error
        if error is not None and self.final_callback is not None:
            self._handle_exception(type(error), error, None)
        else:
            super().finish()


class _AbortableClient(SimpleAsyncHTTPClient):
    def _connection_class(self) -> type:
        return _AbortableConnection


class UpstreamClient:
    """One shared client for every upstream call of the process."""

    def __init__(self, connect_timeout: float) -> None:
        self._client = _AbortableClient(
            force_instance=True,
            max_clients=MAX_CONCURRENT_FETCHES,
            max_body_size=UNLIMITED_BODY,
            defaults={
                "connect_timeout": connect_timeout,
                "request_timeout": 0,  # none: the relay's watchdog owns time limits
                "decompress_response": False,
                "follow_redirects": False,  # a redirect is the backend's answer to the browser
                "allow_nonstandard_methods": True,  # DELETE with a body, POST without one
            },
        )

    async def fetch(self, request: HTTPRequest) -> HTTPResponse:
        """Fetch without raising on HTTP error statuses (they are answers to relay).

        Raises on transport failures: `UpstreamAborted`, ``HTTPTimeoutError`` (connect),
        ``HTTPStreamClosedError``, ``OSError`` (refused, reset, unreachable).
        """
        return await self._client.fetch(request, raise_error=False)

    async def call(
        self,
        url: str,
        body: bytes | None,
        seconds: float,
        headers: dict[str, str] | None = None,
        method: str = "POST",
    ) -> HTTPResponse:
        """One small exchange of the gateway's own with an upstream (refresh, login, a JWKS, a
        Dify stop): send ``body`` (JSON; ``None`` for none) and take the whole answer, within
        ``seconds``."""
        base = {"Accept": "application/json"}
        if body is not None:
            base["Content-Type"] = "application/json"
        request = AbortableRequest(
            url,
            method=method,
            headers=HTTPHeaders({**base, **(headers or {})}),
            body=body if body is not None or method == "GET" else b"",
            request_timeout=seconds,
        )
        return await self.fetch(request)

    @property
    def active_fetches(self) -> int:
        """Fetches holding a client slot now: the leak check's measure."""
        return len(self._client.active)

    def close(self) -> None:
        self._client.close()
