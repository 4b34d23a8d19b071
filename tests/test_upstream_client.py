"""The gateway's upstream client (``upstream/client.py``): aborting a fetch in any phase.

A browser that goes away must free the upstream at once: `AbortableRequest.abort` fails the
fetch and closes its socket whether the fetch is waiting to connect, connecting or streaming.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from tornado.httputil import HTTPHeaders, ResponseStartLine

from tests.fakes.keepalive import Answer, ok
from tests.fakes.raw import RawUpstream, Script
from upstream.client import AbortableRequest, UpstreamAborted, UpstreamClient
from upstream.http1 import Http1Connection, ResponseHandler, request_head

Reader = asyncio.StreamReader
Writer = asyncio.StreamWriter


@pytest.fixture
def silent_upstream(
    upstreams: Callable[[Script], Awaitable[RawUpstream]],
) -> Callable[[], Awaitable[RawUpstream]]:
    """An upstream that sends a response head, then nothing."""

    async def script(reader: Reader, writer: Writer) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(30)

    return lambda: upstreams(script)


def now() -> float:
    return asyncio.get_running_loop().time()


@pytest.mark.gen_test(timeout=10)
async def test_abort_fails_a_streaming_fetch_and_closes_its_socket(silent_upstream: Any) -> None:
    upstream = await silent_upstream()
    client = UpstreamClient(connect_timeout=5)
    header_lines: list[str] = []
    head_done = asyncio.Event()

    def on_header(line: str) -> None:
        header_lines.append(line)
        if line == "\r\n":
            head_done.set()

    async def on_chunk(chunk: bytes) -> None:
        pass

    request = AbortableRequest(upstream.url, header_callback=on_header, streaming_callback=on_chunk)
    fetching = asyncio.ensure_future(client.fetch(request))
    try:
        await asyncio.wait_for(head_done.wait(), 2)
        assert header_lines[0].startswith("HTTP/1.1 200")

        # Control: left alone, this fetch would wait for the silent upstream.
        await asyncio.sleep(0.2)
        assert not fetching.done()
        assert client.active_fetches == 1
        assert not upstream.closed.is_set()

        aborted_at = now()
        request.abort(UpstreamAborted("test"))
        with pytest.raises(UpstreamAborted) as raised:
            await asyncio.wait_for(asyncio.shield(fetching), 1)
        assert now() - aborted_at < 0.1
        assert raised.value.args[0] == "test"
        await asyncio.wait_for(upstream.closed.wait(), 1)
        assert upstream.closed_at[0] - aborted_at < 0.1
        assert client.active_fetches == 0
        request.abort(UpstreamAborted("again"))  # idempotent: no error, nothing changes
    finally:
        fetching.cancel()
        client.close()


@pytest.mark.parametrize("moment", ["before_the_connection_exists", "while_connecting"])
@pytest.mark.gen_test(timeout=10)
async def test_abort_before_the_upstream_socket_is_ready(silent_upstream: Any, moment: str) -> None:
    upstream = await silent_upstream()
    client = UpstreamClient(connect_timeout=5)
    request = AbortableRequest(upstream.url)
    fetching = asyncio.ensure_future(client.fetch(request))
    try:
        if moment == "while_connecting":
            await asyncio.sleep(0)  # fetch() has started the exchange; its connect is pending
            assert request._exchange is not None and client.active_fetches == 1
        else:
            assert request._exchange is None
        aborted_at = now()
        request.abort(UpstreamAborted("early"))

        with pytest.raises(UpstreamAborted):
            await asyncio.wait_for(asyncio.shield(fetching), 1)
        assert now() - aborted_at < 0.1
        assert client.active_fetches == 0
        await asyncio.sleep(0.3)
        assert upstream.heads == []  # no request ever reached the upstream
        assert len(upstream.closed_at) == upstream.connections  # nor was a socket left open
    finally:
        fetching.cancel()
        client.close()


# -- the connection's end: decided once what was received is delivered ---------------------------


class _Transport:
    """Enough of an asyncio transport to drive `Http1Connection` by hand."""

    def __init__(self) -> None:
        self.written = b""
        self.aborted = False
        self.reading = True

    def write(self, data: bytes) -> None:
        self.written += data

    def abort(self) -> None:
        self.aborted = True

    def is_closing(self) -> bool:
        return self.aborted

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True


class _Handler(ResponseHandler):
    def __init__(self) -> None:
        self.body = b""
        self.outcome: list[BaseException | None] = []
        self.delivery: asyncio.Future[None] | None = None

    def on_head(self, start: ResponseStartLine, headers: HTTPHeaders) -> None:
        pass

    def on_body(self, data: bytes) -> Awaitable[None] | None:
        self.body += data
        self.delivery = asyncio.get_running_loop().create_future()
        return self.delivery

    def on_done(self, error: BaseException | None) -> None:
        self.outcome.append(error)


def _exchange(answer: bytes) -> tuple[Http1Connection, _Transport, _Handler]:
    connection, transport, handler = Http1Connection(), _Transport(), _Handler()
    connection.connection_made(transport)  # type: ignore[arg-type]
    connection.start(handler, b"GET / HTTP/1.1\r\n\r\n", head_request=False, close=False)
    connection.end_request()
    connection.data_received(answer)
    assert not transport.reading and handler.outcome == []  # the body is being delivered
    return connection, transport, handler


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\n\r\nhello",  # delimited by the close
    ],
    ids=["length", "chunked", "until-close"],
)
@pytest.mark.gen_test(timeout=5)
async def test_a_clean_close_during_the_last_delivery_completes_the_answer(answer: bytes) -> None:
    """TLS protocols report the close straight after the last data, while it is still being
    written to the browser: the answer is whole, and must end as such."""
    connection, _, handler = _exchange(answer)
    connection.eof_received()
    connection.connection_lost(None)
    assert handler.outcome == []  # nothing decided while the delivery runs
    assert handler.delivery is not None
    handler.delivery.set_result(None)
    await asyncio.sleep(0)
    assert handler.outcome == [None] and handler.body == b"hello"
    assert not connection.reusable


@pytest.mark.parametrize(
    ("answer", "close"),
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhello", "fin"),
        (b"HTTP/1.1 200 OK\r\n\r\nhello", "lost-without-fin"),  # uvloop TLS may drop the rest
        (b"HTTP/1.1 200 OK\r\n\r\nhello", "reset"),
    ],
)
@pytest.mark.gen_test(timeout=5)
async def test_a_close_before_the_answer_is_whole_fails_it(answer: bytes, close: str) -> None:
    connection, _, handler = _exchange(answer)
    if close == "fin":
        connection.eof_received()
    connection.connection_lost(ConnectionResetError() if close == "reset" else None)
    assert handler.delivery is not None
    handler.delivery.set_result(None)
    await asyncio.sleep(0)
    assert len(handler.outcome) == 1 and handler.outcome[0] is not None  # failed, never complete


@pytest.mark.gen_test(timeout=5)
async def test_bytes_on_an_idle_connection_close_it_at_once() -> None:
    connection, transport, handler = _exchange(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")
    assert handler.delivery is not None
    handler.delivery.set_result(None)
    await asyncio.sleep(0)
    assert handler.outcome == [None] and connection.reusable
    connection.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nsmuggled")
    assert transport.aborted and not connection.reusable


@pytest.mark.parametrize(
    ("method", "target"),
    [("GET", "/a b"), ("GET", "/a\r\nX-Injected: 1"), ("GE T", "/"), ("GET", "/caf\u00e9"), ("GET", "")],
)
def test_a_request_line_that_could_be_read_two_ways_is_refused(method: str, target: str) -> None:
    with pytest.raises(ValueError):
        request_head(method, target, HTTPHeaders())


@pytest.mark.gen_test(timeout=10)
async def test_an_upstreams_own_599_is_an_answer_and_plain_dict_headers_are_taken(keepalive: Any) -> None:
    """Only a transport failure raises: a 599 the upstream sends itself is its answer (as with
    Tornado's fetch), and headers given as a plain dict are sent as with fetch."""
    upstream = await keepalive(lambda seen: Answer(b"HTTP/1.1 599 Odd\r\nContent-Length: 2\r\n\r\n{}"))
    client = UpstreamClient(connect_timeout=5)
    try:
        request = AbortableRequest(f"{upstream.url}/x", headers={"X-One": "1"})
        response = await client.fetch(request)
        assert response.code == 599 and response.body == b"{}"
        assert upstream.seen[0].headers["x-one"] == "1"
    finally:
        client.close()


def test_the_head_carries_the_senders_framing_never_the_callers() -> None:
    headers = HTTPHeaders({"Content-Length": "9", "Transfer-Encoding": "gzip, chunked", "X-Kept": "1"})
    head = request_head("POST", "/x", headers, [("Content-Length", "2")])
    assert head == b"POST /x HTTP/1.1\r\nX-Kept: 1\r\nContent-Length: 2\r\n\r\n"


@pytest.mark.gen_test(timeout=10)
async def test_the_client_frames_request_bodies_itself(keepalive: Any) -> None:
    """A caller's Transfer-Encoding or Content-Length never reaches the upstream beside the
    client's own, which could make it read a different request than the one sent."""
    upstream = await keepalive(lambda seen: Answer(ok(b"{}")))
    client = UpstreamClient(connect_timeout=5)
    try:
        response = await client.call(
            f"{upstream.url}/echo",
            b'{"a": 1}',
            5,
            headers={"Transfer-Encoding": "chunked", "Content-Length": "999"},
        )
        assert response.code == 200
        seen = upstream.seen[0]
        assert seen.body == b'{"a": 1}'
        assert seen.headers["content-length"] == "8" and "transfer-encoding" not in seen.headers
    finally:
        client.close()


@pytest.mark.gen_test(timeout=10)
async def test_the_callers_headers_are_sent_as_they_are_and_left_unchanged(keepalive: Any) -> None:
    """No copy of the request's headers is made (a stream would hold both) and none is needed:
    what the client adds (Host, Connection, its framing) goes on the wire, not into them."""
    upstream = await keepalive(lambda seen: Answer(ok(b"{}")))
    client = UpstreamClient(connect_timeout=5)
    headers = HTTPHeaders({"X-One": "1", "Content-Length": "999"})
    headers.add("X-Two", "a")
    headers.add("X-Two", "b")
    request = AbortableRequest(f"{upstream.url}/echo", method="POST", headers=headers, body=b"{}")
    try:
        response = await client.fetch(request)
        assert response.code == 200
        seen = upstream.seen[0]
        netloc = upstream.url.split("//")[1]
        assert seen.lines == (
            "X-One: 1",
            "X-Two: a",
            "X-Two: b",
            f"Host: {netloc}",
            "Connection: keep-alive",
            "Content-Length: 2",
        )
        assert request.headers is headers
        assert list(headers.get_all()) == [("X-One", "1"), ("Content-Length", "999"), ("X-Two", "a"), ("X-Two", "b")]
    finally:
        client.close()


@pytest.mark.gen_test(timeout=10)
async def test_aborting_an_upload_the_upstream_does_not_read_frees_everything(caplog: Any) -> None:
    """The upload's writes wait for the upstream to take them; an abort then must not trip
    over that wait (it once raised inside the loop's connection_lost callback)."""
    closed = asyncio.Event()

    async def never_reads(reader: Reader, writer: Writer) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            await asyncio.sleep(0.7)  # reads nothing more for a while (its buffer fills, TCP stalls)
            while await reader.read(65536):
                pass
        except ConnectionError:
            pass
        closed.set()
        writer.close()

    server = await asyncio.start_server(never_reads, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = UpstreamClient(connect_timeout=5)
    written = 0

    async def produce(write: Callable[[bytes], Awaitable[None]]) -> None:
        nonlocal written
        while True:
            await write(b"x" * 65536)
            written += 65536

    request = AbortableRequest(
        f"http://127.0.0.1:{port}/",
        method="POST",
        body_producer=produce,
        headers=HTTPHeaders({"Content-Length": str(2**30)}),
    )
    fetching = asyncio.ensure_future(client.fetch(request))
    try:
        await asyncio.sleep(0.5)
        assert 0 < written < 64 * 2**20  # held back by the upstream not reading
        request.abort(UpstreamAborted("client_closed"))
        with pytest.raises(UpstreamAborted):
            await asyncio.wait_for(fetching, 1)
        await asyncio.wait_for(closed.wait(), 2)
        await asyncio.sleep(0.05)
        assert client.active_fetches == 0
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
    finally:
        fetching.cancel()
        client.close()
        server.close()
