"""Regressions from review: each test pins a bug that was found and fixed.

Leaked handlers after a mid-upload disconnect, a handler stuck after an early upstream failure,
500s from odd client input, a cookie in Tornado's own log line, 1xx answers, slow uploads timed
out, a stalled browser pinning a failed stream, and query bytes mangled on the way.
"""

from __future__ import annotations

import asyncio
import base64
import gc
import socket
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest

from handlers.proxy import ProxyHandler
from tests.conftest import LogCapture, RunningGateway
from tests.fakes.backend import FakeBackend
from tests.fakes.raw import RawUpstream, Script

Upstreams = Callable[[Script], Awaitable[RawUpstream]]


def port_of(gateway: RunningGateway) -> int:
    return int(gateway.url.rsplit(":", 1)[1])


def live_handlers() -> int:
    gc.collect()
    return sum(1 for o in gc.get_objects() if isinstance(o, ProxyHandler))


async def settle(condition: Callable[[], bool], seconds: float = 2.0) -> None:
    deadline = asyncio.get_running_loop().time() + seconds
    while not condition() and asyncio.get_running_loop().time() < deadline:  # noqa: ASYNC110 - polling state
        await asyncio.sleep(0.02)


async def raw(gateway: RunningGateway, request: bytes) -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port_of(gateway))
    writer.write(request)
    data = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    return int(data.split(b" ", 2)[1]), data


@pytest.mark.gen_test(timeout=20)
@pytest.mark.parametrize("content_type", ["application/json", "application/octet-stream"])
async def test_a_client_leaving_mid_upload_leaves_no_handler_or_task(
    content_type: str, gateway: RunningGateway, session_cookie: Callable[..., str]
) -> None:
    await asyncio.sleep(0.05)
    tasks_before, handlers_before = len(asyncio.all_tasks()), live_handlers()
    head = (
        f"POST /api/proxy/echo HTTP/1.1\r\nHost: x\r\nCookie: {session_cookie()}\r\n"
        f"Content-Type: {content_type}\r\nContent-Length: {2 * 1024 * 1024}\r\n\r\n"
    ).encode()
    for _ in range(10):
        _, writer = await asyncio.open_connection("127.0.0.1", port_of(gateway))
        writer.write(head + b"1" * (256 * 1024))
        await writer.drain()
        await asyncio.sleep(0.02)
        writer.close()
    await settle(lambda: len(asyncio.all_tasks()) <= tasks_before)
    assert len(asyncio.all_tasks()) == tasks_before
    assert live_handlers() == handlers_before


@pytest.fixture
def hanging_connect_url() -> Iterator[str]:
    """A loopback address whose connects hang: a listener with a full accept queue."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    fillers = []
    for _ in range(4):
        filler = socket.socket()
        filler.setblocking(False)
        filler.connect_ex(listener.getsockname())
        fillers.append(filler)
    yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    for sock in [*fillers, listener]:
        sock.close()


@pytest.mark.gen_test(timeout=20)
async def test_a_body_read_whole_while_the_upstream_never_connects_leaves_nothing_waiting(
    start_gateway: Callable[..., RunningGateway], hanging_connect_url: str, session_cookie: Callable[..., str]
) -> None:
    """The body fills the upload queue and ends before the connect times out: the handler
    must not wait forever to queue the end of a body nobody will read."""
    gateway = start_gateway(hanging_connect_url, upstream_connect_timeout=0.5)
    await asyncio.sleep(0.05)
    tasks_before, handlers_before = len(asyncio.all_tasks()), live_handlers()
    body = b"b" * (4 * 65536)
    request = (
        f"POST /api/proxy/up HTTP/1.1\r\nHost: x\r\nConnection: close\r\nCookie: {session_cookie()}\r\n"
        f"Content-Type: application/octet-stream\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    status, data = await raw(gateway, request + body)
    assert status == 504 and b'"gateway_timeout"' in data
    await settle(lambda: len(asyncio.all_tasks()) <= tasks_before)
    assert len(asyncio.all_tasks()) == tasks_before
    assert live_handlers() == handlers_before


@pytest.mark.gen_test
@pytest.mark.parametrize(
    ("name", "extra_headers", "body"),
    [
        ("content-length superscript", "Content-Length: \u00b2\r\n", b""),
        ("chunk index superscript", "Cookie: next-auth.session-token.\u00b2=abc\r\n", b""),
        (
            "deeply nested JWE header",
            "Cookie: next-auth.session-token="
            + base64.urlsafe_b64encode(b"[" * 5000).decode().rstrip("=")
            + "..AAAAAAAAAAAAAAAA.AAAA.AAAAAAAAAAAAAAAAAAAAAA\r\n",
            b"",
        ),
    ],
)
async def test_odd_client_input_is_a_4xx_never_a_500(
    name: str, extra_headers: str, body: bytes, gateway: RunningGateway, backend: FakeBackend
) -> None:
    request = f"GET /api/proxy/x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{extra_headers}\r\n".encode("latin-1")
    status, data = await raw(gateway, request + body)
    assert 400 <= status < 500, data[:300]
    assert b"Traceback" not in data


@pytest.mark.gen_test
async def test_deeply_nested_json_is_invalid_json_not_a_500(
    gateway: RunningGateway, backend: FakeBackend, session_cookie: Callable[..., str]
) -> None:
    body = b"[" * 100_000 + b"]" * 100_000
    head = (
        f"POST /api/proxy/x HTTP/1.1\r\nHost: x\r\nConnection: close\r\nCookie: {session_cookie()}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    status, data = await raw(gateway, head + body)
    assert status == 400 and b'"invalid_json"' in data
    assert backend.requests == []


@pytest.mark.gen_test
async def test_a_malformed_request_line_in_tornados_log_withholds_the_cookie(
    gateway: RunningGateway, session_cookie: Callable[..., str], logs: LogCapture
) -> None:
    cookie = session_cookie()
    request = f"GET /api/proxy/x HTTP/1.1\r\nHost: x\r\nCookie: {cookie}; theme=\x01dark\r\n\r\n".encode()
    await raw(gateway, request)
    assert any("Malformed HTTP message" in line for line in logs.lines)  # the event is kept
    assert cookie.split("=", 1)[1] not in logs.text


@pytest.mark.gen_test
async def test_an_interim_1xx_answer_is_not_taken_for_the_final_one(
    start_gateway: Callable[..., RunningGateway], upstreams: Upstreams, fetch: Any, session_cookie: Callable[..., str]
) -> None:
    async def early_hints(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nfinal")
        await writer.drain()

    gateway = start_gateway((await upstreams(early_hints)).url)
    response = await fetch(gateway.url + "/api/proxy/page", headers={"Cookie": session_cookie()})
    assert (response.code, response.body) == (200, b"final")


@pytest.mark.gen_test(timeout=20)
async def test_a_slow_steady_upload_is_not_a_response_timeout(
    start_gateway: Callable[..., RunningGateway], upstreams: Upstreams, session_cookie: Callable[..., str]
) -> None:
    size = 30 * 10_000
    upstream: RawUpstream

    async def answer_after_the_body(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while upstream.bytes_after_head < size:  # noqa: ASYNC110 - polling a counter the fake owns
            await asyncio.sleep(0.01)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()

    upstream = await upstreams(answer_after_the_body)
    gateway = start_gateway(upstream.url, upstream_response_timeout=0.5)
    reader, writer = await asyncio.open_connection("127.0.0.1", port_of(gateway))
    writer.write(
        f"POST /api/proxy/up HTTP/1.1\r\nHost: x\r\nCookie: {session_cookie()}\r\n"
        f"Content-Type: application/octet-stream\r\nContent-Length: {size}\r\n\r\n".encode()
    )
    for _ in range(30):  # 1.5 s in all, three times the response timeout
        writer.write(b"u" * 10_000)
        await writer.drain()
        await asyncio.sleep(0.05)
    status_line = await asyncio.wait_for(reader.readuntil(b"\r\n"), 5)
    writer.close()
    assert status_line.startswith(b"HTTP/1.1 200"), status_line


@pytest.mark.gen_test(timeout=20)
async def test_a_browser_that_stops_reading_does_not_pin_a_stream_past_its_idle_timeout(
    start_gateway: Callable[..., RunningGateway], upstreams: Upstreams, session_cookie: Callable[..., str]
) -> None:
    async def flood_then_silence(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n\r\n")
        for _ in range(512):  # 32 MiB: more than every socket buffer on the way can hold
            writer.write(b"\0" * 65536)
            await writer.drain()
        await asyncio.sleep(30)

    upstream = await upstreams(flood_then_silence)
    gateway = start_gateway(upstream.url, stream_idle_timeout=0.5)
    await asyncio.sleep(0.05)
    tasks_before = len(asyncio.all_tasks())
    browser = socket.socket()
    browser.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    browser.setblocking(False)
    await asyncio.get_running_loop().sock_connect(browser, ("127.0.0.1", port_of(gateway)))
    _, writer = await asyncio.open_connection(sock=browser)
    writer.write(f"GET /api/proxy/big HTTP/1.1\r\nHost: x\r\nCookie: {session_cookie()}\r\n\r\n".encode())
    await asyncio.wait_for(upstream.connected.wait(), 2)
    # The browser reads nothing. Within the idle timeout plus a margin, everything is released.
    await settle(lambda: gateway.ctx.upstream.active_fetches == 0 and len(asyncio.all_tasks()) <= tasks_before, 3)
    writer.close()
    assert gateway.ctx.upstream.active_fetches == 0
    assert upstream.closed.is_set()
    assert len(asyncio.all_tasks()) <= tasks_before


@pytest.mark.gen_test
@pytest.mark.parametrize(
    ("sent", "received"),
    [
        (b"a=1#frag", "a=1%23frag"),  # "#" would start a fragment upstream
        (b"q=%C3%A9&x=a%2Bb&a=1&a=2", "q=%C3%A9&x=a%2Bb&a=1&a=2"),  # already escaped: untouched
    ],
)
async def test_query_bytes_reach_the_backend_as_sent(  # raw UTF-8: tests/test_proxy_paths.py
    sent: bytes, received: str, gateway: RunningGateway, backend: FakeBackend, session_cookie: Callable[..., str]
) -> None:
    request = b"GET /api/proxy/echo?" + sent + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
    status, _ = await raw(gateway, request + f"Cookie: {session_cookie()}\r\n\r\n".encode())
    assert status == 200
    assert backend.requests[0].query == received


@pytest.mark.gen_test(timeout=10)
async def test_a_client_that_stops_sending_a_buffered_body_gets_408_and_is_let_go(
    start_gateway: Callable[..., RunningGateway], backend: FakeBackend, session_cookie: Callable[..., str]
) -> None:
    gateway = start_gateway(backend.url, stream_idle_timeout=0.5)
    await asyncio.sleep(0.05)
    tasks_before, handlers_before = len(asyncio.all_tasks()), live_handlers()
    reader, writer = await asyncio.open_connection("127.0.0.1", port_of(gateway))
    writer.write(
        f"POST /api/proxy/items HTTP/1.1\r\nHost: x\r\nCookie: {session_cookie()}\r\n"
        'Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{"partial": '.encode()
    )
    started = asyncio.get_running_loop().time()
    for _ in range(3):  # progress, slowly: each piece restarts the idle clock
        await asyncio.sleep(0.3)
        writer.write(b" ")
    answer = await asyncio.wait_for(reader.read(), 5)  # then silence: the gateway answers and closes
    writer.close()
    assert answer.startswith(b"HTTP/1.1 408") and b'"request_timeout"' in answer
    assert asyncio.get_running_loop().time() - started > 0.9 + 0.5 - 0.1  # it waited for the slow pieces
    assert backend.requests == []
    await settle(lambda: len(asyncio.all_tasks()) <= tasks_before)
    assert len(asyncio.all_tasks()) == tasks_before
    assert live_handlers() == handlers_before
