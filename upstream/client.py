"""The gateway's HTTP client: an `AsyncHTTPClient` built for proxying, abortable, keep-alive.

Tornado's bundled clients do not fit a gateway holding thousands of streams:
``simple_httpclient`` opens a connection per request and holds about 14 KiB of Python objects
per stream (two coroutine chains, an IOStream, an ``HTTP1Connection``), cannot be aborted
without reaching into its internals (tornadoweb/tornado#157), and left a fetch hanging on an
upstream reset in 6.6.1; ``curl_httpclient`` has no backpressure and no ``body_producer``.
`UpstreamClient` is an `AsyncHTTPClient` whose ``fetch_impl`` drives ``upstream/http1.py``
(one asyncio protocol object per connection) and ``upstream/pool.py``; the gateway calls it
through `_GatewayHTTPClient.send` (``fetch`` without its copy of the request's headers). It
keeps Tornado's contract for what gatehouse uses (``header_callback`` with the head's lines, an
async ``streaming_callback`` that is awaited before more is read, ``body_producer``,
``connect_timeout``, ``request_timeout``; errors answer as 599 with the error) and adds:

* `AbortableRequest.abort`: fail the fetch at once and close its socket, in any phase;
* no defaults added to the request (no ``Content-Type``, ``User-Agent`` or
  ``Accept-Encoding``), bodies never decompressed, redirects never followed, no body size
  limit on streamed answers, no total time limit unless ``request_timeout`` is set (the
  relay's watchdog owns time limits on streams);
* keep-alive: a ``GET`` takes an idle connection when there is one, and is sent once more on a
  fresh connection if that one turns out dead before any answer; other requests connect
  afresh (a write must never be applied twice) and give their connection to the pool after;
* what the metrics read, without the client knowing of them: how a fetch failed
  (`failure_reason`), when its answer's head came (`AbortableRequest.head_after`), and, for an
  `observed <UpstreamClient.observed>` client, each `call` reported to a `CallObserver`.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import ssl
import time
import urllib.parse
import weakref
from collections.abc import Callable
from io import BytesIO
from typing import Any, Literal, Protocol, cast

from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest, HTTPResponse
from tornado.httputil import HTTPHeaders, HTTPInputError, ResponseStartLine
from tornado.iostream import StreamClosedError
from tornado.simple_httpclient import HTTPStreamClosedError, HTTPTimeoutError

from upstream.http1 import Http1Connection, ResponseHandler, chunk, request_head
from upstream.pool import ConnectionPool, Origin

__all__ = [
    "AbortableRequest",
    "CallObserver",
    "UpstreamAborted",
    "UpstreamClient",
    "UpstreamFailure",
    "failure_reason",
]

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})  # resendable, so they may reuse a connection
MAX_BUFFERED_BODY = 16 * 1024 * 1024  # an answer the gateway reads whole (refresh, JWKS, Dify stop)
_TLS = ssl.create_default_context()


class UpstreamAborted(Exception):
    """The gateway abandoned a fetch; the message says why (``client_closed``, ``idle_timeout``...)."""


UpstreamFailure = Literal["connect", "timeout", "reset", "protocol"]


def failure_reason(error: BaseException, connected: bool) -> UpstreamFailure | None:
    """How a fetch that raised ``error`` failed: ``connect`` (no connection was made: refused,
    unreachable, a name or TLS handshake that failed), ``timeout`` (connecting, or
    ``request_timeout``), ``reset`` (the connection closed or broke before the answer was
    whole), ``protocol`` (an answer that is not valid HTTP, or anything else). None when the
    gateway abandoned it itself (`UpstreamAborted`): not the upstream's failure.
    ``connected``: whether the fetch had a connection (`AbortableRequest.connected`)."""
    if isinstance(error, UpstreamAborted):
        return None
    if isinstance(error, (HTTPTimeoutError, TimeoutError)):
        return "timeout"
    if not connected:
        return "connect"
    if isinstance(error, (HTTPStreamClosedError, StreamClosedError, ConnectionError)):
        return "reset"
    return "protocol"  # HTTPInputError: a malformed answer; or what nobody foresaw


class CallObserver(Protocol):
    """Told how each `UpstreamClient.call` of an observed client went (e.g. the metrics)."""

    def answered(self, seconds: float, status: int) -> None:
        """The answer's head came ``seconds`` after the call began, with ``status``."""

    def failed(self, reason: str) -> None:
        """The call got no answer: one of `UpstreamFailure`."""


class AbortableRequest(HTTPRequest):
    """An `HTTPRequest` that can be aborted while it is connecting, sending or streaming.

    ``head_callback(start_line, headers)``, when given, receives the final answer's head
    parsed, in place of ``header_callback``'s lines (which the caller would parse again); the
    `HTTPResponse` then carries no headers, so a long stream does not hold them twice.
    """

    head_callback: Callable[[ResponseStartLine, HTTPHeaders], None] | None = None
    connected = False  # the fetch has (had) a connection to the upstream
    head_after: float | None = None  # seconds from the fetch's start to the answer's head
    _exchange: _Exchange | None = None
    _abort_error: BaseException | None = None
    _failed_on_reused = False  # failed on a pooled connection before any answer: resend
    _fresh_connection = False  # the resend: never on a pooled connection

    def __init__(
        self, url: str, head_callback: Callable[[ResponseStartLine, HTTPHeaders], None] | None = None, **kwargs: Any
    ) -> None:
        super().__init__(url, **kwargs)  # typed loosely: Tornado's body_producer type is narrower
        self.head_callback = head_callback

    def abort(self, error: BaseException) -> None:
        """Fail the fetch with ``error`` and close its connection. Idempotent; no-op once done."""
        if self._abort_error is not None:
            return
        self._abort_error = error
        if self._exchange is not None:
            self._exchange.fail(error)

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
        self.connected = False
        return True


@dataclasses.dataclass(frozen=True, slots=True)
class _Framing:
    declared: str | None  # the Content-Length the caller gave, which a producer must write
    close: bool  # the request asks the upstream to close the connection after its answer


class _Exchange(ResponseHandler):
    """One fetch: connect or take a pooled connection, send, and answer ``callback`` once."""

    __slots__ = (
        "_body",
        "_callback",
        "_client",
        "_connection",
        "_head",
        "_origin",
        "_proxy",
        "_request",
        "_started",
        "_task",
        "_timer",
        "done",
        "reused",
    )

    def __init__(self, client: _GatewayHTTPClient, proxy: HTTPRequest, callback: Any) -> None:
        self._client = client
        # The request as given: through `_GatewayHTTPClient.send` the caller's own, through
        # Tornado's ``fetch`` a ``_RequestProxy`` (the request with the client's defaults).
        self._proxy = proxy
        self._request: HTTPRequest = getattr(proxy, "request", proxy)
        self._callback = callback
        self._connection: Http1Connection | None = None
        self._origin: Origin | None = None
        self._body: bytearray | None = None
        self._head: tuple[ResponseStartLine, HTTPHeaders | None] | None = None  # None: none came yet
        self._task: asyncio.Future[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._started = time.monotonic()
        self.done = False
        self.reused = False

    def begin(self) -> None:
        request = self._request
        if isinstance(request, AbortableRequest):
            request._exchange = self
            if request._abort_error is not None:  # aborted before fetch() was called
                self.fail(request._abort_error)
                return
        timeout = self._setting("request_timeout")
        if timeout:
            self._timer = asyncio.get_running_loop().call_later(
                timeout, self.fail, HTTPTimeoutError("Timeout during request")
            )
        try:
            head, framing = self._request_head()
        except Exception as exc:
            self.fail(exc)
            return
        reuse = isinstance(request, AbortableRequest) and request.may_reuse_connection
        assert self._origin is not None
        connection = self._client.pool.take(self._origin) if reuse else None
        if connection is None:
            self._task = asyncio.ensure_future(self._connect_and_send(head, framing))
            return
        # Only a request without a body takes a pooled connection: it is sent now, whole, with
        # no task to start (the usual proxied GET).
        self.reused = True
        try:
            self._use(connection, head, framing.close)
            connection.end_request()
        except Exception as exc:
            self.fail(exc)

    def _setting(self, name: str) -> Any:
        """The request's ``name``, or the client's default for it."""
        value = getattr(self._proxy, name)
        return self._client.defaults.get(name) if value is None else value

    def _request_head(self) -> tuple[bytes, _Framing]:
        """The request's head, and how its body goes; sets the origin it goes to."""
        request = self._request
        url = urllib.parse.urlsplit(request.url)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError(f"unsupported URL: {request.url}")
        tls = url.scheme == "https"
        self._origin = (url.hostname, url.port or (443 if tls else 80), tls)
        # The caller's headers are sent as they are and never changed (nor copied: see
        # `_GatewayHTTPClient.send`); what the client adds follows them.
        headers = request.headers
        added = []
        if "Host" not in headers:
            added.append(("Host", url.netloc.rpartition("@")[2]))
        if "Connection" not in headers:
            added.append(("Connection", "keep-alive"))
        # The framing headers are the client's own (`request_head` drops a caller's): a
        # caller's could make the upstream read a different request than the one sent.
        declared = headers.get("Content-Length")
        if declared is not None and not (declared.isascii() and declared.isdigit()):
            raise ValueError("bad Content-Length")
        if request.body is not None:
            added.append(("Content-Length", str(len(request.body))))
        elif request.body_producer is not None and declared is not None:
            added.append(("Content-Length", declared))  # the producer must write exactly that
        if request.body_producer is not None and declared is None:
            added.append(("Transfer-Encoding", "chunked"))
        target = (url.path or "/") + (f"?{url.query}" if url.query else "")
        close = "close" in headers.get("Connection", "").lower()
        return request_head(request.method, target, headers, added), _Framing(declared, close)

    def _use(self, connection: Http1Connection, head: bytes, close: bool) -> None:
        self._connection = connection
        if isinstance(self._request, AbortableRequest):
            self._request.connected = True
        connection.start(self, head, self._request.method == "HEAD", close=close)

    async def _connect_and_send(self, head: bytes, framing: _Framing) -> None:
        request = self._request
        try:
            assert self._origin is not None
            connection = await self._connect(self._origin)
            if self.done:  # aborted while connecting
                connection.close()
                return
            self._use(connection, head, framing.close)
            body = request.body
            producer: Any = request.body_producer
            if body:
                await connection.write(body)
            elif producer is not None:
                sent = 0
                declared = framing.declared
                chunked = declared is None  # a producer's body of no declared length

                async def write(data: bytes) -> None:
                    nonlocal sent
                    if data:
                        sent += len(data)
                        await connection.write(chunk(data) if chunked else data)

                await producer(write)
                if chunked:
                    await connection.write(b"0\r\n\r\n")
                elif declared is not None and sent != int(declared):
                    raise ValueError("the body producer wrote a different length than declared")
            connection.end_request()
        except Exception as exc:
            self.fail(exc)

    async def _connect(self, origin: Origin) -> Http1Connection:
        host, port, tls = origin
        loop = asyncio.get_running_loop()
        connecting = loop.create_connection(
            Http1Connection, host, port, ssl=_TLS if tls else None, server_hostname=host if tls else None
        )
        timeout = self._setting("connect_timeout")
        try:
            _, connection = await asyncio.wait_for(connecting, timeout or None)
        except TimeoutError:
            raise HTTPTimeoutError("Timeout while connecting") from None
        return connection

    # -- ResponseHandler -------------------------------------------------------------------

    def on_head(self, start: ResponseStartLine, headers: HTTPHeaders) -> None:
        request = self._request
        if isinstance(request, AbortableRequest):
            request.head_after = time.monotonic() - self._started
        if isinstance(request, AbortableRequest) and request.head_callback is not None:
            self._head = (start, None)  # the caller has the headers: not held for a whole stream
            request.head_callback(start, headers)
            return
        self._head = (start, headers)
        callback = request.header_callback
        if callback is not None:
            callback(f"{start.version} {start.code} {start.reason}\r\n")
            for name, value in headers.get_all():
                callback(f"{name}: {value}\r\n")
            callback("\r\n")

    def on_body(self, data: bytes) -> Any:
        streaming = self._request.streaming_callback
        if streaming is not None:
            return streaming(data)
        if self._body is None:
            self._body = bytearray()
        if len(self._body) + len(data) > MAX_BUFFERED_BODY:
            self.fail(HTTPInputError("response body too large"))
            return None
        self._body += data
        return None

    def on_done(self, error: BaseException | None) -> None:
        if error is not None:
            self.fail(error)
            return
        if self.done:
            return
        assert self._head is not None
        start, headers = self._head
        response = HTTPResponse(
            self._proxy,
            start.code,
            reason=start.reason,
            headers=headers,
            buffer=BytesIO(self._body or b""),  # copies it once
            request_time=time.monotonic() - self._started,
            effective_url=self._request.url,
        )
        error = response.error
        if isinstance(error, HTTPClientError) and error.response is response:
            # Tornado's error for a non-2xx answer and the answer refer to each other: a
            # reference cycle per error answer (and what it holds: the request, the relay).
            error.response = cast(HTTPResponse, weakref.proxy(response))
            error.args = (error.code, error.message)
        connection, self._connection = self._connection, None
        if connection is not None and self._origin is not None:
            self._client.pool.give(self._origin, connection)
        if self._task is not None and not self._task.done():
            self._task.cancel()  # answered before the body was sent (its connection is closed)
        self._answer(response)

    def fail(self, error: BaseException) -> None:
        """Answer with ``error`` (a 599) and close the connection; no-op once answered."""
        if self.done:
            return
        if (
            self.reused
            and self._head is None
            and isinstance(error, (HTTPStreamClosedError, StreamClosedError, ConnectionError))
            and isinstance(self._request, AbortableRequest)
        ):
            self._request._failed_on_reused = True  # closed under us, unanswered: a stale connection
        if self._connection is not None:
            self._connection.close()
            self._connection = None
        if self._task is not None and not self._task.done() and self._task is not asyncio.current_task():
            self._task.cancel()  # still connecting or sending the body
        self._answer(HTTPResponse(self._proxy, 599, error=error, request_time=time.monotonic() - self._started))

    def _answer(self, response: HTTPResponse) -> None:
        self.done = True
        # Answered: nothing here is needed again, and each would close a reference cycle with
        # a failure's traceback (the fetch's future keeps it, its frames hold this exchange;
        # a cancelled task keeps its CancelledError) or with the request's abort.
        if isinstance(self._request, AbortableRequest):
            self._request._exchange = None
        callback, self._callback = self._callback, None
        self._task = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._client.active.discard(self)
        callback(response)


class _GatewayHTTPClient(AsyncHTTPClient):
    """`AsyncHTTPClient` implementation over ``upstream/http1.py`` connections."""

    def initialize(self, pool: ConnectionPool | None = None, defaults: dict[str, Any] | None = None) -> None:  # type: ignore[override]
        super().initialize(defaults)
        self.pool = pool or ConnectionPool(max_idle=0, idle_seconds=0)
        self.active: set[_Exchange] = set()

    def fetch_impl(self, request: HTTPRequest, callback: Any) -> None:
        exchange = _Exchange(self, request, callback)
        self.active.add(exchange)
        exchange.begin()

    def send(self, request: HTTPRequest) -> asyncio.Future[HTTPResponse]:
        """``fetch(request, raise_error=False)``, less Tornado's copy of the request's headers.

        ``fetch`` copies them so that a client's defaults can be added without touching the
        caller's object; this client adds none to them (`_Exchange` sends them unchanged, its
        own framing after them), so the copy protects nothing, costs every request a second
        ``HTTPHeaders``, and a stream would hold both for its life. The future fails with the
        error of a transport failure; an HTTP error status (599 included) is an answer, as with
        ``fetch``."""
        if self._closed:
            raise RuntimeError("send() called on a closed client")
        if not isinstance(request.headers, HTTPHeaders):  # as fetch: a plain dict is taken too
            request.headers = HTTPHeaders(request.headers)
        future: asyncio.Future[HTTPResponse] = asyncio.get_running_loop().create_future()

        def answer(response: HTTPResponse) -> None:
            if future.done():  # cancelled by the caller
                return
            # Tornado's own test in fetch: an error that is not the answer's status is a failure.
            if response.error is not None and not response._error_is_response_code:
                future.set_exception(response.error)
            else:
                future.set_result(response)

        self.fetch_impl(request, answer)
        return future

    def close(self) -> None:
        for exchange in list(self.active):
            exchange.fail(UpstreamAborted("client_closed"))
        self.pool.close()
        super().close()


class UpstreamClient:
    """One shared client for every upstream call of the process; `observed` views of it share
    its connections and report their `call`s."""

    _observer: CallObserver | None = None

    def __init__(
        self, connect_timeout: float, keepalive_connections: int = 100, keepalive_seconds: float = 4.0
    ) -> None:
        self._client = _GatewayHTTPClient(
            force_instance=True,
            pool=ConnectionPool(keepalive_connections, keepalive_seconds),
            defaults={"connect_timeout": connect_timeout, "request_timeout": 0},
        )

    def observed(self, observer: CallObserver) -> UpstreamClient:
        """This client, its connections and pool shared, reporting each `call` to ``observer``
        (``fetch`` is not reported: a relay reports its own)."""
        view = copy.copy(self)
        view._observer = observer
        return view

    async def fetch(self, request: HTTPRequest) -> HTTPResponse:
        """Fetch without raising on HTTP error statuses (they are answers to relay).

        Raises on transport failures: `UpstreamAborted`, ``HTTPTimeoutError`` (connect, or
        ``request_timeout``), ``HTTPStreamClosedError``, ``HTTPInputError`` (a malformed
        answer), ``OSError`` (refused, reset, unreachable), or the body producer's own error.
        A ``GET`` that failed on a pooled connection before any answer is sent once more on a
        fresh one: the upstream had closed that idle connection as the request went out.
        """
        try:
            return await self._client.send(request)
        except Exception:
            if isinstance(request, AbortableRequest) and request.take_resend():
                return await self._client.send(request)
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
        observer = self._observer
        if observer is None:
            return await self.fetch(request)
        try:
            response = await self.fetch(request)
        except Exception as exc:
            reason = failure_reason(exc, request.connected)
            if reason is not None:
                observer.failed(reason)
            raise
        head_after = request.head_after if request.head_after is not None else response.request_time or 0.0
        observer.answered(head_after, response.code)
        return response

    @property
    def idle_connections(self) -> int:
        return self._client.pool.idle_count()

    @property
    def active_fetches(self) -> int:
        """Fetches not yet answered: the leak check's measure."""
        return len(self._client.active)

    def close(self) -> None:
        self._client.close()
