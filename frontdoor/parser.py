"""`RequestParser`: the bytes a browser sends, as request events. It does no I/O.

Parsing is llhttp's (Node.js's parser, through ``httptools``), in its strict mode: it refuses
``Content-Length`` with ``Transfer-Encoding``, duplicate or non-numeric lengths, bad or
overflowing chunk sizes, obs-folded lines, bare CR, NUL and other control characters in
headers, header names with spaces, and a bare LF for CRLF. On top of it, this module refuses
what a gateway must not pass on although llhttp takes it:

* a request target that is not origin-form (``http://host/...``, ``*``), and ``CONNECT`` or an
  upgrade: the backend's host is fixed, and gatehouse tunnels nothing;
* a ``Transfer-Encoding`` other than exactly ``chunked`` (padding included);
* a chunk size line longer than `MAX_CHUNK_LINE` (llhttp skips extensions of any length);
* a head over `MAX_HEAD_BYTES` or with more than `MAX_HEADERS` fields: 431.

A refusal is a `BadRequest` event after the events before it; the connection answers it in
turn and closes. Requests that follow one whose
answer closes the connection (``Connection: close``, HTTP/1.0 without keep-alive) are never
parsed: llhttp refuses data after them, which the connection takes as the end of the stream.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Final

import httptools
from tornado.httputil import HTTPHeaders

__all__ = [
    "END",
    "MAX_HEADERS",
    "MAX_HEAD_BYTES",
    "BadRequest",
    "Event",
    "RequestHead",
    "RequestHeaders",
    "RequestParser",
]

MAX_HEAD_BYTES = 64 * 1024  # as Tornado's server: the request line and every header
MAX_HEADERS = 100
MAX_CHUNK_LINE = 64  # a chunk's size line with its extensions and CRLF; browsers send no extensions


class _End:
    def __repr__(self) -> str:
        return "END"


END: Final = _End()  # the request's body is complete


@dataclasses.dataclass(frozen=True, slots=True)
class RequestHead:
    method: str
    target: str
    version: str  # "HTTP/1.1" or "HTTP/1.0"
    headers: HTTPHeaders
    keep_alive: bool  # what the request allows; the answer may still close
    expect_continue: bool


class BadRequest(Exception):
    """A request that is refused before it reaches a handler: ``status`` (400 or 431) and a
    sentence for the client. Never carries request bytes."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


Event = RequestHead | bytes | _End | BadRequest


class RequestHeaders(HTTPHeaders):
    """Tornado's ``HTTPHeaders``, with ``get`` and ``in`` that do not raise and catch a
    ``KeyError`` inside for an absent name (``Mapping``'s do). A request asks after a dozen
    headers it does not carry (``Content-Length``, ``Origin``, ``X-Request-ID``, ...): about a
    microsecond each. Same answers: a name's values, comma-joined, as ``headers[name]``."""

    def get(self, name: str, default: Any = None) -> Any:
        values = self.get_list(name)
        return ",".join(values) if values else default

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and bool(self.get_list(name))


class _NoCallbacks:
    """The callbacks of the parser a released `RequestParser` holds: it is never fed."""


_SPENT = httptools.HttpRequestParser(_NoCallbacks())  # a released parser's: never fed


class RequestParser:
    """Feed it what the socket reads; it returns the events that bytes completed, in order: a
    `RequestHead`, body chunks (``bytes``), `END`, then the next request's."""

    def __init__(self) -> None:
        self._parser = httptools.HttpRequestParser(self)
        self._events: list[Event] = []
        self._target = bytearray()
        self._fields: list[tuple[bytes, bytes]] = []
        self._head_bytes = 0
        self._heads_begun = 0
        self._in_head = False
        self._in_message = False
        self._blank_lines = 0
        self._chunked_body = False  # a chunked request body is being read
        self._body = bytearray()  # body bytes of this read, handed on as one event
        self._body_bytes = 0
        self._chunk_lines = 0
        self._framing = 0  # bytes of a chunked body that are neither body nor an allowed size line
        self._last_bytes = b""  # the end of the last read: a head's end may straddle two reads
        self.closed = False  # a request ended that allows no other after it

    def release(self) -> None:
        """The connection is gone: take nothing more, and drop llhttp's parser, which holds
        this object's methods as its callbacks (a reference cycle the cyclic collector would
        otherwise have to find)."""
        self.closed = True
        self._parser = _SPENT

    @property
    def in_head(self) -> bool:
        """Part of a request head has arrived, not all of it."""
        return self._in_head

    def feed(self, data: bytes) -> list[Event]:
        """The events ``data`` completes, in order. A request that must be refused ends them with
        a `BadRequest`, and the parser takes nothing more."""
        if self.closed:
            return []
        events = self._events = []
        try:
            self._feed_read(data)
        except BadRequest as refusal:
            self._flush_body()
            events.append(refusal)
            self.closed = True
        self._flush_body()
        return events

    def _feed_read(self, data: bytes) -> None:
        if not self._in_message:
            # RFC 9112 2.2: an empty line or two before a request may be ignored; more is noise.
            self._blank_lines += len(data) - len(data.lstrip(b"\r\n"))
            if self._blank_lines > 4:
                raise BadRequest(400, "The request is malformed.")
        began = self._heads_begun
        if self._chunked_body:
            self._feed_chunks(data)
        else:
            # The head alone first, so that what follows it in this read is measured as a body.
            found = (self._last_bytes + data).find(b"\r\n\r\n")
            end = found + 4 - len(self._last_bytes)
            self._feed(data[:end] if found >= 0 and 0 < end < len(data) else data)
            if found >= 0 and 0 < end < len(data):
                if self._chunked_body:
                    self._feed_chunks(data[end:])
                else:
                    self._feed(data[end:])
        self._last_bytes = data[-3:]
        # llhttp holds a header that is still arriving: bound it before it completes. Only
        # reads wholly inside one head count, so a pipelined request never inflates the next.
        if self._in_head and began == self._heads_begun:
            self._head_bytes += len(data)
            if self._head_bytes > MAX_HEAD_BYTES:
                raise BadRequest(431, "The request's headers are too large.")

    def _feed_chunks(self, data: bytes) -> None:
        """Feed part of a chunked body, and bound its framing: llhttp reads chunk extensions
        without limit (and without holding them). Each size line in a read may take
        `MAX_CHUNK_LINE` bytes with its CRLF; a read with more that is not body is refused."""
        body_before, lines_before, heads_before = self._body_bytes, self._chunk_lines, self._heads_begun
        mark, held = len(self._events), len(self._body)
        self._feed(data)
        if self._heads_begun != heads_before:
            return  # a pipelined request began in this read: its bytes are not this body's framing
        self._framing += len(data) - (self._body_bytes - body_before)
        self._framing = max(0, self._framing - (self._chunk_lines - lines_before) * (MAX_CHUNK_LINE + 2))
        if self._framing > MAX_CHUNK_LINE + 2:
            # What this read completed is not delivered: the request is refused before its end.
            del self._events[mark:]
            del self._body[held:]
            raise BadRequest(400, "A chunk's size line is too long.")

    def _feed(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # llhttp completes the upgrading request before it stops: refuse it before its end.
            heads = [i for i, event in enumerate(self._events) if isinstance(event, RequestHead)]
            del self._events[heads[-1] + 1 if heads else 0 :]
            self._body.clear()
            raise BadRequest(400, "Upgrades and CONNECT are not supported.") from None
        except httptools.HttpParserError as exc:
            if isinstance(exc.__context__, BadRequest):  # raised by a callback below
                raise exc.__context__ from None
            if self.closed:
                return  # bytes after a closing request: never read (RFC 9112, 9.6)
            raise BadRequest(400, "The request is malformed.") from None

    # -- llhttp's callbacks ------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._in_head, self._in_message, self._head_bytes, self._blank_lines = True, True, 0, 0
        self._heads_begun += 1
        self._target.clear()
        self._fields = []

    def on_url(self, url: bytes) -> None:
        self._target += url

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self._in_head:
            raise BadRequest(400, "Chunked trailers are not accepted.")  # as Tornado's server
        if len(self._fields) >= MAX_HEADERS:
            raise BadRequest(431, "The request has too many headers.")
        self._fields.append((name, value))

    def on_headers_complete(self) -> None:
        self._in_head = False
        size = len(self._target) + sum(len(n) + len(v) + 4 for n, v in self._fields)
        if size > MAX_HEAD_BYTES:
            raise BadRequest(431, "The request's headers are too large.")
        if not self._target.startswith(b"/"):
            raise BadRequest(400, "The request target must be a path.")
        version = self._parser.get_http_version()
        if version not in ("1.1", "1.0"):
            raise BadRequest(400, "Only HTTP/1.1 and HTTP/1.0 are served.")
        headers = RequestHeaders()
        for name, value in self._fields:
            headers.add(name.decode("latin-1"), value.decode("latin-1"))
        # The raw lines are decoded: not held for the life of a stream (the cookie is most of them).
        self._fields = []
        target = self._target.decode("latin-1")
        self._target.clear()
        encoding = headers.get_list("Transfer-Encoding")
        if encoding and (len(encoding) > 1 or encoding[0].lower() != "chunked"):
            raise BadRequest(400, "The only transfer coding accepted is chunked.")
        self._chunked_body, self._framing = bool(encoding), 0
        self._events.append(
            RequestHead(
                method=self._parser.get_method().decode("ascii"),
                target=target,
                version="HTTP/" + version,
                headers=headers,
                keep_alive=self._parser.should_keep_alive(),
                expect_continue=headers.get("Expect", "").lower() == "100-continue",
            )
        )

    def on_body(self, body: bytes) -> None:
        # Pieces of one read go out as one: a body sent in tiny chunks must not cost a handler
        # call (and an upstream write) per chunk.
        self._body_bytes += len(body)
        self._body += body

    def _flush_body(self) -> None:
        if self._body:
            self._events.append(bytes(self._body))
            self._body.clear()

    def on_chunk_header(self) -> None:
        self._chunk_lines += 1

    def on_message_complete(self) -> None:
        self._in_message = self._chunked_body = False
        self._flush_body()
        self._events.append(END)
        if not self._parser.should_keep_alive():
            self.closed = True
