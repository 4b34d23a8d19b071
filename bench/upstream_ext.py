"""The benchmark upstream of ``bench/upstream.py`` plus the routes the peer benchmark needs.

    python bench/upstream_ext.py --port 9100

Everything ``bench/upstream.py`` serves (``/sse``, ``/json``, ``/bytes``), and:

* ``POST /echo``: answers with the request body (up to 1 MiB) and its ``Content-Type``.
* ``POST /upload`` (any other path with a body, too): reads the body, ``Content-Length`` or
  chunked, without keeping it, and answers ``{"bytes": N, "seconds": S}``.
* ``GET /hold?id=X&interval=S``: an SSE stream of an event every S seconds (0.1 by default) for
  up to 5 minutes; the moment its socket closes is recorded under ``X``.
* ``GET /closed?id=X``: ``{"closed": <unix time the /hold?id=X socket closed, or null>}``.

Request bodies are consumed as they arrive (the base upstream only reads request heads), so a
1 GiB upload costs the upstream no memory. Kept separate from ``bench/upstream.py`` so that file
stays as issue #3 left it; the extension reuses its protocol class.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
import urllib.parse

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import upstream
from bench.upstream import _chunk, _Protocol

__all__ = ["main"]

_CLOSED: dict[str, float] = {}  # /hold id -> when its socket closed
_ECHO_LIMIT = 1024 * 1024
_HOLD_SECONDS = 300.0


class _Body:
    """An incoming request body, consumed incrementally: ``Content-Length`` or chunked."""

    def __init__(self, length: int | None, keep: bool) -> None:
        self.left = length  # None: chunked
        self.size = 0
        self.keep = keep
        self.kept = bytearray()
        self.done = length == 0
        self.started = time.monotonic()
        self._chunk_left = 0  # chunked: data bytes left in the current chunk
        self._line = b""  # chunked: a partial size or trailer line
        self._state = "size"  # chunked: size | data | crlf | trailer

    def _take(self, data: bytes | memoryview) -> None:
        self.size += len(data)
        if self.keep and len(self.kept) < _ECHO_LIMIT:
            self.kept += data[: _ECHO_LIMIT - len(self.kept)]

    def feed(self, data: bytes) -> bytes:
        """Consume ``data``; the bytes past the body's end (a pipelined request)."""
        if self.left is not None:
            n = min(self.left, len(data))
            self._take(memoryview(data)[:n])
            self.left -= n
            self.done = self.left == 0
            return data[n:]
        view, pos = memoryview(data), 0
        while pos < len(data) and not self.done:
            if self._state == "data":
                n = min(self._chunk_left, len(data) - pos)
                self._take(view[pos : pos + n])
                pos += n
                self._chunk_left -= n
                if self._chunk_left == 0:
                    self._state = "crlf"
                continue
            end = data.find(b"\n", pos)
            if end < 0:
                self._line += data[pos:]
                return b""
            line, self._line = (self._line + data[pos:end]).rstrip(b"\r"), b""
            pos = end + 1
            if self._state == "size":
                self._chunk_left = int(line.split(b";", 1)[0], 16)
                self._state = "data" if self._chunk_left else "trailer"
            elif self._state == "crlf":
                self._state = "size"
            elif line == b"":  # the blank line after the (usually empty) trailer
                self.done = True
        return data[pos:]


class _BenchProtocol(_Protocol):
    def __init__(self) -> None:
        super().__init__()
        self.body: _Body | None = None
        self.body_path = ""
        self.body_type = "application/octet-stream"
        self.body_keep_alive = True
        self.hold_id: str | None = None

    def connection_lost(self, exc: Exception | None) -> None:
        if self.hold_id is not None:
            _CLOSED[self.hold_id] = time.time()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.body is not None:
            data = self.body.feed(data)
            if not self.body.done:
                return
            self.answer_body()
        self.buffer += data
        while b"\r\n\r\n" in self.buffer and self.task is None and self.body is None:
            head, rest = self.buffer.split(b"\r\n\r\n", 1)
            lines = head.decode("latin-1").split("\r\n")
            method = lines[0].split(" ", 1)[0]
            headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
            length = headers.get("content-length")
            chunked = "chunked" in headers.get("transfer-encoding", "").lower()
            if method in ("GET", "HEAD", "DELETE") and length is None and not chunked:
                self.buffer = rest
                self.task = asyncio.ensure_future(self.respond(head))
                continue
            self.buffer = b""
            if headers.get("expect", "").lower() == "100-continue":
                assert self.transport is not None
                self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            path = urllib.parse.urlsplit(lines[0].split(" ", 2)[1]).path
            self.body = _Body(None if chunked else int(length or 0), keep=path == "/echo")
            self.body_path = path
            self.body_type = headers.get("content-type", "application/octet-stream")
            self.body_keep_alive = headers.get("connection", "").lower() != "close"
            rest = self.body.feed(rest)
            if not self.body.done:
                return
            self.answer_body()
            self.buffer = rest

    def answer_body(self) -> None:
        assert self.body is not None and self.transport is not None
        body, self.body = self.body, None
        if self.body_path == "/echo":
            self.simple(200, self.body_type.encode("latin-1"), bytes(body.kept), self.body_keep_alive)
        else:
            seconds = time.monotonic() - body.started
            answer = json.dumps({"bytes": body.size, "seconds": round(seconds, 6)}).encode()
            self.simple(200, b"application/json", answer, self.body_keep_alive)
        if not self.body_keep_alive:
            self.transport.close()

    async def respond(self, head: bytes) -> None:
        assert self.transport is not None
        target = head.decode("latin-1").split("\r\n", 1)[0].split(" ", 2)[1]
        url = urllib.parse.urlsplit(target)
        if url.path not in ("/hold", "/closed"):
            await super().respond(head)
            return
        query = dict(urllib.parse.parse_qsl(url.query))
        if url.path == "/closed":
            closed = _CLOSED.pop(query.get("id", ""), None)
            self.simple(200, b"application/json", json.dumps({"closed": closed}).encode(), True)
            self.task = None
            if b"\r\n\r\n" in self.buffer:
                self.data_received(b"")
            return
        self.hold_id = query.get("id", "")
        interval = float(query.get("interval", "0.1"))
        self.transport.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
            b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        )
        try:
            for n in range(int(_HOLD_SECONDS / interval)):
                self.transport.write(_chunk(b'data: {"n": %d, "sent": %.6f}\n\n' % (n, time.time())))
                await asyncio.sleep(interval)
            self.transport.write(b"0\r\n\r\n")
        except (ConnectionError, asyncio.CancelledError):
            return
        self.transport.close()


def main() -> None:
    upstream.main(_BenchProtocol, __doc__.split("\n")[0])


if __name__ == "__main__":
    main()
