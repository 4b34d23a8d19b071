"""A finished request leaves no reference cycle behind: reference counting frees it whole.

Why it matters: the serving process runs the cyclic collector rarely (``ops/gc_tuning.py``),
because a full collection walks every live stream's objects and stalls every stream. That is
only safe while requests leave no cyclic garbage; before this was fixed, each finished stream
left about 15 KiB in cycles (handler <-> relay <-> upstream request, Tornado's request <->
the front door's exchange, llhttp's parser <-> its callbacks).

Each test runs real requests through an in-process gatehouse with the collector off, then
collects with ``DEBUG_SAVEALL`` and looks for gatehouse's own objects among the garbage. (The
fakes and the test's client share the process; their own cycles are not gatehouse's and are
not counted.)
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
from tests.conftest import RunningGateway, wait_until
from tests.fakes.dify import FakeDify, Stream, message, message_end
from tests.fakes.sse_scripts import RawClient
from tests.fakes.supabase import FakeSupabase
from upstream.client import AbortableRequest
from upstream.http1 import Http1Connection
from upstream.relay import Relay

Fetch = Callable[..., Awaitable[HTTPResponse]]
USER = "2b1f6a0e-7c3d-4e5f-8a9b-0c1d2e3f4a5b"

GATEHOUSE_TYPES: tuple[type, ...] = (
    ServerConnection,
    Exchange,
    RequestParser,
    BaseHandler,
    Relay,
    AbortableRequest,
    Http1Connection,
)


def cycle_through(start: object, garbage: list[object]) -> str:
    """One reference cycle through ``start``, as ``Type -> Type -> ...`` (for the failure message)."""
    members = {id(o) for o in garbage}
    came_from: dict[int, object | None] = {id(start): None}
    frontier = [start]
    while frontier:
        following = []
        for obj in frontier:
            for ref in gc.get_referents(obj):
                if ref is start:
                    path = [obj]
                    while (previous := came_from[id(path[-1])]) is not None:
                        path.append(previous)
                    return " -> ".join(_name(o) for o in [start, *reversed(path[:-1]), path[-1], start][1:])
                if id(ref) in members and id(ref) not in came_from:
                    came_from[id(ref)] = obj
                    following.append(ref)
        frontier = following
    return f"{_name(start)} (held by a cycle, not in one)"


def _name(obj: object) -> str:
    qualname = getattr(obj, "__qualname__", None)
    return f"{type(obj).__name__}[{qualname}]" if qualname and not isinstance(obj, type) else type(obj).__name__


@pytest.fixture
def collector_off() -> Iterator[Callable[[], dict[str, str]]]:
    """The collector is off from here; the callable returns, for each type of gatehouse object
    that only a collection would have freed, one cycle it was in."""
    gc.collect()
    gc.disable()

    def cyclic_garbage() -> dict[str, str]:
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


def port_of(gateway: RunningGateway) -> int:
    return int(gateway.url.rsplit(":", 1)[1])


async def settled(gateway: RunningGateway) -> None:
    """Every request the gateway took has ended, and its connections have closed."""
    assert await wait_until(lambda: not gateway.server.busy, 5)
    await asyncio.sleep(0.2)


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
    gateway: RunningGateway,
    fetch: Fetch,
    session_cookie: Callable[..., str],
    collector_off: Callable[[], Any],
) -> None:
    path, options, status = CASES[case]
    headers = {"Cookie": session_cookie(), "Content-Type": "application/json"}
    answer = await fetch(f"{gateway.url}/api/proxy{path}", headers=headers, **options)
    assert answer.code == status
    await settled(gateway)
    assert collector_off() == {}


@pytest.mark.gen_test(timeout=30)
async def test_a_request_without_a_session_leaves_no_cycles(
    gateway: RunningGateway, fetch: Fetch, collector_off: Callable[[], Any]
) -> None:
    assert (await fetch(f"{gateway.url}/api/proxy/items")).code == 401
    await settled(gateway)
    assert collector_off() == {}


@pytest.mark.gen_test(timeout=30)
async def test_a_stream_the_browser_leaves_leaves_no_cycles(
    gateway: RunningGateway, session_cookie: Callable[..., str], collector_off: Callable[[], Any]
) -> None:
    client = await RawClient.open(port_of(gateway), "/api/proxy/sse?events=100&interval=0.05", session_cookie())
    await client.read_head()
    assert client.status == 200
    assert await client.read_piece()
    client.close()
    await settled(gateway)
    assert collector_off() == {}


@pytest.mark.gen_test(timeout=30)
async def test_a_streamed_chat_leaves_no_cycles(
    chat_gateway: RunningGateway,
    dify: FakeDify,
    supabase: FakeSupabase,
    fetch: Fetch,
    collector_off: Callable[[], Any],
) -> None:
    dify.script = Stream([message("Hello") + message_end()])
    answer = await fetch(
        f"{chat_gateway.url}/api/chat",
        method="POST",
        body=json.dumps({"message": "hi"}),
        headers={"Authorization": f"Bearer {supabase.mint(USER)}", "Content-Type": "application/json"},
    )
    assert answer.code == 200
    assert b"Hello" in answer.body
    await settled(chat_gateway)
    assert collector_off() == {}
