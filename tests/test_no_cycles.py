"""A finished request leaves no reference cycle behind: reference counting frees it whole.

Why it matters: the serving process runs the cyclic collector rarely (``ops/gc_tuning.py``),
because a full collection walks every live stream's objects and stalls every stream. That is
only safe while requests leave no cyclic garbage; before this was fixed, each finished stream
left about 15 KiB in cycles (handler <-> relay <-> upstream request, Tornado's request <->
the front door's exchange, llhttp's parser <-> its callbacks, errors whose tracebacks hold the
frames that hold them).

Each test runs real requests through an in-process gatehouse with the collector off, then
collects with ``DEBUG_SAVEALL`` and looks for gatehouse's own objects among the garbage, on
gatehouse's server connection, on Tornado's (``SERVER_IMPL=tornado``) and with metrics on.
(The fakes and the test's client share the process; their own cycles are not gatehouse's and
are not counted.) A failure names one cycle each object was in.
"""

from __future__ import annotations

import asyncio
import gc
import json
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest
from tornado.httpclient import HTTPResponse

from frontdoor.connection import Exchange, ServerConnection
from frontdoor.parser import RequestParser
from handlers.base import BaseHandler
from server import open_metrics
from settings import SupabaseSettings
from tests.conftest import RunningGateway, closed_port, wait_until
from tests.fakes.backend import FakeBackend
from tests.fakes.dify import FakeDify, Stream, message, message_end
from tests.fakes.sse_scripts import RawClient
from tests.fakes.supabase import FakeSupabase
from upstream.body import BodyPipe
from upstream.client import AbortableRequest, _Exchange
from upstream.http1 import Http1Connection
from upstream.relay import Relay

Fetch = Callable[..., Awaitable[HTTPResponse]]
Start = Callable[..., RunningGateway]
USER = "2b1f6a0e-7c3d-4e5f-8a9b-0c1d2e3f4a5b"

GATEHOUSE_TYPES: tuple[type, ...] = (
    ServerConnection,
    Exchange,
    RequestParser,
    BaseHandler,
    Relay,
    AbortableRequest,
    _Exchange,
    Http1Connection,
    BodyPipe,
)


# -- the collector, and where a cycle runs ---------------------------------------------------


def cycle_through(start: object, garbage: list[object]) -> str:
    """One reference cycle through ``start``, as ``Type -> Type -> ...`` (for the failure message)."""
    members = {id(o) for o in garbage}
    came_from: dict[int, object] = {}
    frontier = [start]
    while frontier:
        following = []
        for obj in frontier:
            for ref in gc.get_referents(obj):
                if ref is start:
                    path = [obj]
                    while path[-1] is not start:
                        path.append(came_from[id(path[-1])])
                    return " -> ".join(_name(o) for o in [*reversed(path), start])
                if id(ref) in members and id(ref) not in came_from:
                    came_from[id(ref)] = obj
                    following.append(ref)
        frontier = following
    return f"{_name(start)} (held by a cycle, not in one)"


def _name(obj: object) -> str:
    qualname = getattr(obj, "__qualname__", None)
    return f"{type(obj).__name__}[{qualname}]" if qualname and not isinstance(obj, type) else type(obj).__name__


Cycles = Callable[[RunningGateway], Awaitable[dict[str, str]]]


@pytest.fixture
def collector_off() -> Iterator[Cycles]:
    """The collector is off from here; ``await collector_off(gateway)`` waits until every
    request the gateway took has ended, then returns, for each type of gatehouse object that
    only a collection would have freed, one cycle it was in."""
    gc.collect()
    gc.disable()

    async def cyclic_garbage(gateway: RunningGateway) -> dict[str, str]:
        assert await wait_until(lambda: not gateway.server.busy, 5)
        await asyncio.sleep(0.2)  # the connections' last callbacks
        gc.set_debug(gc.DEBUG_SAVEALL)
        try:
            gc.collect()
            garbage = list(gc.garbage)
        finally:
            gc.set_debug(0)
            gc.garbage.clear()
        found: dict[str, str] = {}
        for obj in garbage:
            if isinstance(obj, GATEHOUSE_TYPES) and type(obj).__qualname__ not in found:
                found[type(obj).__qualname__] = cycle_through(obj, garbage)
        return found

    yield cyclic_garbage
    gc.enable()


# -- gatehouses ----------------------------------------------------------------------------


@pytest.fixture(params=["gatehouse's server connection", "Tornado's server", "metrics on"])
def start(request: pytest.FixtureRequest, start_gateway: Start) -> Start:
    """``start(backend_url, **settings)``: an in-process gatehouse in this test's variant."""

    def start(backend_url: str | None, **overrides: Any) -> RunningGateway:
        if request.param == "Tornado's server":
            overrides["server_impl"] = "tornado"
        metrics = open_metrics(None)[0] if request.param == "metrics on" else None
        return start_gateway(backend_url, metrics=metrics, **overrides)

    return start


def port_of(gateway: RunningGateway) -> int:
    return int(gateway.url.rsplit(":", 1)[1])


# -- the requests ----------------------------------------------------------------------------

CASES: dict[str, tuple[str, dict[str, Any], int]] = {
    "a JSON GET": ("/items?q=1", {}, 200),
    "a JSON POST": ("/items", {"method": "POST", "body": json.dumps({"a": 1})}, 200),
    "an event stream": ("/sse?events=5&interval=0.01", {}, 200),
    "an upstream error status": ("/status/503", {}, 503),
    "a refused path": ("/%2e%2e/admin", {}, 400),
}


@pytest.mark.parametrize("case", CASES)
@pytest.mark.gen_test(timeout=30)
async def test_a_proxied_request_leaves_no_cycles(
    case: str,
    start: Start,
    backend: FakeBackend,
    fetch: Fetch,
    session_cookie: Callable[..., str],
    collector_off: Cycles,
) -> None:
    gateway = start(backend.url)
    path, options, status = CASES[case]
    headers = {"Cookie": session_cookie(), "Content-Type": "application/json"}
    answer = await fetch(f"{gateway.url}/api/proxy{path}", headers=headers, **options)
    assert answer.code == status
    assert await collector_off(gateway) == {}


@pytest.mark.gen_test(timeout=30)
async def test_a_request_without_a_session_leaves_no_cycles(
    start: Start, backend: FakeBackend, fetch: Fetch, collector_off: Cycles
) -> None:
    gateway = start(backend.url)
    assert (await fetch(f"{gateway.url}/api/proxy/items")).code == 401
    assert await collector_off(gateway) == {}


@pytest.mark.gen_test(timeout=30)
async def test_an_unreachable_backend_leaves_no_cycles(
    start: Start, fetch: Fetch, session_cookie: Callable[..., str], collector_off: Cycles
) -> None:
    gateway = start(f"http://127.0.0.1:{closed_port()}")
    answer = await fetch(f"{gateway.url}/api/proxy/items", headers={"Cookie": session_cookie()})
    assert answer.code == 502
    assert await collector_off(gateway) == {}


@pytest.mark.gen_test(timeout=30)
async def test_a_stream_the_browser_leaves_leaves_no_cycles(
    start: Start, backend: FakeBackend, session_cookie: Callable[..., str], collector_off: Cycles
) -> None:
    gateway = start(backend.url)
    client = await RawClient.open(port_of(gateway), "/api/proxy/sse?events=100&interval=0.05", session_cookie())
    await client.read_head()
    assert client.status == 200
    assert await client.read_piece()
    client.close()
    assert await collector_off(gateway) == {}


@pytest.mark.gen_test(timeout=30)
async def test_a_streamed_upload_over_the_limit_leaves_no_cycles(
    start: Start, backend: FakeBackend, session_cookie: Callable[..., str], collector_off: Cycles
) -> None:
    gateway = start(backend.url, max_body_bytes=64 * 1024)
    reader, writer = await asyncio.open_connection("127.0.0.1", port_of(gateway))
    head = (
        "POST /api/proxy/upload HTTP/1.1\r\nHost: g\r\nOrigin: http://g\r\nTransfer-Encoding: chunked\r\n"
        f"Content-Type: application/octet-stream\r\nCookie: {session_cookie()}\r\n\r\n"
    )
    block = b"x" * 16384
    writer.write(head.encode() + b"".join(b"4000\r\n" + block + b"\r\n" for _ in range(8)))
    answer = await reader.readuntil(b"\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 413 ")
    writer.close()
    found = await collector_off(gateway)
    # One cycle is Tornado's own, and is left to the collector: a streamed body cut off fails
    # the request's body future with a StreamClosedError, which RequestHandler._execute raises
    # and catches, so the exception's traceback holds the frame that holds the handler. Only a
    # private attribute (``request._body_future``) could break it. Everything else gatehouse
    # holds for the upload must be in no cycle of its own.
    assert found.pop("ProxyHandler").startswith(
        "ProxyHandler -> dict -> HTTPServerRequest -> Future -> StreamClosedError"
    )
    assert {name: cycle for name, cycle in found.items() if not cycle.endswith("(held by a cycle, not in one)")} == {}


@pytest.mark.parametrize(("refresh_status", "status"), [(401, 401), (503, 502)], ids=["rejected", "failed"])
@pytest.mark.gen_test(timeout=30)
async def test_a_refresh_the_backend_rejects_or_fails_leaves_no_cycles(
    refresh_status: int,
    status: int,
    start: Start,
    backend: FakeBackend,
    fetch: Fetch,
    session_cookie: Callable[..., str],
    collector_off: Cycles,
) -> None:
    gateway = start(backend.url)
    backend.refresh_status = refresh_status
    expired = session_cookie(expires_at=1)
    answers = await asyncio.gather(
        *(fetch(f"{gateway.url}/api/proxy/items", headers={"Cookie": expired}) for _ in range(3))
    )
    assert [a.code for a in answers] == [status] * 3
    assert await collector_off(gateway) == {}


@pytest.mark.parametrize("supabase_status", [200, 503], ids=["verified", "unavailable"])
@pytest.mark.gen_test(timeout=30)
async def test_a_supabase_session_verified_or_not_leaves_no_cycles(
    supabase_status: int,
    start: Start,
    backend: FakeBackend,
    supabase: FakeSupabase,
    supabase_settings: Callable[..., SupabaseSettings],
    fetch: Fetch,
    collector_off: Cycles,
) -> None:
    gateway = start(backend.url, supabase=supabase_settings())
    if supabase_status != 200:
        supabase.status_override = supabase_status
    bearer = {"Authorization": f"Bearer {supabase.mint(USER)}"}
    answers = await asyncio.gather(*(fetch(f"{gateway.url}/api/proxy/items", headers=bearer) for _ in range(3)))
    assert [a.code for a in answers] == ([200] * 3 if supabase_status == 200 else [503] * 3)
    assert await collector_off(gateway) == {}


@pytest.mark.gen_test(timeout=30)
async def test_a_streamed_chat_leaves_no_cycles(
    start: Start,
    dify: FakeDify,
    supabase: FakeSupabase,
    supabase_settings: Callable[..., SupabaseSettings],
    fetch: Fetch,
    collector_off: Cycles,
) -> None:
    gateway = start(None, supabase=supabase_settings(), dify_api_url=dify.url, dify_api_key=dify.api_key)
    dify.script = Stream([message("Hello") + message_end()])
    answer = await fetch(
        f"{gateway.url}/api/chat",
        method="POST",
        body=json.dumps({"message": "hi"}),
        headers={"Authorization": f"Bearer {supabase.mint(USER)}", "Content-Type": "application/json"},
    )
    assert answer.code == 200
    assert b"Hello" in answer.body
    assert await collector_off(gateway) == {}
