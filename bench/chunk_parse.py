"""Microseconds per SSE event that the upstream connection spends reading one chunked event.

    .venv/bin/python bench/chunk_parse.py            # this checkout
    cd <a checkout of 0220d0e> && python /path/to/bench/chunk_parse.py   # the state machine before

Feeds `upstream.http1.Http1Connection` (with the parser of the checkout it runs in) one chunk
per read, as an upstream sends an SSE event, with a no-op handler and transport, and llhttp
(`httptools`) the same bytes alone, for scale. Not a peer benchmark: a lever's own cost
(docs/decisions.md, "The upstream side keeps its own parser").
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path.cwd()))

import httptools
from tornado.httputil import HTTPHeaders, ResponseStartLine

from upstream.http1 import Http1Connection, ResponseHandler

EVENT = b'data: {"event":"message","answer":"tok"}\n\n'
CHUNK = b"%x\r\n%b\r\n" % (len(EVENT), EVENT)
HEAD = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: text/event-stream\r\n\r\n"
N = 200_000


class _Handler(ResponseHandler):
    def on_head(self, start: ResponseStartLine, headers: HTTPHeaders) -> None:
        pass

    def on_body(self, data: bytes) -> None:
        return None

    def on_done(self, error: BaseException | None) -> None:
        pass


class _Transport:
    def write(self, data: bytes) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def is_closing(self) -> bool:
        return False


def per_event(feed: Any) -> float:
    started = time.perf_counter()
    for _ in range(N):
        feed(CHUNK)
    return (time.perf_counter() - started) / N * 1e6


def main() -> None:
    connection = Http1Connection()
    connection.transport = _Transport()  # type: ignore[assignment]
    connection.start(_Handler(), b"", head_request=False, close=False)
    connection.data_received(HEAD)
    print(f"Http1Connection.data_received: {per_event(connection.data_received):.2f} us per event")
    parser = httptools.HttpResponseParser(_Handler())
    parser.feed_data(HEAD)
    print(f"llhttp alone (httptools):      {per_event(parser.feed_data):.2f} us per event")


if __name__ == "__main__":
    main()
