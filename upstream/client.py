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

The same subclass keeps connections alive (``upstream/pool.py``): it asks for keep-alive,
takes its stream from the pool when the request is safe to resend, and, once an exchange has
ended cleanly, gives the stream back instead of closing it. A request that failed on a reused
connection before any answer came is sent once more on a fresh one (`UpstreamClient.fetch`).
"""

from __future__ import annotations

import sys
from types import TracebackType
from typing import Any

from tornado.httpclient import HTTPRequest, HTTPResponse
from tornado.httputil import HTTPHeaders, RequestStartLine, ResponseStartLine
from tornado.simple_httpclient import SimpleAsyncHTTPClient, _HTTPConnection

from upstream.pool import ConnectionPool, PooledConnector

__all__ = ["AbortableRequest", "UpstreamAborted", "UpstreamClient"]

# Enough that the client never queues: the real limit is file descriptors (see docs/).
MAX_CONCURRENT_FETCHES = 1_000_000
UNLIMITED_BODY = sys.maxsize
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})  # resendable, so they may reuse a connection


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
    _failed_on_reused = False  # failed on a pooled connection before any answer: resend
    _fresh_connection = False  # the resend: never on a pooled connection

    def __init__(self, url: str, **kwargs: Any) -> None:
        super().__init__(url, **kwargs)
        self._untyped = "Content-Type" not in self.headers

    @property
    def may_reuse_connection(self) -> bool:
        return (
            self.method in SAFE_METHODS and self.body_producer is None and not self.body and not self._fresh_connection
        )

    def take_resend(self) -> bool:
        """True once, when the request should be sent again on a fresh connection."""
        if not self._failed_on_reused or self._abort_error is not None:
            return False
        self._failed_on_reused, self._fresh_connection = False, True
        return True

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
    client: _AbortableClient
    _connector: PooledConnector | None = None
    _http11 = False
    _keep = False  # the exchange ended cleanly: the stream goes to the pool, not closed

    def __init__(self, client: _AbortableClient, request: HTTPRequest, *args: Any) -> None:
        super().__init__(client, request, *args)
        # ``fetch`` wraps every request in a _RequestProxy that applies the client defaults.
        original = getattr(request, "request", request)
        self._original = original if isinstance(original, AbortableRequest) else None
        if self._original is not None:
            self._original._attach(self)

    async def run(self) -> None:
        # Runs after __init__ (scheduled there), so the connector is in place before connecting.
        reuse = self._original is not None and self._original.may_reuse_connection
        self._connector = PooledConnector(self.client.pool, self.tcp_client, reuse)
        self.tcp_client = self._connector  # type: ignore[assignment]
        self.request.headers.setdefault("Connection", "keep-alive")  # Tornado's default: close
        await super().run()
        if self._keep:
            # Tornado is done with the stream now; an abort after the answer must not reach it.
            stream, self.stream = self.stream, None  # type: ignore[assignment]
            self._connector.give_back(stream)

    async def headers_received(self, first_line: RequestStartLine | ResponseStartLine, headers: HTTPHeaders) -> None:
        self._http11 = first_line.version == "HTTP/1.1"
        await super().headers_received(first_line, headers)

    def _on_end_request(self) -> None:
        if self._reusable():
            self._keep = True
        else:
            self.stream.close()

    def _reusable(self) -> bool:
        """The answer ended where its framing said (a close-delimited body ends with the stream)
        and the upstream did not ask to close."""
        connection = self.headers.get("Connection", "") if self.headers is not None else "close"
        return (
            self._http11
            and "close" not in connection.lower()
            and not self.stream.closed()
            and self._connector is not None
            and self.client.pool.max_idle > 0
        )

    def _handle_exception(
        self, typ: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None
    ) -> bool:
        if (
            self.final_callback is not None
            and self.code is None
            and self._connector is not None
            and self._connector.reused
            and self._original is not None
        ):
            self._original._failed_on_reused = True  # a stale keep-alive connection: resend
        return super()._handle_exception(typ, value, tb)

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
    def initialize(self, pool: ConnectionPool | None = None, **kwargs: Any) -> None:  # type: ignore[override]
        super().initialize(**kwargs)
        self.pool = pool or ConnectionPool(max_idle=0, idle_seconds=0)

    def _connection_class(self) -> type:
        return _AbortableConnection

    def close(self) -> None:
        super().close()
        self.pool.close()


class UpstreamClient:
    """One shared client for every upstream call of the process."""

    def __init__(
        self, connect_timeout: float, keepalive_connections: int = 100, keepalive_seconds: float = 4.0
    ) -> None:
        self._client = _AbortableClient(
            force_instance=True,
            pool=ConnectionPool(keepalive_connections, keepalive_seconds),
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
        A safe request that failed on a pooled connection before any answer is sent once more
        on a fresh one: the upstream had closed that idle connection as the request went out.
        """
        try:
            return await self._client.fetch(request, raise_error=False)
        except Exception:
            if isinstance(request, AbortableRequest) and request.take_resend():
                return await self._client.fetch(request, raise_error=False)
            raise

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
    def idle_connections(self) -> int:
        return self._client.pool.idle_count()

    @property
    def active_fetches(self) -> int:
        """Fetches holding a client slot now: the leak check's measure."""
        return len(self._client.active)

    def close(self) -> None:
        self._client.close()
