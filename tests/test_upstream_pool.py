"""Upstream keep-alive (``upstream/pool.py``): connections are reused only when that is safe.

Every test goes through a real gateway to a scripted keep-alive upstream
(``tests/fakes/keepalive.py``) that numbers its connections, so each asserts both what the
browser got and which connection each request travelled on.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from tests.conftest import RunningGateway, wait_until
from tests.fakes.keepalive import Answer, Seen, ok

Fetch = Callable[..., Awaitable[Any]]


def numbered(seen: Seen) -> Answer:
    """Answers each request with its path and the connection it came on."""
    return Answer(ok(json.dumps({"path": seen.path, "connection": seen.connection}).encode()))


async def get(fetch: Fetch, gateway: RunningGateway, cookie: str, path: str, **kwargs: Any) -> Any:
    return await fetch(f"{gateway.url}/api/proxy/{path}", headers={"Cookie": cookie}, **kwargs)


@pytest.mark.gen_test(timeout=10)
async def test_sequential_requests_share_one_upstream_connection(
    keepalive: Any, start_gateway: Any, fetch: Fetch, session_cookie: Any
) -> None:
    upstream = await keepalive(numbered)
    gateway = start_gateway(upstream.url)
    cookie = session_cookie()

    bodies = [json.loads((await get(fetch, gateway, cookie, f"item/{n}")).body) for n in range(5)]

    assert [b["path"] for b in bodies] == [f"/item/{n}" for n in range(5)]  # each got its own answer
    assert {b["connection"] for b in bodies} == {1}
    assert upstream.connections == 1
    assert all(s.headers["connection"] == "keep-alive" for s in upstream.seen)
    assert gateway.ctx.upstream.idle_connections == 1


@pytest.mark.parametrize(
    "answer",
    [
        pytest.param(lambda s: Answer(ok(b"{}", "Connection: close"), close=True), id="connection-close"),
        pytest.param(lambda s: Answer(ok(b"{}", version="HTTP/1.0"), close=True), id="http-1.0"),
        pytest.param(
            lambda s: Answer(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n{}", close=True),
            id="close-delimited-body",
        ),
    ],
)
@pytest.mark.gen_test(timeout=10)
async def test_a_connection_the_answer_ends_is_not_reused(
    answer: Callable[[Seen], Answer], keepalive: Any, start_gateway: Any, fetch: Fetch, session_cookie: Any
) -> None:
    upstream = await keepalive(answer)
    gateway = start_gateway(upstream.url)
    cookie = session_cookie()

    for _ in range(3):
        response = await get(fetch, gateway, cookie, "x")
        assert response.code == 200 and response.body == b"{}"

    assert [s.connection for s in upstream.seen] == [1, 2, 3]
    assert gateway.ctx.upstream.idle_connections == 0


@pytest.mark.gen_test(timeout=10)
async def test_bytes_after_an_answer_never_answer_the_next_request(
    keepalive: Any, start_gateway: Any, fetch: Fetch, session_cookie: Any
) -> None:
    """An upstream that sends more than its Content-Length is out of step: reusing its
    connection would hand one user's next request the leftover bytes as an answer."""

    def answer(seen: Seen) -> Answer:
        smuggled = ok(b'{"smuggled": true}')
        return Answer(ok(json.dumps({"path": seen.path}).encode()) + smuggled)

    upstream = await keepalive(answer)
    gateway = start_gateway(upstream.url)
    cookie = session_cookie()

    first = await get(fetch, gateway, cookie, "first")
    await asyncio.sleep(0.05)  # the stray bytes have arrived
    second = await get(fetch, gateway, cookie, "second")

    assert json.loads(first.body) == {"path": "/first"}
    assert json.loads(second.body) == {"path": "/second"}
    assert [s.connection for s in upstream.seen] == [1, 2]


@pytest.mark.gen_test(timeout=10)
async def test_a_connection_the_upstream_closed_while_idle_is_not_used(
    keepalive: Any, start_gateway: Any, fetch: Fetch, session_cookie: Any
) -> None:
    def answer(seen: Seen) -> Answer:
        return Answer(numbered(seen).data, close_after=0.05)  # a short idle timeout upstream

    upstream = await keepalive(answer)
    gateway = start_gateway(upstream.url)
    cookie = session_cookie()

    assert (await get(fetch, gateway, cookie, "a")).code == 200
    assert await wait_until(lambda: upstream.closed_connections == 1, 2)
    response = await get(fetch, gateway, cookie, "b")

    assert response.code == 200 and json.loads(response.body) == {"path": "/b", "connection": 2}
    assert len(upstream.seen) == 2  # nothing was sent on the dead connection


@pytest.mark.gen_test(timeout=10)
async def test_a_get_is_resent_once_when_its_reused_connection_dies(
    keepalive: Any, start_gateway: Any, fetch: Fetch, session_cookie: Any
) -> None:
    """The race no check can rule out: the upstream closes an idle connection just as the
    next request goes out on it. A GET is safe to send again, on a fresh connection."""

    def answer(seen: Seen) -> Answer:
        if seen.connection == 1 and len(upstream.seen) > 1:
            return Answer(close=True)  # read the request, closed without answering
        return numbered(seen)

    upstream = await keepalive(answer)
    gateway = start_gateway(upstream.url)
    cookie = session_cookie()

    assert (await get(fetch, gateway, cookie, "warm")).code == 200
    response = await get(fetch, gateway, cookie, "again")

    assert response.code == 200 and json.loads(response.body) == {"path": "/again", "connection": 2}
    assert [(s.path, s.connection) for s in upstream.seen] == [("/warm", 1), ("/again", 1), ("/again", 2)]


@pytest.mark.gen_test(timeout=10)
async def test_a_request_resent_on_a_fresh_connection_fails_cleanly_if_that_fails_too(
    keepalive: Any, start_gateway: Any, fetch: Fetch, session_cookie: Any
) -> None:
    def answer(seen: Seen) -> Answer:
        return numbered(seen) if len(upstream.seen) == 1 else Answer(close=True)

    upstream = await keepalive(answer)
    gateway = start_gateway(upstream.url)
    cookie = session_cookie()

    assert (await get(fetch, gateway, cookie, "warm")).code == 200
    response = await get(fetch, gateway, cookie, "again")

    assert response.code == 502 and json.loads(response.body)["error"] == "bad_gateway"
    assert [s.connection for s in upstream.seen] == [1, 1, 2]  # resent once, not more


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE"])
@pytest.mark.gen_test(timeout=10)
async def test_other_requests_connect_afresh_and_are_never_resent(
    method: str, keepalive: Any, start_gateway: Any, fetch: Fetch, session_cookie: Any
) -> None:
    """A write could be applied twice if it were resent after a connection died, so it never
    rides a pooled connection; its own connection is pooled once its answer is complete."""

    def answer(seen: Seen) -> Answer:
        if seen.method == method and seen.path == "/fails":
            return Answer(close=True)
        return numbered(seen)

    upstream = await keepalive(answer)
    gateway = start_gateway(upstream.url)
    cookie = session_cookie()
    body_args: dict[str, Any] = {"body": b'{"n": 1}', "headers": {"Cookie": cookie, "Content-Type": "application/json"}}

    assert (await get(fetch, gateway, cookie, "warm")).code == 200
    written = await fetch(f"{gateway.url}/api/proxy/write", method=method, **body_args)
    after = await get(fetch, gateway, cookie, "after")
    failed = await fetch(f"{gateway.url}/api/proxy/fails", method=method, **body_args)

    assert written.code == 200 and json.loads(written.body)["connection"] == 2
    assert json.loads(after.body)["connection"] in (1, 2)  # a pooled one
    assert failed.code == 502
    assert [(s.method, s.path) for s in upstream.seen].count((method, "/fails")) == 1
    assert upstream.seen[-1].connection == 3


@pytest.mark.gen_test(timeout=10)
async def test_idle_connections_are_bounded_and_expire(
    keepalive: Any, start_gateway: Any, fetch: Fetch, session_cookie: Any
) -> None:
    def answer(seen: Seen) -> Answer:
        return Answer(numbered(seen).data, delay=0.2)  # the five overlap

    upstream = await keepalive(answer)
    gateway = start_gateway(upstream.url, upstream_keepalive_connections=2, upstream_keepalive_seconds=0.5)
    cookie = session_cookie()

    # Five at once need five connections; two stay for later, three are closed.
    responses = await asyncio.gather(*(get(fetch, gateway, cookie, f"p{n}") for n in range(5)))
    assert all(r.code == 200 for r in responses)
    assert upstream.connections == 5
    assert await wait_until(lambda: upstream.open_connections == 2, 2)
    assert gateway.ctx.upstream.idle_connections == 2

    # Past the idle time the pooled connections are closed, with no request to notice them.
    assert await wait_until(lambda: upstream.open_connections == 0, 2)
    assert gateway.ctx.upstream.idle_connections == 0
    response = await get(fetch, gateway, cookie, "late")
    assert json.loads(response.body)["connection"] == 6


@pytest.mark.gen_test(timeout=10)
async def test_keepalive_can_be_turned_off(
    keepalive: Any, start_gateway: Any, fetch: Fetch, session_cookie: Any
) -> None:
    upstream = await keepalive(numbered)
    gateway = start_gateway(upstream.url, upstream_keepalive_connections=0)
    cookie = session_cookie()

    for _ in range(3):
        assert (await get(fetch, gateway, cookie, "x")).code == 200

    assert [s.connection for s in upstream.seen] == [1, 2, 3]
    assert await wait_until(lambda: upstream.open_connections == 0, 2)


@pytest.mark.gen_test(timeout=10)
async def test_a_stream_the_browser_left_is_closed_not_pooled(
    keepalive: Any, start_gateway: Any, session_cookie: Any
) -> None:
    def answer(seen: Seen) -> Answer:
        if seen.path == "/stream":  # chunked, never ends on its own
            return Answer(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
        return numbered(seen)

    upstream = await keepalive(answer)
    gateway = start_gateway(upstream.url)
    cookie = session_cookie()
    port = int(gateway.url.rsplit(":", 1)[1])

    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET /api/proxy/stream HTTP/1.1\r\nHost: x\r\nCookie: {cookie}\r\n\r\n".encode())
    await reader.readuntil(b"\r\n\r\n")
    writer.close()

    assert await wait_until(lambda: upstream.open_connections == 0, 2)
    assert gateway.ctx.upstream.idle_connections == 0
