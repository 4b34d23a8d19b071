"""`ServerConnection`: one browser connection, HTTP/1.1 over an asyncio protocol, serving
Tornado's `Application` through its public server interfaces.

The connection parses with `frontdoor.parser.RequestParser` and hands each request to the
application as Tornado's own ``HTTP1ServerConnection`` would: ``start_request`` gives an
``HTTPMessageDelegate``, which gets ``headers_received``, ``data_received`` and ``finish``, and an
`Exchange` (a ``tornado.httputil.HTTPConnection``) takes the response. So
``tornado.web.Application``, ``RequestHandler``s and ``stream_request_body`` run unchanged.

Contract, as Tornado's server keeps it:

* one request at a time: pipelined requests wait, in order, until the answer before them is
  finished; after an answer that closes the connection nothing more is read;
* flow control both ways: a delegate call that returns an awaitable holds the next event (and
  reading stops while it waits); a write returns a future that resolves once the socket's
  buffer is below its high-water mark;
* an answer closes the connection when the request asked (``Connection: close``, HTTP/1.0 without
  keep-alive), when it says so, when it came before the request was read whole, or while the
  server drains; it then says ``Connection: close``;
* ``Expect: 100-continue`` is answered ``100 Continue`` once the handler has prepared, unless it
  has answered already;
* a request head must arrive within ``head_timeout`` of its first byte (no slowloris), and an
  idle keep-alive connection is closed after ``idle_timeout``; a half-closed client is closed.

A refused request (`BadRequest`) is answered ``{"error", "message"}`` with 400 or 431 and the
connection closed, before any handler sees it.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import json
import logging
import socket
from collections.abc import Callable
from typing import Any, cast

from tornado.httputil import (
    HTTPConnection,
    HTTPHeaders,
    HTTPMessageDelegate,
    HTTPServerConnectionDelegate,
    RequestStartLine,
    ResponseStartLine,
)
from tornado.iostream import StreamClosedError

from frontdoor.parser import END, BadRequest, Event, RequestHead, RequestParser

__all__ = ["ConnectionParams", "Exchange", "ServerConnection"]

log = logging.getLogger("gatehouse")
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_LAST_CHUNK = b"0\r\n\r\n"
_REASONS = {400: "Bad Request", 431: "Request Header Fields Too Large"}


@dataclasses.dataclass(frozen=True)
class ConnectionParams:
    idle_timeout: float = 75.0  # a kept-alive connection with no request
    head_timeout: float = 10.0  # from a request's first byte to the end of its head
    max_body_size: int = 100 * 1024 * 1024  # until a handler sets its own (gatehouse's all do)


class RequestContext:
    """What Tornado's ``HTTPServerRequest`` reads from ``connection.context``."""

    def __init__(self, address: Any, protocol: str) -> None:
        self.address = address
        self.remote_ip = address[0] if isinstance(address, tuple) else "0.0.0.0"
        self.protocol = protocol

    def __str__(self) -> str:
        return self.remote_ip


class ServerConnection(asyncio.Protocol):
    def __init__(
        self,
        app: HTTPServerConnectionDelegate,
        params: ConnectionParams,
        on_close: Callable[[ServerConnection], None],
    ) -> None:
        self._app = app
        self.params = params
        self._on_close = on_close
        self._transport: asyncio.Transport | None = None
        self._parser = RequestParser()
        self._pending: collections.deque[Event] = collections.deque()
        self._waiting = False  # a delegate call's awaitable holds the next event
        self._reading_paused = False
        self._writing_paused = False
        self._drains: list[asyncio.Future[None]] = []
        self._timer: asyncio.TimerHandle | None = None
        self._head_started = False  # bytes of a request head arrived; its timer runs
        self.exchange: Exchange | None = None
        self.draining = False  # finish the request in hand, then close
        self.context = RequestContext(None, "http")

    # -- asyncio.Protocol --------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.context = RequestContext(transport.get_extra_info("peername"), "http")
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # answers are whole writes
        self._arm(self.params.idle_timeout)

    def data_received(self, data: bytes) -> None:
        if self.exchange is None and not self._head_started:
            self._head_started = True
            self._arm(self.params.head_timeout)
        try:
            events = self._parser.feed(data)
        except BadRequest as exc:
            self._refuse(exc)
            return
        self._pending.extend(events)
        self._run()
        if self._parser.closed and not self._pending and self.exchange is None:
            self.close()

    def eof_received(self) -> bool:
        return False  # a half-closed client is gone: close (Tornado's server does the same)

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timer()
        self._transport = None
        for waiter in self._drains:
            if not waiter.done():
                waiter.set_exception(StreamClosedError())
                waiter.exception()  # nobody may be waiting on it any more: never "not retrieved"
        self._drains.clear()
        self._pending.clear()
        if self.exchange is not None:
            exchange, self.exchange = self.exchange, None
            exchange.connection_lost()
        self._on_close(self)

    def pause_writing(self) -> None:
        self._writing_paused = True

    def resume_writing(self) -> None:
        self._writing_paused = False
        drains, self._drains = self._drains, []
        for waiter in drains:
            if not waiter.done():
                waiter.set_result(None)

    # -- the server's controls -----------------------------------------------------------

    @property
    def idle(self) -> bool:
        """No request in hand, none arriving."""
        return self.exchange is None and not self._head_started and not self._pending

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    def drain(self) -> None:
        """Finish the request in hand (if any), then close."""
        self.draining = True
        if self.idle:
            self.close()

    # -- events, in order ----------------------------------------------------------------

    def _run(self) -> None:
        """Hand pending events to the application until one must wait."""
        while self._pending and not self._waiting:
            event = self._pending[0]
            if isinstance(event, RequestHead):
                if self.exchange is not None:
                    break  # pipelined: the answer before it is not finished yet
                self._pending.popleft()
                self._start(event)
            elif event is END:
                self._pending.popleft()
                self._head_started = False
                assert self.exchange is not None
                self.exchange.request_read()
            else:
                assert isinstance(event, bytes) and self.exchange is not None
                self._pending.popleft()
                self._wait_for(self.exchange.body_received(event))
        self._flow()

    def _start(self, head: RequestHead) -> None:
        self._cancel_timer()
        exchange = self.exchange = Exchange(self, head)
        exchange.delegate = self._app.start_request(self, exchange)
        start = RequestStartLine(head.method, head.target, head.version)
        self._wait_for(exchange.delegate.headers_received(start, head.headers), exchange.prepared)

    def _wait_for(self, awaitable: Any, then: Callable[[], None] | None = None) -> None:
        if awaitable is None or (isinstance(awaitable, asyncio.Future) and awaitable.done()):
            if then is not None:
                then()
            return
        self._waiting = True

        def resume(done: asyncio.Future[Any]) -> None:
            if not done.cancelled():
                done.exception()  # the delegate logs its own failures; never "not retrieved"
            self._waiting = False
            if then is not None:
                then()
            if self._transport is not None:
                self._run()

        asyncio.ensure_future(awaitable).add_done_callback(resume)

    def _flow(self) -> None:
        """Read while events flow; stop while one waits, so an upload waits on its upstream."""
        if self._transport is None:
            return
        hold = self._waiting or bool(self._pending)
        if hold and not self._reading_paused:
            self._reading_paused = True
            self._transport.pause_reading()
        elif not hold and self._reading_paused:
            self._reading_paused = False
            self._transport.resume_reading()

    def exchange_done(self, exchange: Exchange, close: bool) -> None:
        """The answer to ``exchange`` is written: close, or wait for the next request."""
        if exchange is not self.exchange:
            return
        self.exchange = None
        if close or (self._parser.closed and not self._pending):
            self._pending.clear()  # nothing after a closing answer is ever served
            self.close()
            return
        if self.draining and not self._pending:
            self.close()
            return
        self._arm(self.params.idle_timeout)
        self._run()

    def _refuse(self, error: BadRequest) -> None:
        # As Tornado's server logs it; the request's bytes are never logged (they can hold a cookie).
        log.info(
            "Malformed HTTP message from a client (refused)", extra={"status": error.status, "reason": error.message}
        )
        self._pending.clear()
        if self.exchange is None or not self.exchange.answering:
            code = "bad_request" if error.status == 400 else "request_header_fields_too_large"
            body = json.dumps({"error": code, "message": error.message}, separators=(",", ":")).encode()
            self.write(
                b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
                b"Connection: close\r\n\r\n%s" % (error.status, _REASONS[error.status].encode(), len(body), body)
            )
        self.close()

    # -- writing ---------------------------------------------------------------------------

    def write(self, data: bytes) -> asyncio.Future[None]:
        """Hand ``data`` to the socket; the future resolves once its buffer has room."""
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self._transport is None or self._transport.is_closing():
            waiter.set_exception(StreamClosedError())
            waiter.exception()  # a write nobody awaits (100 Continue, a refusal) must not warn
            return waiter
        self._transport.write(data)
        if self._writing_paused:
            self._drains.append(waiter)
        else:
            waiter.set_result(None)
        return waiter

    # -- timers ----------------------------------------------------------------------------

    def _arm(self, seconds: float) -> None:
        self._cancel_timer()
        self._timer = asyncio.get_running_loop().call_later(seconds, self.close)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


class Exchange(HTTPConnection):
    """One request and its answer: the ``HTTPConnection`` Tornado's handlers write to."""

    delegate: HTTPMessageDelegate

    def __init__(self, conn: ServerConnection, head: RequestHead) -> None:
        self._conn: ServerConnection | None = conn
        self.head = head
        self.context = conn.context
        self._close_callback: Callable[[], None] | None = None
        self._max_body_size = conn.params.max_body_size
        self._received = 0
        self._read = False  # the whole request has been read
        self._chunked = False
        self._content_left: int | None = None
        self._close = not head.keep_alive
        self.answering = False  # the status line is out
        self._continue_sent = False

    # -- the request, from the connection -----------------------------------------------

    def prepared(self) -> None:
        """The handler has seen the head (and prepared, if it streams the body)."""
        conn = self._conn
        if conn is not None and self.head.expect_continue and not self.answering and not self._continue_sent:
            self._continue_sent = True
            conn.write(_CONTINUE)

    def body_received(self, chunk: bytes) -> Any:
        if self.answering and self._finished_writing():
            return None  # answered already: the rest of the body is dropped, and closes
        self._received += len(chunk)
        if self._received > self._max_body_size:
            self.close()
            return None
        return self.delegate.data_received(chunk)

    def request_read(self) -> None:
        self._read = True
        if not self._finished_writing():
            self.delegate.finish()

    def connection_lost(self) -> None:
        self._conn = None
        if not self._read:
            self.delegate.on_connection_close()
        elif self._close_callback is not None:
            callback, self._close_callback = self._close_callback, None
            callback()

    # -- tornado.httputil.HTTPConnection -------------------------------------------------

    def write_headers(
        self,
        start_line: RequestStartLine | ResponseStartLine,
        headers: HTTPHeaders,
        chunk: bytes | None = None,
    ) -> asyncio.Future[None]:
        assert isinstance(start_line, ResponseStartLine)
        conn = self._conn
        if conn is None:
            return _closed()
        self.answering = True
        code, method = start_line.code, self.head.method
        bodyless = method == "HEAD" or code in (204, 304) or 100 <= code < 200
        self._chunked = self.head.version == "HTTP/1.1" and not bodyless and "Content-Length" not in headers
        if self._chunked:
            headers["Transfer-Encoding"] = "chunked"
        self._content_left = 0 if bodyless else _length(headers)
        response_closes = headers.get("Connection", "").lower() == "close"
        ends_at_close = not self._chunked and self._content_left is None  # HTTP/1.0, no length
        self._close = self._close or response_closes or ends_at_close or not self._read or conn.draining
        if self._close and self.head.version == "HTTP/1.1":
            headers["Connection"] = "close"
        elif not self._close and self.head.version == "HTTP/1.0":
            headers["Connection"] = "Keep-Alive"
        lines = [f"HTTP/1.1 {code} {start_line.reason}"]
        lines += [f"{name}: {value}" for name, value in headers.get_all()]
        if any("\r" in line or "\n" in line for line in lines):
            raise ValueError("a CR or LF in a response header")
        data = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        return conn.write(data + self._frame(chunk) if chunk else data)

    def write(self, chunk: bytes) -> asyncio.Future[None]:
        conn = self._conn
        if conn is None:
            return _closed()
        return conn.write(self._frame(chunk))

    def finish(self) -> None:
        conn = self._conn
        if conn is None:
            return
        if self._content_left:  # fewer bytes than Content-Length: never let it look complete
            self.close()
            return
        if self._chunked:
            conn.write(_LAST_CHUNK)
        self._content_left = None
        self._conn = None
        conn.exchange_done(self, self._close)
        if not self._read:
            # Answered before the request was read: the connection closes with it, and the
            # delegate must hear so, or a handler waiting on the rest of the body never ends.
            self.delegate.on_connection_close()

    def set_close_callback(self, callback: Callable[[], None] | None) -> None:
        self._close_callback = callback

    def set_max_body_size(self, max_body_size: int) -> None:
        self._max_body_size = max_body_size

    def set_body_timeout(self, timeout: float) -> None:
        """Body timeouts are the handlers' (a buffered body's stall watch, the relay's)."""

    def close(self) -> None:
        """Cut the connection (a response that broke off must not look complete)."""
        if self._conn is not None:
            self._conn.close()

    # -- framing ---------------------------------------------------------------------------

    def _frame(self, chunk: bytes) -> bytes:
        if self._content_left is not None:
            self._content_left -= len(chunk)
            if self._content_left < 0:
                self.close()
                raise ValueError("more bytes than Content-Length")
        if self._chunked and chunk:
            return b"%x\r\n%s\r\n" % (len(chunk), chunk)
        return chunk

    def _finished_writing(self) -> bool:
        return self.answering and self._conn is None


def _length(headers: HTTPHeaders) -> int | None:
    value = headers.get("Content-Length")
    return int(value) if value is not None else None


def _closed() -> asyncio.Future[None]:
    future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    future.set_exception(StreamClosedError())
    future.exception()
    return future
