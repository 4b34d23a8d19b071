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
  idle keep-alive connection is closed after ``idle_timeout``; a half-closed client is closed;
* `drain`: the request in hand is answered (``Connection: close``), then the connection closes;
  an idle kept-alive one closes at once. One that has carried no request yet (just accepted,
  maybe not even connected: its server began draining between the ``accept`` and
  ``connection_made``) gets `LATE_GRACE` for a request already on its way to begin arriving:
  that request is served, with ``Connection: close``; without one, it closes. (A client retries
  a request on a kept-alive connection that closed under it, not the first request of a new one.)

A refused request (`BadRequest`) is answered ``{"error", "message"}`` with 400 or 431 and the
connection closed, before any handler sees it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import socket
from collections.abc import Callable
from typing import Any, cast

from tornado.httputil import (
    HTTPConnection,
    HTTPHeaders,
    HTTPInputError,
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
_REASONS = {400: "Bad Request", 413: "Payload Too Large", 431: "Request Header Fields Too Large"}
_CODES = {400: "bad_request", 413: "payload_too_large", 431: "request_header_fields_too_large"}
MAX_PIPELINED = 16  # requests parsed and held, the one in hand included
LINGER_SECONDS = 2.0  # after an early answer, how long the rest of its request is read and dropped
LINGER_BYTES = 16 * 1024 * 1024  # ... and how much of it
# A new connection drained before its first request: that request has likely been sent already
# (it is in the socket, read within a turn or two of the loop); one with nothing by then is idle.
LATE_GRACE = 0.25


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
        on_open: Callable[[ServerConnection], None] | None = None,
    ) -> None:
        """``on_close`` is told once the connection is closed; ``on_open``, when given, once it
        is connected (a protocol asyncio never connects is never told either)."""
        self._app = app
        self.params = params
        self._on_close = on_close
        self._on_open = on_open
        self._transport: asyncio.Transport | None = None
        self._parser = RequestParser()
        # A list, not a deque: it holds a few events at most (reading pauses while the
        # application waits), and an empty deque costs every connection a 64-slot block.
        self._pending: list[Event] = []
        self._waiting = False  # a delegate call's awaitable holds the next event
        self._reading_paused = False
        self._writing_paused = False
        self._drains: list[asyncio.Future[None]] = []
        self._held = b""  # written, but kept back until the next write or the end of the loop turn
        # What a write returns while the socket takes more: one future, resolved, for every write.
        self._ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._ready.set_result(None)
        self._timer: asyncio.TimerHandle | None = None
        self._head_started = False  # bytes of a request head arrived; its timer runs
        self._carried = False  # a request has begun on this connection
        self.exchange: Exchange | None = None
        self.draining = False  # finish the request in hand, then close
        self._lingering: int | None = None  # bytes still dropped before closing (see _linger)
        self.context = RequestContext(None, "http")

    # -- asyncio.Protocol --------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.context = RequestContext(transport.get_extra_info("peername"), "http")
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # answers are whole writes
        # Draining already: closed as idle unless a request begins to arrive (see LATE_GRACE).
        self._arm(LATE_GRACE if self.draining else self.params.idle_timeout)
        if self._on_open is not None:
            self._on_open(self)

    def data_received(self, data: bytes) -> None:
        if self._lingering is not None:
            self._lingering -= len(data)  # the rest of a request already answered: dropped
            if self._lingering <= 0:
                self.abort()
            return
        if self.exchange is None and not self._head_started:
            self._head_started = self._carried = True
            self._arm(self.params.head_timeout)
        self._pending.extend(self._parser.feed(data))
        self._bound_pipeline()
        self._run()
        if self._parser.closed and not self._pending and self.exchange is None:
            self.close()

    def eof_received(self) -> bool:
        return False  # a half-closed client is gone: close (Tornado's server does the same)

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timer()
        self._transport = None
        self._held = b""
        self._parser.release()
        for waiter in self._drains:
            if not waiter.done():
                waiter.set_exception(StreamClosedError())
                waiter.exception()  # nobody may be waiting on it any more: never "not retrieved"
        self._drains.clear()
        self._pending.clear()
        try:
            if self.exchange is not None:
                exchange, self.exchange = self.exchange, None
                self._call(exchange.connection_lost)
        finally:
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
        """Close once what is written has gone out."""
        if self._transport is not None:
            self._send_held()
            self._transport.close()

    def abort(self) -> None:
        """Close now, whatever is still unsent (a client that does not read cannot hold us)."""
        if self._transport is not None:
            self._transport.abort()

    def drain(self) -> None:
        """Finish the request in hand (if any), then close. An idle connection closes now, or,
        when it has carried no request yet, once `LATE_GRACE` passes with none begun."""
        self.draining = True
        if not self.idle:
            return
        if self._carried:
            self.close()
        elif self._transport is not None:  # (not connected yet: connection_made arms the grace)
            self._arm(LATE_GRACE)

    # -- events, in order ----------------------------------------------------------------

    def _run(self) -> None:
        """Hand pending events to the application, in order, until one must wait."""
        while self._pending and not self._waiting and self._transport is not None:
            event = self._pending[0]
            exchange = self.exchange
            if isinstance(event, RequestHead | BadRequest) and exchange is not None and exchange.read:
                break  # pipelined: it waits until the answer before it is finished
            del self._pending[0]
            if isinstance(event, BadRequest):
                self.refuse(event)
            elif isinstance(event, RequestHead):
                self._start(event)
            elif event is END:
                self._head_started = False
                assert exchange is not None
                self._call(exchange.request_read)
            else:
                assert isinstance(event, bytes) and exchange is not None
                self._wait_for(self._call(exchange.body_received, event))
        self._flow()

    def _bound_pipeline(self) -> None:
        """At most `MAX_PIPELINED` requests are held, the one in hand included; the connection
        closes after answering them (a client retries the rest, as after any close)."""
        heads = 0
        for index, event in enumerate(self._pending):
            if isinstance(event, RequestHead):
                heads += 1
                if heads > MAX_PIPELINED:
                    del self._pending[index:]
                    self._parser.closed = True
                    return

    def _start(self, head: RequestHead) -> None:
        self._cancel_timer()
        exchange = self.exchange = Exchange(self, head)
        start = RequestStartLine(head.method, head.target, head.version)

        def begin() -> Any:
            exchange.delegate = self._app.start_request(self, exchange)
            return exchange.delegate.headers_received(start, head.headers)

        self._wait_for(self._call(begin), exchange.prepared)

    def _call(self, step: Callable[..., Any], *args: Any) -> Any:
        """Run one step of the application's; a failure ends the connection, never the loop.

        Tornado refuses a request it cannot take (a missing or invalid ``Host``) by raising
        ``HTTPInputError``: that is a 400, as from Tornado's server. Anything else is a fault,
        logged, and the connection is aborted, so nothing waits on it."""
        try:
            return step(*args)
        except HTTPInputError:
            self.refuse(BadRequest(400, "The request is malformed."))
        except Exception:
            log.error("unhandled error in the server connection", exc_info=True)
            self.abort()
        return None

    def _wait_for(self, awaitable: Any, then: Callable[[], None] | None = None) -> None:
        if awaitable is None or (isinstance(awaitable, asyncio.Future) and awaitable.done()):
            if isinstance(awaitable, asyncio.Future) and not awaitable.cancelled() and awaitable.exception():
                self._failed(awaitable)
            elif then is not None:
                self._call(then)
            return
        self._waiting = True

        def resume(done: asyncio.Future[Any]) -> None:
            self._waiting = False
            if not done.cancelled() and done.exception() is not None:
                self._failed(done)
                return
            if then is not None:
                self._call(then)
            self._run()

        asyncio.ensure_future(awaitable).add_done_callback(resume)

    def _failed(self, done: asyncio.Future[Any]) -> None:
        if isinstance(done.exception(), StreamClosedError):
            return  # the connection is gone already
        log.error("unhandled error in the server connection", exc_info=done.exception())
        self.abort()

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
            if exchange.read:
                self.close()
            else:
                self._linger()
            return
        if self.draining and not self._pending:
            self.close()
            return
        # A head that began arriving during the answer has the rest of its time, not the idle's.
        self._arm(self.params.head_timeout if self._parser.in_head else self.params.idle_timeout)
        self._run()

    def _linger(self) -> None:
        """Close after an answer sent before the request was read whole, without losing it.

        Closing a socket with unread bytes in it makes the kernel send a reset, which can reach
        the client before it has read the answer: it sees a network error instead of the 413.
        So, as nginx's lingering close: send our side's end, then read and drop what the client
        still sends, `LINGER_BYTES` or `LINGER_SECONDS` at most, and close."""
        transport = self._transport
        if transport is None or not transport.can_write_eof():
            self.close()
            return
        self._lingering = LINGER_BYTES
        self._parser.closed = True
        self._send_held()
        transport.write_eof()
        self._arm(LINGER_SECONDS)
        if self._reading_paused:
            self._reading_paused = False
            transport.resume_reading()

    def refuse(self, error: BadRequest) -> None:
        # As Tornado's server logs it; the request's bytes are never logged (they can hold a cookie).
        log.info(
            "Malformed HTTP message from a client (refused)", extra={"status": error.status, "reason": error.message}
        )
        self._pending.clear()
        if self.exchange is not None and not self.exchange.read:
            # The refused bytes were the request's own body: its handler must hear it ended.
            exchange, self.exchange = self.exchange, None
            self._call(exchange.connection_lost)
            if exchange.answering:
                self.abort()  # an answer under way cannot be followed by another
                return
        if self.exchange is None:
            body = json.dumps({"error": _CODES[error.status], "message": error.message}, separators=(",", ":"))
            self.write(
                b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
                b"Connection: close\r\n\r\n%s"
                % (error.status, _REASONS[error.status].encode(), len(body), body.encode())
            )
        self.close()

    # -- writing ---------------------------------------------------------------------------

    def write(self, data: bytes, hold: bool = False) -> asyncio.Future[None]:
        """Hand ``data`` to the socket; the future resolves once its buffer has room.

        ``hold``: keep it back until the next write or the end of this loop turn, whichever is
        first. A response head is written so: the body that usually follows it in the same turn
        (a proxied answer's head and body come in one upstream read) then goes out with it, in
        one system call and one TCP segment instead of two."""
        transport = self._transport
        if transport is None or transport.is_closing():
            return _closed()
        if hold:
            if not self._held:  # the turn's end sends it, unless a write takes it first
                asyncio.get_running_loop().call_soon(self._send_held)
            self._held += data
        else:
            if self._held:
                data, self._held = self._held + data, b""
            transport.write(data)
        if not self._writing_paused:
            return self._ready
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._drains.append(waiter)
        return waiter

    def _send_held(self) -> None:
        if self._held and self._transport is not None and not self._transport.is_closing():
            data, self._held = self._held, b""
            self._transport.write(data)

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

    delegate: HTTPMessageDelegate | None = None  # from the application's start_request

    def __init__(self, conn: ServerConnection, head: RequestHead) -> None:
        self._conn: ServerConnection | None = conn
        self.head = head
        self.context = conn.context
        self._close_callback: Callable[[], None] | None = None
        self._max_body_size = conn.params.max_body_size
        self._received = 0
        self.read = False  # the whole request has been read
        self._chunked = False
        self._content_left: int | None = None
        self._close = not head.keep_alive
        self.answering = False  # the status line is out
        self._continue_sent = False
        self._delegate_closed = False  # told on_connection_close (once, ever)

    # -- the request, from the connection -----------------------------------------------

    def prepared(self) -> None:
        """The handler has seen the head (and prepared, if it streams the body)."""
        conn = self._conn
        if conn is not None and self.head.expect_continue and not self.answering and not self._continue_sent:
            self._continue_sent = True
            conn.write(_CONTINUE)

    def body_received(self, chunk: bytes) -> Any:
        conn, delegate = self._conn, self.delegate
        if conn is None or delegate is None:
            return None  # answered already: the rest of the body is dropped, and closes
        self._received += len(chunk)
        if self._received > self._max_body_size:
            conn.refuse(BadRequest(413, "The request body is too large."))
            return None
        return delegate.data_received(chunk)

    def request_read(self) -> None:
        self.read = True
        if self._conn is not None and self.delegate is not None:
            self.delegate.finish()

    def connection_lost(self) -> None:
        """The connection closed before the answer was finished."""
        self._conn = None
        if not self.read:
            self._tell_closed()
        elif self._close_callback is not None:
            callback, self._close_callback = self._close_callback, None
            callback()
        self._release()

    def _tell_closed(self) -> None:
        if self.delegate is not None and not self._delegate_closed:
            self._delegate_closed = True
            self.delegate.on_connection_close()
        self._release()

    def _release(self) -> None:
        # The delegate (Tornado's, holding the request, which holds this exchange) is told
        # nothing more: dropping it ends that reference cycle, so a finished request is freed
        # by reference counting rather than by the cyclic collector (see ops/gc_tuning.py).
        self.delegate = None
        self._close_callback = None

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
        self._close = self._close or response_closes or ends_at_close or not self.read or conn.draining
        if self._close and self.head.version == "HTTP/1.1":
            headers["Connection"] = "close"
        elif not self._close and self.head.version == "HTTP/1.0":
            headers["Connection"] = "Keep-Alive"
        lines = [f"HTTP/1.1 {code} {start_line.reason}"]
        lines += [f"{name}: {value}" for name, value in headers.get_all()]
        if any("\r" in line or "\n" in line for line in lines):
            raise ValueError("a CR or LF in a response header")
        data = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        if chunk:
            return conn.write(data + self._frame(chunk))
        return conn.write(data, hold=True)  # the body, if it comes this turn, goes with it

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
        if self.read:
            self._release()
        else:
            # Answered before the request was read: the connection closes with it, and the
            # delegate must hear so, or a handler waiting on the rest of the body never ends.
            # After the handler's own finish (its access line, on_finish), as from Tornado's server.
            asyncio.get_running_loop().call_soon(self._tell_closed)

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


def _length(headers: HTTPHeaders) -> int | None:
    value = headers.get("Content-Length")
    return int(value) if value is not None else None


def _closed() -> asyncio.Future[None]:
    future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    future.set_exception(StreamClosedError())
    future.exception()
    return future
