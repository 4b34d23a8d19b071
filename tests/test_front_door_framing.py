"""Strict framing at the front door (issue 12), raw bytes against both server implementations:
gatehouse's own connection (``frontdoor/``, the default) and Tornado's ``HTTPServer``
(``SERVER_IMPL=tornado``).

A gateway that two parsers read differently can be smuggled through. Each request here is one a
parser could frame two ways; each is refused with 400 (431 for an oversized head) and the
connection closed, and nothing refused reaches the backend. Where Tornado's server is more
lenient, the case is marked as a known fault of that implementation (``xfail(strict=True)``: it
fails the suite the day Tornado stops being lenient, so the mark cannot go stale). Gatehouse's
connection is never more lenient than Tornado's: every case runs on both.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable
from typing import Any

import pytest

from tests.conftest import RunningGateway
from tests.fakes.backend import FakeBackend
from tests.test_proxy_bodies import port_of

IMPLS = ["gatehouse", "tornado"]
HOST = b"Host: gatehouse\r\n"


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    request: bytes
    status: int = 400
    tornado_fault: str = ""  # why Tornado's server gets this wrong, when it does


def post(headers: bytes, body: bytes = b"") -> bytes:
    return b"POST /api/proxy/echo HTTP/1.1\r\n" + HOST + headers + b"\r\n" + body


CASES = [
    Case("CL and TE", post(b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n", b"0\r\n\r\n")),
    Case("two different CLs", post(b"Content-Length: 3\r\nContent-Length: 4\r\n", b"abcd")),
    Case("the same CL twice", post(b"Content-Length: 3\r\nContent-Length: 3\r\n", b"abc")),
    Case("a non-numeric CL", post(b"Content-Length: 3a\r\n", b"abc")),
    Case("a signed CL", post(b"Content-Length: +3\r\n", b"abc")),
    Case("a CL past 2**64", post(b"Content-Length: 99999999999999999999999\r\n")),
    Case("TE gzip", post(b"Transfer-Encoding: gzip\r\n", b"abc")),
    Case("TE chunked twice", post(b"Transfer-Encoding: chunked, chunked\r\n", b"0\r\n\r\n")),
    Case("TE in two fields", post(b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n", b"0\r\n\r\n")),
    Case("TE padded", post(b"Transfer-Encoding: chunked \r\n", b"0\r\n\r\n"), tornado_fault="strips the padding"),
    Case("TE obs-folded", post(b"Transfer-Encoding:\r\n chunked\r\n", b"0\r\n\r\n")),
    Case("a folded header", post(b"X-A: 1\r\n 2\r\nContent-Length: 0\r\n")),
    Case("a bad chunk size", post(b"Transfer-Encoding: chunked\r\n", b"zz\r\nab\r\n0\r\n\r\n")),
    Case("a chunk size overflow", post(b"Transfer-Encoding: chunked\r\n", b"1" * 20 + b"\r\nab\r\n0\r\n\r\n")),
    Case(
        "an over-long chunk extension",
        post(b"Transfer-Encoding: chunked\r\n", b"2;" + b"x" * 70_000 + b"\r\nab\r\n0\r\n\r\n"),
        tornado_fault="closes with no answer",
    ),
    Case("a bare CR in a header", b"GET /api/proxy/echo HTTP/1.1\r\n" + HOST + b"X-A: 1\r2\r\n\r\n"),
    Case("a NUL in a header", b"GET /api/proxy/echo HTTP/1.1\r\n" + HOST + b"X-A: 1\x002\r\n\r\n"),
    Case("a header name with a space", b"GET /api/proxy/echo HTTP/1.1\r\n" + HOST + b"X A: 1\r\n\r\n"),
    Case("a space before the colon", b"GET /api/proxy/echo HTTP/1.1\r\n" + HOST + b"X-A : 1\r\n\r\n"),
    Case("bare LF line ends", b"GET /api/proxy/echo HTTP/1.1\n" + b"Host: gatehouse\n\n", tornado_fault="takes LF"),
    Case(
        "an absolute-form target",
        b"GET http://evil.example/api/proxy/echo HTTP/1.1\r\n" + HOST + b"\r\n",
        tornado_fault="routes it as a path (404)",
    ),
    Case("an asterisk target", b"OPTIONS * HTTP/1.1\r\n" + HOST + b"\r\n", tornado_fault="answers 405"),
    Case("CONNECT", b"CONNECT evil.example:443 HTTP/1.1\r\n" + HOST + b"\r\n", tornado_fault="answers 405"),
    Case(
        "an upgrade",
        b"GET /api/proxy/echo HTTP/1.1\r\n" + HOST + b"Connection: Upgrade\r\nUpgrade: x\r\n\r\n",
        tornado_fault="serves it as a plain request",
    ),
    Case("HTTP/2.0 in a request line", b"GET /api/proxy/echo HTTP/2.0\r\n" + HOST + b"\r\n"),
    Case("HTTP/0.9 in a request line", b"GET /api/proxy/echo HTTP/0.9\r\n" + HOST + b"\r\n"),
    Case("chunked trailers", post(b"Transfer-Encoding: chunked\r\n", b"2\r\nab\r\n0\r\nX-Evil: 1\r\n\r\n")),
    Case(
        "too many headers",
        b"GET /api/proxy/echo HTTP/1.1\r\n" + HOST + b"".join(b"X-%d: 1\r\n" % i for i in range(101)) + b"\r\n",
        431,
        tornado_fault="has no count limit",
    ),
    Case(
        "an oversized head",
        b"GET /api/proxy/echo HTTP/1.1\r\n" + HOST + b"X-Big: " + b"a" * 70_000 + b"\r\n\r\n",
        431,
        tornado_fault="closes with no answer",
    ),
]


@dataclasses.dataclass
class Seen:
    answers: list[bytes]  # each answer's status line
    closed: bool


async def exchange(gateway: RunningGateway, request: bytes) -> Seen:
    """Send ``request`` in one write; read what comes back until the gateway closes (5 s)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port_of(gateway.url))
    writer.write(request)
    data, closed = b"", False
    try:
        while True:
            chunk = await asyncio.wait_for(reader.read(65536), 5)
            if not chunk:
                closed = True
                break
            data += chunk
    except ConnectionError:
        closed = True  # reset: closed all the same
    except TimeoutError:
        closed = False
    finally:
        writer.close()
    lines = [line for line in data.split(b"\r\n") if line.startswith(b"HTTP/1.1 ")]
    return Seen([line for line in lines if not line.startswith(b"HTTP/1.1 100")], closed)


@pytest.fixture(params=IMPLS)
def front_door(
    request: pytest.FixtureRequest, backend: FakeBackend, start_gateway: Callable[..., RunningGateway]
) -> RunningGateway:
    return start_gateway(backend.url, server_impl=request.param)


def params() -> list[Any]:
    out = []
    for impl in IMPLS:
        for case in CASES:
            marks = []
            if impl == "tornado" and case.tornado_fault:
                marks.append(pytest.mark.xfail(reason=f"Tornado's server {case.tornado_fault}", strict=True))
            out.append(pytest.param(impl, case, id=f"{impl}-{case.name}", marks=marks))
    return out


@pytest.mark.parametrize(("impl", "case"), params())
@pytest.mark.gen_test
async def test_a_request_two_parsers_could_frame_differently_is_refused(
    impl: str,
    case: Case,
    backend: FakeBackend,
    start_gateway: Callable[..., RunningGateway],
    session_cookie: Callable[..., str],
) -> None:
    gateway = start_gateway(backend.url, server_impl=impl)
    cookie = f"Cookie: {session_cookie()}\r\n".encode()
    request = case.request.replace(HOST, HOST + cookie, 1)
    seen = await exchange(gateway, request)
    assert seen.answers and seen.answers[0].split(b" ")[1] == str(case.status).encode(), seen
    assert seen.closed, "a refused request closes its connection"
    await asyncio.sleep(0.05)
    assert backend.requests == [], "nothing refused reaches the backend"


CLOSING_FIRSTS = [
    pytest.param(b"GET /api/proxy/pub/first HTTP/1.1\r\nHost: h\r\nConnection: close\r\n%s\r\n", id="connection-close"),
    pytest.param(b"GET /api/proxy/pub/first HTTP/1.0\r\nHost: h\r\n%s\r\n", id="http-1.0"),
    pytest.param(b"POST /api/proxy/pub/first HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\n", id="answered-unread"),
]


@pytest.mark.parametrize("first", CLOSING_FIRSTS)
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.gen_test
async def test_nothing_after_a_closing_answer_is_processed(
    impl: str,
    first: bytes,
    backend: FakeBackend,
    start_gateway: Callable[..., RunningGateway],
    session_cookie: Callable[..., str],
    request: pytest.FixtureRequest,
) -> None:
    """RFC 9112 9.6: a request that arrives after one whose answer closes the connection is
    never processed. The third case is answered before its body is read (401: no session)."""
    if impl == "tornado":
        request.applymarker(pytest.mark.xfail(reason="Tornado's server forwards the second request", strict=True))
    gateway = start_gateway(backend.url, server_impl=impl)
    cookie = f"Cookie: {session_cookie()}\r\n".encode()
    unauthenticated = b"POST" in first
    head = first % cookie if not unauthenticated else first
    second = b"GET /api/proxy/pub/second HTTP/1.1\r\nHost: h\r\n" + cookie + b"\r\n"
    seen = await exchange(gateway, head + (b"hello" if unauthenticated else b"") + second)
    assert len(seen.answers) == 1 and seen.closed, seen
    await asyncio.sleep(0.1)
    assert [r.path for r in backend.requests] == ([] if unauthenticated else ["/pub/first"])


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.gen_test
async def test_pipelined_requests_are_answered_in_order(
    impl: str, backend: FakeBackend, start_gateway: Callable[..., RunningGateway], session_cookie: Callable[..., str]
) -> None:
    gateway = start_gateway(backend.url, server_impl=impl)
    cookie = f"Cookie: {session_cookie()}\r\n".encode()
    requests = (
        b"".join(
            b"GET /api/proxy/slow?delay=%s HTTP/1.1\r\nHost: h\r\n%s\r\n" % (delay, cookie)
            for delay in (b"0.2", b"0", b"0.1")
        )
        + b"GET /healthz HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"
    )
    reader, writer = await asyncio.open_connection("127.0.0.1", port_of(gateway.url))
    writer.write(requests)
    data = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    assert data.count(b"HTTP/1.1 200 OK") == 4
    assert [r.query for r in backend.requests] == ["delay=0.2", "delay=0", "delay=0.1"]
    assert data.rindex(b'{"slow": true}') < data.index(b'{"status":"ok"}')
