"""`ResponseParser`: an upstream's bytes in, response events out. It does no I/O.

The connection (``upstream/http1.py``) feeds it what the socket reads and pulls events with
`ResponseParser.next_event` as long as it can take them: a `ResponseHead`, body pieces
(``bytes``), then `END`; `NEED_DATA` when the bytes so far complete nothing more. Pulling, in
the manner of h11, is what gives backpressure: while a piece is being delivered, nothing more
is parsed, and what has arrived stays here.

Framing follows RFC 9112 section 6, strictly, because a gateway that frames a response
differently from its upstream can be made to answer one request with another's bytes:

* no body for an answer to ``HEAD``, nor for 204 and 304; interim 1xx heads are skipped (at
  most `MAX_INTERIM`), and 101 or a 1xx with a body is refused;
* ``Transfer-Encoding`` must be exactly ``chunked``; a response with both it and
  ``Content-Length``, several different lengths, or a length that is not plain digits is
  refused (identical repeated lengths are one length, as RFC 9110 section 8.6 allows);
* chunk sizes are at most 15 hex digits; a size line (with extensions) or a trailer line over
  `MAX_CHUNK_LINE` bytes is refused however TCP split it; chunk data must end with CRLF;
* otherwise the body runs to the connection's close (`ends_at_close`): the connection decides
  whether a close ended it or cut it.

Every refusal is an ``HTTPInputError`` (Tornado's, so callers see what Tornado's client raises).

Why not llhttp, as the server side (``frontdoor/parser.py``) uses? It was tried against
``tests/test_upstream_framing.py``: llhttp refuses repeated identical ``Content-Length``
values that RFC 9110 lets a recipient accept, and takes 16-digit chunk sizes, chunk extensions
and trailer lines of any length; ``httptools`` exposes neither the chunk size nor byte offsets,
so the checks on top would have had to re-scan the bytes llhttp had just read. For the
answers an upstream sends (one chunk per event, usually one read), the pull parser below takes
a whole chunk in one step: 2.0 µs per SSE event with the connection around it, against 4.0 µs
for the state machine it replaced (``bench/chunk_parse.py``).
"""

from __future__ import annotations

import enum
import re
from typing import Final

from tornado.httputil import HTTPHeaders, HTTPInputError, ResponseStartLine, parse_response_start_line

__all__ = ["END", "MAX_CHUNK_LINE", "MAX_HEAD_BYTES", "NEED_DATA", "Event", "ResponseHead", "ResponseParser"]

MAX_HEAD_BYTES = 64 * 1024
MAX_CHUNK_LINE = 4096  # a size line with its extensions, or one trailer line
MAX_INTERIM = 10  # 1xx heads before the final one
_HEAD_END = re.compile(rb"\r?\n\r?\n")
_DIGITS = re.compile(r"[0-9]{1,19}")
_HEX = re.compile(rb"[0-9a-fA-F]{1,15}")


class _Sentinel:
    def __init__(self, name: str) -> None:
        self._name = name

    def __repr__(self) -> str:
        return self._name


END: Final = _Sentinel("END")  # the answer is complete
NEED_DATA: Final = _Sentinel("NEED_DATA")  # nothing more until more bytes arrive


class ResponseHead:
    """The final answer's status line and headers (framing headers normalised)."""

    __slots__ = ("headers", "start")

    def __init__(self, start: ResponseStartLine, headers: HTTPHeaders) -> None:
        self.start = start
        self.headers = headers


Event = ResponseHead | bytes | _Sentinel


class _State(enum.Enum):
    IDLE = 0  # between exchanges: any byte is out of step
    HEAD = 1
    LENGTH = 2
    CHUNK_SIZE = 3
    CHUNK_DATA = 4
    CHUNK_END = 5
    TRAILER = 6
    UNTIL_CLOSE = 7


class ResponseParser:
    """One connection's answers, one exchange at a time: `expect` an answer, `feed` bytes,
    pull `next_event` until `NEED_DATA` or `END`."""

    __slots__ = ("_data", "_interim", "_pos", "_remaining", "_state", "head_request", "must_close")

    def __init__(self) -> None:
        self._state = _State.IDLE
        self._data = b""  # unparsed bytes are _data[_pos:]; a whole read is kept without a copy
        self._pos = 0
        self._remaining = 0  # body bytes left (LENGTH), or of this chunk (CHUNK_DATA)
        self._interim = 0
        self.head_request = False
        self.must_close = False  # the answer's framing or headers leave the connection unusable

    def expect(self, head_request: bool) -> None:
        """The next bytes answer a request just sent (``head_request``: to a ``HEAD``)."""
        self._state = _State.HEAD
        self._interim = 0
        self.head_request = head_request
        self.must_close = False

    def feed(self, data: bytes) -> None:
        if self._pos >= len(self._data):
            self._data, self._pos = data, 0
        else:
            self._data, self._pos = self._data[self._pos :] + data, 0

    @property
    def buffered(self) -> int:
        """Bytes received and not yet parsed."""
        return len(self._data) - self._pos

    @property
    def idle(self) -> bool:
        """No answer is expected, or the last one is complete."""
        return self._state is _State.IDLE

    @property
    def ends_at_close(self) -> bool:
        """The body runs to the connection's close and everything received is parsed: a clean
        close now ends it."""
        return self._state is _State.UNTIL_CLOSE and self._pos >= len(self._data)

    def next_event(self) -> Event:
        """The next event the bytes so far complete. Raises ``HTTPInputError``."""
        while True:
            state = self._state
            if state is _State.LENGTH:
                if self._remaining == 0:
                    return self._end()
                if self._pos >= len(self._data):
                    return NEED_DATA
                return self._take()
            if state is _State.CHUNK_SIZE:
                line = self._line()
                if line is None:
                    return NEED_DATA
                match = _HEX.fullmatch(line.split(b";", 1)[0].strip(b" \t") if b";" in line else line.strip(b" \t"))
                if match is None:
                    raise HTTPInputError("bad chunk size")
                size = int(match.group(), 16)
                if size == 0:
                    self._state = _State.TRAILER
                    continue
                start, stop = self._pos, self._pos + size
                if self._data[stop : stop + 2] == b"\r\n":
                    self._pos = stop + 2  # the whole chunk is here (an SSE event, usually): one step
                    return self._data[start:stop]
                self._remaining, self._state = size, _State.CHUNK_DATA
            elif state is _State.CHUNK_DATA:
                if self._pos >= len(self._data):
                    return NEED_DATA
                data = self._take()
                if self._remaining == 0:
                    self._state = _State.CHUNK_END
                return data
            elif state is _State.CHUNK_END:
                if len(self._data) - self._pos < 2:
                    return NEED_DATA
                if self._data[self._pos : self._pos + 2] != b"\r\n":
                    raise HTTPInputError("chunk not followed by CRLF")
                self._pos += 2
                self._state = _State.CHUNK_SIZE
            elif state is _State.TRAILER:
                line = self._line()
                if line is None:
                    return NEED_DATA
                if not line:
                    return self._end()
            elif state is _State.UNTIL_CLOSE:
                if self._pos >= len(self._data):
                    return NEED_DATA
                data = self._data[self._pos :] if self._pos else self._data
                self._data, self._pos = b"", 0
                return data
            elif state is _State.HEAD:
                return self._head()
            else:  # IDLE
                return NEED_DATA

    # -- pieces --------------------------------------------------------------------------

    def _end(self) -> _Sentinel:
        self._state = _State.IDLE
        return END

    def _take(self) -> bytes:
        """Up to ``_remaining`` buffered body bytes, counted off (a whole read is not copied)."""
        start = self._pos
        end = min(len(self._data), start + self._remaining)
        data = self._data if start == 0 and end == len(self._data) else self._data[start:end]
        self._pos = end
        self._remaining -= end - start
        return data

    def _line(self) -> bytes | None:
        end = self._data.find(b"\r\n", self._pos, self._pos + MAX_CHUNK_LINE + 2)
        if end < 0:
            if len(self._data) - self._pos > MAX_CHUNK_LINE:
                raise HTTPInputError("chunk line too long")
            return None
        line = self._data[self._pos : end]
        self._pos = end + 2
        return line

    def _head(self) -> ResponseHead | _Sentinel:
        """The final head (interim ones skipped), or `NEED_DATA`."""
        match = _HEAD_END.search(self._data, self._pos)
        if match is None:
            if len(self._data) - self._pos > MAX_HEAD_BYTES:
                raise HTTPInputError("response head too large")
            return NEED_DATA
        if match.end() - self._pos > MAX_HEAD_BYTES:
            raise HTTPInputError("response head too large")
        raw = self._data[self._pos : match.start()].decode("latin-1")
        self._pos = match.end()
        start_line, _, header_text = raw.partition("\n")
        start = parse_response_start_line(start_line.rstrip("\r"))
        headers = HTTPHeaders.parse(header_text)
        if start.code < 200:
            if start.code == 101 or "Content-Length" in headers or "Transfer-Encoding" in headers:
                raise HTTPInputError(f"unexpected {start.code} response")
            self._interim += 1
            if self._interim > MAX_INTERIM:
                raise HTTPInputError("too many interim responses")
            return self._head()  # bounded: each one consumed its bytes, and MAX_INTERIM
        self._frame(start, headers)
        return ResponseHead(start, headers)

    def _frame(self, start: ResponseStartLine, headers: HTTPHeaders) -> None:
        if start.version != "HTTP/1.1" or "close" in headers.get("Connection", "").lower():
            self.must_close = True
        if self.head_request or start.code in (204, 304):
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
        self._state, self.must_close = _State.UNTIL_CLOSE, True
