"""Bodies on routes that take none, or little (issue 11, defect 4).

Before, every route that does not stream its body (``/healthz``, ``/readyz``, unknown paths,
``/api/auth/*``) had Tornado buffer it up to ``MAX_BODY_BYTES`` (100 MiB) before answering, and a
stalled one was never timed out: an unauthenticated client could make gatehouse hold 100 MiB per
request. Now each route reads at most its own limit (`NO_BODY_LIMIT`, or ``MAX_JSON_BYTES`` for
login and logout): 413 at once when ``Content-Length`` is over it, or as soon as a chunked body
passes it, and 408 when a body stops arriving.

The clients here are raw sockets: they send a request head, then as much of the body as the
gateway will take, and measure when the answer comes.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import time
from collections.abc import Callable
from typing import Any

import pytest

from handlers.base import NO_BODY_LIMIT
from tests.conftest import RunningGateway
from tests.fakes.backend import FakeBackend
from tests.test_proxy_bodies import port_of

MIB = 1024 * 1024
JSON_LIMIT = 512 * 1024  # MAX_JSON_BYTES here: login and logout read up to it
BLOCK = b"{" * (256 * 1024)
# (method, path) for every route that reads its body whole, with the limit it reads up to.
NO_BODY_ROUTES = [
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("POST", "/no/such/route"),
    ("GET", "/api/nothing"),
    ("GET", "/api/auth/session"),
]
JSON_ROUTES = [("POST", "/api/auth/login"), ("POST", "/api/auth/logout")]


@dataclasses.dataclass
class Outcome:
    status: int | None  # None: the connection ended (or was reset) with no answer read
    body: bytes
    seconds: float  # from the request head to the answer's status line, or to the connection's end
    sent: int  # body bytes the client managed to send before the answer


def rss() -> int:
    with open(f"/proc/{os.getpid()}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


async def offer_body(port: int, method: str, path: str, size: int, *, expect: bool = False) -> Outcome:
    """Offer a ``size``-byte body with its ``Content-Length``. With ``expect``, as curl does for
    large uploads: ``Expect: 100-continue``, and no byte of the body before the gateway says
    so. Without it, the body is sent as fast as the gateway takes it, until it answers."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = [f"{method} {path} HTTP/1.1", "Host: g", "Origin: http://g", f"Content-Length: {size}"]
    writer.write(("\r\n".join([*head, "Expect: 100-continue"] if expect else head) + "\r\n\r\n").encode())
    started = time.monotonic()
    sent = 0

    async def send() -> None:
        nonlocal sent
        while sent < size:
            writer.write(BLOCK[: size - sent])
            await writer.drain()
            sent += min(len(BLOCK), size - sent)

    sender = None if expect else asyncio.ensure_future(send())
    try:
        return await read_answer(reader, started, lambda: sent)
    finally:
        if sender is not None:
            sender.cancel()
        writer.close()


async def send_chunked_past(port: int, method: str, path: str, size: int) -> Outcome:
    """``size`` bytes as a chunked body in 16 KiB chunks, the last one left open (no CRLF, no
    last-chunk): once the gateway refuses it has nothing left unread, so its answer is never
    lost to a reset."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = f"{method} {path} HTTP/1.1\r\nHost: g\r\nOrigin: http://g\r\nTransfer-Encoding: chunked\r\n\r\n"
    chunks = [BLOCK[:16384]] * (size // 16384) + [BLOCK[: size % 16384]]
    framed = b"\r\n".join(f"{len(c):x}\r\n".encode() + c for c in chunks if c)
    started = time.monotonic()
    writer.write(head.encode() + framed)
    try:
        return await read_answer(reader, started, lambda: size)
    finally:
        writer.close()


async def read_answer(reader: asyncio.StreamReader, started: float, sent: Callable[[], int]) -> Outcome:
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
    except (asyncio.IncompleteReadError, ConnectionError):
        return Outcome(None, b"", time.monotonic() - started, sent())
    seconds = time.monotonic() - started
    length = next(int(line[15:]) for line in head.lower().split(b"\r\n") if line.startswith(b"content-length:"))
    try:
        body = await reader.readexactly(length)
    except (asyncio.IncompleteReadError, ConnectionError):
        body = b""
    return Outcome(int(head.split(b" ")[1]), body, seconds, sent())


def assert_refused(outcome: Outcome, status: int, code: str) -> None:
    assert outcome.status == status, outcome
    answer = json.loads(outcome.body)
    assert answer["error"] == code and answer["message"]


@pytest.fixture
def gateway_with_login(backend: FakeBackend, start_gateway: Callable[..., RunningGateway]) -> RunningGateway:
    return start_gateway(backend.url, max_json_bytes=JSON_LIMIT, stream_idle_timeout=0.5)


@pytest.mark.gen_test(timeout=60)
async def test_many_100mib_bodies_are_refused_at_once_and_never_held(
    gateway_with_login: RunningGateway, backend: FakeBackend
) -> None:
    """28 requests at once, each declaring 100 MiB: half wait for ``100 Continue`` as curl does
    and get their 413 without sending a byte; half send regardless, and are answered and cut
    off long before their body's end (the seconds allow for a loaded machine; before the fix
    each took until its whole 100 MiB had been read). Those read their 413 too: the server
    connection lingers, dropping what still arrives, instead of closing into a reset (Tornado's
    server closes at once: with SERVER_IMPL=tornado such a client may see a reset instead)."""
    port = port_of(gateway_with_login.url)
    routes = NO_BODY_ROUTES + JSON_ROUTES
    before = rss()
    waiting, sending = await asyncio.gather(
        asyncio.gather(*(offer_body(port, m, p, 100 * MIB, expect=True) for m, p in routes * 2)),
        asyncio.gather(*(offer_body(port, m, p, 100 * MIB) for m, p in routes * 2)),
    )
    grown = rss() - before
    for outcome in waiting:
        assert_refused(outcome, 413, "payload_too_large")
        assert outcome.seconds < 5.0 and outcome.sent == 0, outcome
    for outcome in sending:
        assert_refused(outcome, 413, "payload_too_large")
        assert outcome.seconds < 5.0, outcome
        assert outcome.sent < 16 * MIB, "the gateway stopped reading long before the body's end"
    assert grown < 32 * MIB, f"RSS grew by {grown / MIB:.1f} MiB (the clients' buffers included)"
    assert backend.requests == []


@pytest.mark.parametrize(("method", "path"), NO_BODY_ROUTES + JSON_ROUTES)
@pytest.mark.gen_test(timeout=60)
async def test_a_chunked_body_is_refused_as_soon_as_it_passes_the_limit(
    method: str, path: str, gateway_with_login: RunningGateway, backend: FakeBackend
) -> None:
    limit = JSON_LIMIT if (method, path) in JSON_ROUTES else NO_BODY_LIMIT
    outcome = await send_chunked_past(port_of(gateway_with_login.url), method, path, limit + 1)
    assert_refused(outcome, 413, "payload_too_large")
    assert f"({limit} bytes)" in json.loads(outcome.body)["message"]
    assert outcome.seconds < 5.0, outcome
    assert backend.requests == []


@pytest.mark.parametrize(("method", "path"), NO_BODY_ROUTES + JSON_ROUTES)
@pytest.mark.gen_test(timeout=30)
async def test_a_body_that_stops_arriving_is_408(
    method: str, path: str, gateway_with_login: RunningGateway, backend: FakeBackend
) -> None:
    """``STREAM_IDLE_TIMEOUT`` is 0.5 s here: 100 of 1,000 declared bytes arrive, then nothing."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port_of(gateway_with_login.url))
    head = f"{method} {path} HTTP/1.1\r\nHost: g\r\nOrigin: http://g\r\nContent-Length: 1000\r\n\r\n"
    writer.write(head.encode() + b"{" * 100)
    started = time.monotonic()
    answer = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    assert 0.4 < time.monotonic() - started < 3
    status_line, _, rest = answer.partition(b"\r\n")
    assert status_line.split(b" ")[1] == b"408"
    assert json.loads(rest.partition(b"\r\n\r\n")[2])["error"] == "request_timeout"
    assert backend.requests == []


@pytest.mark.gen_test
async def test_small_bodies_on_routes_that_take_none_are_read_and_the_connection_kept(
    gateway: RunningGateway, fetch: Any
) -> None:
    """Up to the limit a body is drained, not refused: the answer is the route's own, and a
    keep-alive connection carries the next request."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port_of(gateway.url))
    body = b"z" * NO_BODY_LIMIT
    for path, status in (("/healthz", b"200"), ("/no/such/route", b"404"), ("/readyz", b"200")):
        writer.write(f"GET {path} HTTP/1.1\r\nHost: g\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.split(b" ")[1] == status, head
        length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        await reader.readexactly(length)
    writer.close()


@pytest.mark.gen_test
async def test_login_reads_credentials_up_to_the_json_limit(
    gateway_with_login: RunningGateway, backend: FakeBackend, fetch: Any
) -> None:
    """Control for the limits above: a body of exactly ``MAX_JSON_BYTES`` reaches the backend's
    login whole (which refuses the padded credentials)."""
    credentials = {"username": "ada", "password": "correct horse", "pad": ""}
    pad = JSON_LIMIT - len(json.dumps(credentials))
    body = json.dumps({**credentials, "pad": "p" * pad}).encode()
    assert len(body) == JSON_LIMIT
    response = await fetch(
        gateway_with_login.url + "/api/auth/login",
        method="POST",
        body=body,
        headers={"Content-Type": "application/json", "Origin": gateway_with_login.url},
    )
    assert response.code == 401 and json.loads(response.body)["error"] == "invalid_credentials"
    assert backend.calls("/auth/login")[-1].body_size == JSON_LIMIT


@pytest.mark.gen_test
async def test_a_body_that_has_arrived_is_not_timed_out_while_the_route_works(
    backend: FakeBackend, start_gateway: Callable[..., RunningGateway], fetch: Any, session_cookie: Callable[..., str]
) -> None:
    """The stall watch ends when the body is whole, read or not: logout drops its body and
    then waits on the backend for longer than ``STREAM_IDLE_TIMEOUT``."""
    gateway = start_gateway(backend.url, stream_idle_timeout=0.3, auth_logout_path="/slow?delay=1")
    response = await fetch(
        gateway.url + "/api/auth/logout",
        method="POST",
        body=b"{}",
        headers={"Content-Type": "application/json", "Origin": gateway.url, "Cookie": session_cookie()},
    )
    assert response.code == 200, response.body
    assert json.loads(response.body) == {"signed_out": True}
    assert [r.path for r in backend.requests] == ["/slow"]


@pytest.mark.gen_test
async def test_an_answer_before_the_body_is_read_says_the_connection_closes(gateway: RunningGateway) -> None:
    """Tornado closes a connection whose request it has not read to the end; the answer says so."""
    for head in (
        "GET /api/auth/login HTTP/1.1\r\nHost: g\r\n\r\n",  # 405 before the (empty) body is read
        "POST /api/auth/session HTTP/1.1\r\nHost: g\r\nContent-Length: 5\r\n\r\nhello",
        "GET /healthz HTTP/1.1\r\nHost: g\r\nContent-Length: x\r\n\r\n",
    ):
        reader, writer = await asyncio.open_connection("127.0.0.1", port_of(gateway.url))
        writer.write(head.encode())
        answer = await asyncio.wait_for(reader.read(), 5)  # read() returns once the gateway closes
        writer.close()
        assert b"\r\nConnection: close\r\n" in answer.partition(b"\r\n\r\n")[0] + b"\r\n", answer
