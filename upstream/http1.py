"""One HTTP/1.1 connection to an upstream, as an asyncio protocol: one exchange at a time.

`Http1Connection` writes a request (its body from bytes or from a ``body_producer``, with
write backpressure) and reads the answer, calling the request's ``header_callback`` with the
head's lines (as Tornado's clients do) and its ``streaming_callback`` with each piece of body.
When that callback returns an awaitable, reading from the socket stops until it is done: a
slow browser slows the upstream, with nothing piling up here. ``upstream/client.py`` drives
it; the relay (``upstream/relay.py``) is the usual caller.

Framing follows RFC 9112 section 6, strictly, because a gateway that frames a response
differently from its upstream can be made to answer one request with another's bytes:

* no body for ``HEAD``, 1xx, 204 and 304; interim 1xx heads are skipped (101 is refused);
* ``Transfer-Encoding`` must be exactly ``chunked``; a response with both it and
  ``Content-Length``, several different lengths, or a length that is not plain digits is
  refused (as Tornado does);
* otherwise the body runs to the connection's close, and a reset is a failure, never an end.

A connection is reusable (`reusable`) only after an HTTP/1.1 exchange that both sides framed
by length or chunking, that neither side asked to close, whose request went out whole and
whose answer was read to its end with nothing after it.
"""

from __future__ import annotations

import asyncio
import enum
import re
from collections.abc import Awaitable
from typing import cast

from tornado.httputil import HTTPHeaders, HTTPInputError, ResponseStartLine, parse_response_start_line
from tornado.iostream import StreamClosedError
from tornado.simple_httpclient import HTTPStreamClosedError

__all__ = ["Http1Connection", "ResponseHandler", "chunk", "request_head"]

MAX_HEAD_BYTES = 64 * 1024
MAX_CHUNK_LINE = 4096  # size line with extensions, or one trailer line
MAX_INTERIM = 10  # 1xx heads before the final one
_HEAD_END = re.compile(rb"\r?\n\r?\n")
_DIGITS = re.compile(r"[0-9]{1,19}")
_HEX = re.compile(rb"[0-9a-fA-F]{1,15}")
_BAD_HEADER_CHARS = re.compile(r"[\x00\r\n]")
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_TARGET = re.compile(r"[\x21-\x7e]+")


class ResponseHandler:
    """What a connection reports to, for one exchange (``upstream/client.py``'s `_Exchange`)."""

    __slots__ = ()

    def on_head(self, start: ResponseStartLine, headers: HTTPHeaders) -> None: ...
    def on_body(self, data: bytes) -> Awaitable[None] | None: ...
    def on_done(self, error: BaseException | None) -> None: ...


class _State(enum.Enum):
    IDLE = 0
    HEAD = 1
    LENGTH = 2
    CHUNK_SIZE = 3
    CHUNK_DATA = 4
    CHUNK_END = 5
    TRAILER = 6
    UNTIL_CLOSE = 7
    CLOSED = 8


class Http1Connection(asyncio.Protocol):
    __slots__ = (
        "_buffer",
        "_close_after",
        "_delivering",
        "_drained",
        "_eof",
        "_handler",
        "_head_request",
        "_interim",
        "_lost",
        "_remaining",
        "_request_done",
        "_state",
        "transport",
    )

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._state = _State.IDLE
        self._buffer = bytearray()
        self._handler: ResponseHandler | None = None
        self._remaining = 0
        self._interim = 0
        self._head_request = False
        self._close_after = False
        self._request_done = False
        self._delivering = False  # a body callback is running: reading is paused
        self._eof = False  # the upstream closed its side cleanly (FIN, or TLS close_notify)
        self._lost: BaseException | None = None  # the connection is gone, and how
        self._drained: asyncio.Future[None] | None = None  # set while writes are paused

    # -- the exchange ---------------------------------------------------------------------

    def start(self, handler: ResponseHandler, head: bytes, head_request: bool, close: bool) -> None:
        """Send a request ``head`` and read its answer for ``handler``; the body, if any,
        follows through `write` and `end_request`."""
        assert self.transport is not None and self._state is _State.IDLE
        self._handler = handler
        self._head_request = head_request
        self._close_after = close
        self._request_done = False
        self._interim = 0
        self._state = _State.HEAD
        self.transport.write(head)  # (bytes sent while idle closed the connection: see data_received)

    async def write(self, data: bytes) -> None:
        """Send request body bytes; waits while the upstream is not taking them."""
        if self._state is _State.CLOSED or self.transport is None:
            raise StreamClosedError()
        self.transport.write(data)
        if self._drained is not None:
            await asyncio.shield(self._drained)  # shared: a cancelled writer must not cancel it
            if self.transport is None:  # lost while waiting
                raise StreamClosedError()

    def end_request(self) -> None:
        """The request has gone out whole (an answer that came first has closed the connection)."""
        self._request_done = True

    @property
    def reusable(self) -> bool:
        return (
            self._state is _State.IDLE
            and self._handler is None
            and not self._buffer
            and self.transport is not None
            and not self.transport.is_closing()
        )

    def close(self) -> None:
        """Drop the connection at once (an abort: the upstream sees it closed); no callback
        reaches the exchange's handler after this."""
        self._state = _State.CLOSED
        self._handler = None
        if self.transport is not None:
            self.transport.abort()

    # -- asyncio.Protocol -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not asyncio subclasses

    def data_received(self, data: bytes) -> None:
        if self._state is _State.CLOSED:
            return
        if self._state is _State.IDLE:
            self.close()  # bytes nobody asked for: the upstream is out of step
            return
        try:
            if (
                not self._buffer
                and not self._delivering
                and (
                    self._state is _State.UNTIL_CLOSE or (self._state is _State.LENGTH and len(data) <= self._remaining)
                )
            ):
                # The common case of a body: hand the bytes on without copying them.
                if self._state is _State.LENGTH:
                    self._remaining -= len(data)
                self._deliver(data)
                if self._state is _State.LENGTH and self._remaining == 0 and not self._delivering:
                    self._finish()  # no-op if the delivery failed the exchange
                return
            self._buffer += data
            self._process()
        except Exception as exc:  # a callback's error: this exchange fails, the loop goes on
            self._fail(exc)

    def eof_received(self) -> bool:
        # The outcome is decided once what was received has been delivered (`_settle`): TLS
        # protocols call this straight after the last data, while its delivery is under way.
        self._eof = True
        if self._state is _State.IDLE:
            self._state = _State.CLOSED
        elif self._handler is not None and not self._delivering:
            self._settle()
        return False  # close our side too (ignored under TLS, which closes anyway)

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = exc or HTTPStreamClosedError("Connection closed")
        self.transport = None
        if self._drained is not None:
            if not self._drained.done():
                self._drained.set_result(None)  # the writer then sees the connection gone
            self._drained = None
        if self._state is _State.IDLE:
            self._state = _State.CLOSED
        elif self._handler is not None and not self._delivering:
            self._settle()

    def pause_writing(self) -> None:
        if self._drained is None:
            self._drained = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        if self._drained is not None:
            if not self._drained.done():
                self._drained.set_result(None)
            self._drained = None

    # -- reading the answer -------------------------------------------------------------------

    def _process(self) -> None:
        """Parse what is buffered, as far as it goes; stops while a body callback runs."""
        try:
            while not self._delivering and self._handler is not None:
                state = self._state
                if state is _State.HEAD:
                    if not self._read_head():
                        return
                elif state is _State.LENGTH:
                    if not self._buffer:
                        return
                    self._deliver(self._take_counted())
                    if self._remaining == 0 and not self._delivering and self._handler is not None:
                        self._finish()
                elif state is _State.UNTIL_CLOSE:
                    if not self._buffer:
                        return
                    data = bytes(self._buffer)
                    self._buffer.clear()
                    self._deliver(data)
                elif state is _State.CHUNK_SIZE:
                    line = self._line()
                    if line is None:
                        return
                    match = _HEX.fullmatch(line.split(b";", 1)[0].strip(b" \t"))
                    if match is None:
                        raise HTTPInputError("bad chunk size")
                    self._remaining = int(match.group(), 16)
                    self._state = _State.CHUNK_DATA if self._remaining else _State.TRAILER
                elif state is _State.CHUNK_DATA:
                    if not self._buffer:
                        return
                    data = self._take_counted()
                    if self._remaining == 0:
                        self._state = _State.CHUNK_END
                    self._deliver(data)
                elif state is _State.CHUNK_END:
                    if len(self._buffer) < 2:
                        return
                    if self._buffer[:2] != b"\r\n":
                        raise HTTPInputError("chunk not followed by CRLF")
                    del self._buffer[:2]
                    self._state = _State.CHUNK_SIZE
                elif state is _State.TRAILER:
                    line = self._line()
                    if line is None:
                        return
                    if not line:
                        self._finish()
                else:
                    return
        except Exception as exc:  # malformed (HTTPInputError), or a callback's own error
            self._fail(exc)

    def _take_counted(self) -> bytes:
        """Up to ``_remaining`` buffered body bytes, counted off."""
        data = bytes(self._buffer[: self._remaining])
        del self._buffer[: len(data)]
        self._remaining -= len(data)
        return data

    def _line(self) -> bytes | None:
        end = self._buffer.find(b"\r\n", 0, MAX_CHUNK_LINE + 2)
        if end < 0:
            if len(self._buffer) > MAX_CHUNK_LINE:
                raise HTTPInputError("chunk line too long")
            return None
        line = bytes(self._buffer[:end])
        del self._buffer[: end + 2]
        return line

    def _read_head(self) -> bool:
        match = _HEAD_END.search(self._buffer)
        if match is None:
            if len(self._buffer) > MAX_HEAD_BYTES:
                raise HTTPInputError("response head too large")
            return False
        if match.end() > MAX_HEAD_BYTES:
            raise HTTPInputError("response head too large")
        raw = self._buffer[: match.start()].decode("latin-1")
        del self._buffer[: match.end()]
        start_line, _, header_text = raw.partition("\n")
        start = parse_response_start_line(start_line.rstrip("\r"))
        headers = HTTPHeaders.parse(header_text)
        if start.code < 200:
            if start.code == 101 or "Content-Length" in headers or "Transfer-Encoding" in headers:
                raise HTTPInputError(f"unexpected {start.code} response")
            self._interim += 1
            if self._interim > MAX_INTERIM:
                raise HTTPInputError("too many interim responses")
            return True
        self._frame(start, headers)
        assert self._handler is not None
        self._handler.on_head(start, headers)
        if self._state is _State.LENGTH and self._remaining == 0:
            self._finish()
        return True

    def _frame(self, start: ResponseStartLine, headers: HTTPHeaders) -> None:
        if start.version != "HTTP/1.1" or "close" in headers.get("Connection", "").lower():
            self._close_after = True
        if self._head_request or start.code in (204, 304):
            if start.code == 204:
                headers.pop("Content-Length", None)  # meaningless on a 204, and never relayed
            self._state, self._remaining = _State.LENGTH, 0
            return
        encodings = headers.get_list("Transfer-Encoding")
        lengths = headers.get_list("Content-Length")
        if encodings:
            if lengths:
                raise HTTPInputError("response with both Transfer-Encoding and Content-Length")
            if ",".join(encodings).replace(" ", "").lower() != "chunked":
                raise HTTPInputError("unsupported Transfer-Encoding")
            self._state = _State.CHUNK_SIZE
            return
        if lengths:
            values = {v.strip() for item in lengths for v in item.split(",")}
            if len(values) != 1 or not _DIGITS.fullmatch(next(iter(values))):
                raise HTTPInputError("bad Content-Length")
            self._state, self._remaining = _State.LENGTH, int(values.pop())
            headers["Content-Length"] = str(self._remaining)  # one value, however many were sent
            return
        self._state, self._close_after = _State.UNTIL_CLOSE, True

    def _deliver(self, data: bytes) -> None:
        assert self._handler is not None
        waiting = self._handler.on_body(data)
        if waiting is not None:
            self._delivering = True
            if self.transport is not None:
                self.transport.pause_reading()
            asyncio.ensure_future(waiting).add_done_callback(self._delivered)

    def _delivered(self, future: asyncio.Future[None]) -> None:
        self._delivering = False
        if self._handler is None:  # aborted or failed meanwhile
            return
        if future.cancelled():
            self._fail(StreamClosedError())
            return
        error = future.exception()
        if error is not None:
            self._fail(error)
            return
        if self.transport is not None:
            self.transport.resume_reading()
        if self._state is _State.LENGTH and self._remaining == 0:
            self._finish()
            return
        self._process()
        if self._handler is not None and not self._delivering and (self._eof or self._lost is not None):
            self._settle()

    def _settle(self) -> None:
        """The upstream closed (or the connection was lost) and nothing is being delivered:
        parse what is left, then end the answer if its framing is complete, else fail it."""
        self._process()
        if self._handler is None or self._delivering:
            return  # finished by what was buffered, or a delivery resumes the count
        if self._state is _State.UNTIL_CLOSE and self._eof and not self._buffer:
            self._finish()  # a body delimited by the close: only a clean close ends it
        else:
            self._fail(self._lost or HTTPStreamClosedError("Connection closed"))

    def _finish(self) -> None:
        if self._handler is None:
            return  # already failed or aborted
        handler, self._handler = self._handler, None
        self._state = _State.IDLE
        # A close-delimited body set _close_after when it was framed.
        if self._close_after or not self._request_done or self._buffer or self._eof or self._lost is not None:
            self.close()
        handler.on_done(None)

    def _fail(self, error: BaseException) -> None:
        handler, self._handler = self._handler, None
        self.close()
        if handler is not None:
            handler.on_done(error)


def request_head(method: str, target: str, headers: HTTPHeaders) -> bytes:
    """The request line and headers; a method that is not a token, a target with anything but
    visible ASCII, or a CR, LF or NUL in a header is refused (``ValueError``)."""
    if not _TOKEN.fullmatch(method) or not _TARGET.fullmatch(target):
        raise ValueError("bad request line")
    lines = [f"{method} {target} HTTP/1.1"]
    for name, value in headers.get_all():
        line = f"{name}: {value}"
        if _BAD_HEADER_CHARS.search(line):
            raise ValueError("newline in header")
        lines.append(line)
    lines.append("\r\n")
    return "\r\n".join(lines).encode("latin-1")


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(data), data)
