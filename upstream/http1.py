"""One HTTP/1.1 connection to an upstream, as an asyncio protocol: one exchange at a time.

`Http1Connection` writes a request (its body from bytes or from a ``body_producer``, with
write backpressure) and reads the answer through ``upstream/response_parser.py`` (which does
the framing, and no I/O), reporting the head, each piece of body and the end to the exchange's
`ResponseHandler`. When ``on_body`` returns an awaitable, reading from the socket stops until it
is done: a slow browser slows the upstream, with nothing piling up here.
``upstream/client.py`` drives it; the relay (``upstream/relay.py``) is the usual caller.

A connection is reusable (`reusable`) only after an HTTP/1.1 exchange that both sides framed
by length or chunking, that neither side asked to close, whose request went out whole and
whose answer was read to its end with nothing after it.
"""

from __future__ import annotations

import asyncio
import itertools
import re
from collections.abc import Awaitable, Iterable
from typing import cast

from tornado.httputil import HTTPHeaders, ResponseStartLine
from tornado.iostream import StreamClosedError
from tornado.simple_httpclient import HTTPStreamClosedError

from upstream.response_parser import END, NEED_DATA, ResponseHead, ResponseParser

__all__ = ["Http1Connection", "ResponseHandler", "chunk", "request_head"]

_BAD_HEADER_CHARS = re.compile(r"[\x00\r\n]")
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_TARGET = re.compile(r"[\x21-\x7e]+")
_FRAMING_HEADERS = frozenset(("Content-Length", "Transfer-Encoding"))  # as HTTPHeaders spells them


class ResponseHandler:
    """What a connection reports to, for one exchange (``upstream/client.py``'s `_Exchange`)."""

    __slots__ = ()

    def on_head(self, start: ResponseStartLine, headers: HTTPHeaders) -> None: ...
    def on_body(self, data: bytes) -> Awaitable[None] | None: ...
    def on_done(self, error: BaseException | None) -> None: ...


class Http1Connection(asyncio.Protocol):
    __slots__ = (
        "_close_after",
        "_closed",
        "_delivering",
        "_drained",
        "_eof",
        "_handler",
        "_lost",
        "_parser",
        "_request_done",
        "transport",
    )

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._parser = ResponseParser()
        self._handler: ResponseHandler | None = None
        self._close_after = False
        self._request_done = False
        self._closed = False
        self._delivering = False  # a body callback is running: reading is paused
        self._eof = False  # the upstream closed its side cleanly (FIN, or TLS close_notify)
        self._lost: BaseException | None = None  # the connection is gone, and how
        self._drained: asyncio.Future[None] | None = None  # set while writes are paused

    # -- the exchange ---------------------------------------------------------------------

    def start(self, handler: ResponseHandler, head: bytes, head_request: bool, close: bool) -> None:
        """Send a request ``head`` and read its answer for ``handler``; the body, if any,
        follows through `write` and `end_request`."""
        assert self.transport is not None and not self._closed and self._handler is None
        self._handler = handler
        self._close_after = close
        self._request_done = False
        self._parser.expect(head_request)
        self.transport.write(head)  # (bytes sent while idle closed the connection: see data_received)

    async def write(self, data: bytes) -> None:
        """Send request body bytes; waits while the upstream is not taking them."""
        if self._closed or self.transport is None:
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
            not self._closed
            and self._handler is None
            and self._parser.idle
            and not self._parser.buffered
            and self.transport is not None
            and not self.transport.is_closing()
        )

    def close(self) -> None:
        """Drop the connection at once (an abort: the upstream sees it closed); no callback
        reaches the exchange's handler after this."""
        self._closed = True
        self._handler = None
        if self.transport is not None:
            self.transport.abort()

    # -- asyncio.Protocol -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not asyncio subclasses

    def data_received(self, data: bytes) -> None:
        if self._closed:
            return
        if self._handler is None:
            self.close()  # bytes nobody asked for: the upstream is out of step
            return
        self._parser.feed(data)
        if not self._delivering:
            self._process()

    def eof_received(self) -> bool:
        # The outcome is decided once what was received has been delivered (`_settle`): TLS
        # protocols call this straight after the last data, while its delivery is under way.
        self._eof = True
        if self._handler is None:
            self._closed = True
        elif not self._delivering:
            self._settle()
        return False  # close our side too (ignored under TLS, which closes anyway)

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = exc or HTTPStreamClosedError("Connection closed")
        self.transport = None
        if self._drained is not None:
            if not self._drained.done():
                self._drained.set_result(None)  # the writer then sees the connection gone
            self._drained = None
        if self._handler is None:
            self._closed = True
        elif not self._delivering:
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
        """Hand on what the parser has, as far as it goes; stops while a body callback runs."""
        parser = self._parser
        try:
            while not self._delivering:
                handler = self._handler
                if handler is None:
                    return
                event = parser.next_event()
                if event.__class__ is bytes:
                    self._deliver(handler, event)
                elif event is NEED_DATA:
                    return
                elif event is END:
                    self._finish()
                    return
                else:
                    assert isinstance(event, ResponseHead)
                    handler.on_head(event.start, event.headers)
        except Exception as exc:  # malformed (HTTPInputError), or a callback's own error
            self._fail(exc)

    def _deliver(self, handler: ResponseHandler, data: bytes) -> None:
        waiting = handler.on_body(data)
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
        self._process()
        if self._handler is not None and not self._delivering and (self._eof or self._lost is not None):
            self._settle()

    def _settle(self) -> None:
        """The upstream closed (or the connection was lost) and nothing is being delivered:
        parse what is left, then end the answer if its framing is complete, else fail it."""
        self._process()
        if self._handler is None or self._delivering:
            return  # finished by what was buffered, or a delivery resumes the count
        if self._eof and self._parser.ends_at_close:
            self._finish()  # a body delimited by the close: only a clean close ends it
        else:
            self._fail(self._lost or HTTPStreamClosedError("Connection closed"))

    def _finish(self) -> None:
        if self._handler is None:
            return  # already failed or aborted
        handler, self._handler = self._handler, None
        if (
            self._close_after
            or self._parser.must_close
            or not self._request_done
            or self._parser.buffered
            or self._eof
            or self._lost is not None
        ):
            self.close()
        handler.on_done(None)

    def _fail(self, error: BaseException) -> None:
        handler, self._handler = self._handler, None
        self.close()
        if handler is not None:
            handler.on_done(error)


def request_head(method: str, target: str, headers: HTTPHeaders, framing: Iterable[tuple[str, str]] = ()) -> bytes:
    """The request line, ``headers`` but their framing ones (``Content-Length``,
    ``Transfer-Encoding``), then ``framing``: the sender's own. A method that is not a token, a
    target with anything but visible ASCII, or a CR, LF or NUL in a header is refused
    (``ValueError``)."""
    if not _TOKEN.fullmatch(method) or not _TARGET.fullmatch(target):
        raise ValueError("bad request line")
    lines = [f"{method} {target} HTTP/1.1"]
    for name, value in itertools.chain(((n, v) for n, v in headers.get_all() if n not in _FRAMING_HEADERS), framing):
        line = f"{name}: {value}"
        if _BAD_HEADER_CHARS.search(line):
            raise ValueError("newline in header")
        lines.append(line)
    lines.append("\r\n")
    return "\r\n".join(lines).encode("latin-1")


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(data), data)
