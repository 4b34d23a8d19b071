"""Redis hung, then stopped, then started again under two gatehouses that share it.

What docs/operations.md promises for an outage: no request waits on Redis longer than
``REDIS_TIMEOUT``; refresh and the chat's rate limit fall back to each process's own state (so
each process allows a user its own limit); the status reads ``unavailable``, then ``ok``; one
log line when Redis goes and one when it is back, per process, not one per request; and sharing
resumes by itself once Redis answers. The two gatehouses run in this process (each with its
own Redis link, as two instances have) so the test can read their status and error hooks.
Also: a Redis that answers with errors (``OOM``) is not an outage, and the health check outlives
any error.

Timing bounds leave room for a loaded 2-core machine (``SLACK``) and count the requests that paid
a Redis timeout rather than expect every other one to be fast.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from tornado.httpclient import AsyncHTTPClient, HTTPResponse

from auth.nextauth import NextAuthV4Codec
from settings import SupabaseSettings
from shared.redis import RedisLink
from tests.conftest import LogCapture, RunningGateway, wait_until
from tests.fakes.backend import FakeBackend
from tests.fakes.dify import FakeDify, Stream, message_end
from tests.fakes.supabase import FakeSupabase
from tests.instances import Instance, instances
from tests.redis_server import RedisServer, redis_server

__all__ = ["instances", "redis_server"]  # fixtures used here

REDIS_TIMEOUT = 0.5
SLACK = 1.5  # what a request may take besides its wait on Redis, on a loaded machine
RATE = 4  # chats per user per minute
CHAT_BODY = json.dumps({"message": "hi", "stream": False})
Instances = Callable[..., Awaitable[list[Instance]]]


class Timed:
    """A client that remembers how long each request took."""

    def __init__(self) -> None:
        self.client = AsyncHTTPClient(force_instance=True, max_clients=50)
        self.durations: list[float] = []

    async def fetch(self, url: str, **kwargs: Any) -> HTTPResponse:
        started = time.monotonic()
        response = await self.client.fetch(url, raise_error=False, request_timeout=20, **kwargs)
        self.durations.append(time.monotonic() - started)
        return response

    async def chat(self, url: str, token: str) -> int:
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        response = await self.fetch(url + "/api/chat", method="POST", headers=headers, body=CHAT_BODY)
        return response.code

    async def chats(self, urls: list[str], token: str, count: int) -> list[int]:
        """``count`` chats one after the other, alternating between the gatehouses at ``urls``."""
        return [await self.chat(urls[n % len(urls)], token) for n in range(count)]

    async def refresh(self, gateways: list[RunningGateway], cookie: str) -> list[HTTPResponse]:
        """Three requests to each gateway at once, with a session that needs a refresh."""
        headers = {"Cookie": f"next-auth.session-token={cookie}"}
        urls = [g.url + "/api/proxy/echo" for g in gateways for _ in range(3)]
        return await asyncio.gather(*(self.fetch(url, headers=headers) for url in urls))


async def readyz(gateway: RunningGateway) -> tuple[int, Any]:
    response = await AsyncHTTPClient().fetch(gateway.url + "/readyz", raise_error=False)
    return response.code, json.loads(response.body)


async def wait_until_ready(url: str, redis: str, seconds: float = 5.0) -> bool:
    """Poll ``url``'s ``/readyz`` until its ``redis`` field says ``redis``, for ``seconds`` at most."""
    deadline = time.monotonic() + seconds
    while True:
        response = await AsyncHTTPClient().fetch(url + "/readyz", raise_error=False)
        if response.code == 200 and json.loads(response.body).get("redis") == redis:
            return True
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.1)


def expired(codec: NextAuthV4Codec, refresh_token: str) -> str:
    claims = {"sub": "user-1", "access_token": "at-0", "refresh_token": refresh_token}
    return codec.encode({**claims, "expires_at": int(time.time()) - 10})


@pytest.mark.gen_test(timeout=40)
async def test_redis_hung_then_stopped_then_back(
    backend: FakeBackend,
    dify: FakeDify,
    supabase: FakeSupabase,
    supabase_settings: Callable[..., SupabaseSettings],
    redis_server: RedisServer,
    start_gateway: Callable[..., RunningGateway],
    codec: NextAuthV4Codec,
    logs: LogCapture,
) -> None:
    dify.default_script = Stream([message_end()])
    backend.refresh_delay = 0.2
    backend.refresh_tokens |= {"rt-before", "rt-during", "rt-after"}
    gateways = [
        start_gateway(
            backend.url,
            supabase=supabase_settings(),
            dify_api_url=dify.url,
            dify_api_key=dify.api_key,
            chat_rate_per_minute=RATE,
            redis_url=redis_server.url,
            redis_timeout=REDIS_TIMEOUT,
        )
        for _ in range(2)
    ]
    first = gateways[0]
    urls = [g.url for g in gateways]
    errors: list[str] = []
    for gateway in gateways:
        assert gateway.ctx.redis is not None
        gateway.ctx.redis.on_error = errors.append

    def statuses() -> list[str | None]:
        return [g.ctx.redis_status for g in gateways]

    timed = Timed()
    # Shared: one limit over both, one refresh for both.
    assert await timed.chats(urls, supabase.mint("user-a"), RATE + 1) == [200] * RATE + [429]
    assert [r.code for r in await timed.refresh(gateways, expired(codec, "rt-before"))] == [200] * 6
    assert len(backend.calls("/auth/refresh")) == 1
    assert statuses() == ["ok", "ok"] and errors == []
    assert await readyz(first) == (200, {"status": "ready", "demo": False, "redis": "ok"})

    # Hung: every wait on Redis ends at REDIS_TIMEOUT; the first request on each link pays it,
    # the next ones skip Redis (back-off). Each process refreshes and limits on its own.
    redis_server.freeze()
    backend.refresh_delay = 0.0  # only the wait on Redis counts below
    timed.durations.clear()
    during = await timed.fetch(
        first.url + "/api/proxy/echo", headers={"Cookie": f"next-auth.session-token={expired(codec, 'rt-during')}"}
    )
    assert during.code == 200
    assert [r.header("Authorization") for r in backend.calls("/echo")][-1] == "Bearer at-2"
    codes = await timed.chats(urls, supabase.mint("user-b"), 2 * RATE + 2)
    assert codes == [200] * 2 * RATE + [429, 429]  # each process allows the user its own limit
    assert max(timed.durations) < REDIS_TIMEOUT + SLACK, timed.durations
    # The first call on each link pays the timeout; without the back-off, all 11 would.
    paid = [d for d in timed.durations if d >= 0.9 * REDIS_TIMEOUT]
    assert len(paid) <= 2 + 1, timed.durations  # one more for a request slowed by the machine
    assert statuses() == ["unavailable", "unavailable"]

    # Stopped: refused at once, or skipped; still no request fails beyond the documented fallback.
    await redis_server.astop()
    assert await timed.chats(urls, supabase.mint("user-c"), 2) == [200, 200]
    await asyncio.sleep(1.2)  # a health check or two fail meanwhile: still one log line
    assert statuses() == ["unavailable", "unavailable"]
    # Still ready: the load balancer must not take every instance out because Redis is down.
    assert await readyz(first) == (200, {"status": "ready", "demo": False, "redis": "unavailable"})

    # Back (an empty Redis on the same port): both links notice by themselves, sharing resumes.
    await redis_server.astart()
    assert await wait_until(lambda: statuses() == ["ok", "ok"], 5.0), statuses()
    assert (await readyz(first))[1]["redis"] == "ok"
    assert await timed.chats(urls, supabase.mint("user-d"), RATE + 1) == [200] * RATE + [429]
    backend.refresh_delay = 0.2
    after = await timed.refresh(gateways, expired(codec, "rt-after"))
    assert [r.code for r in after] == [200] * 6
    assert len(backend.calls("/auth/refresh")) == 3  # before, during (one process), after

    lines = [(r["message"].split(":")[0], r.get("op"), r.get("error")) for r in logs.records("gatehouse.redis")]
    went = [line for line in lines if line[0] == "redis unavailable"]
    back = [line for line in lines if line[0] == "redis available again"]
    assert (len(went), len(back), len(lines)) == (2, 2, 4), lines
    assert {error for _, _, error in went} <= {"TimeoutError", "ConnectionError"}
    assert errors and set(errors) <= {"rate_limit", "refresh_lock", "refresh_result", "ping"}
    assert "redis://" not in logs.text


@pytest.mark.gen_test(timeout=40)
async def test_redis_killed_and_restarted_under_traffic_to_two_instances(
    backend: FakeBackend,
    dify: FakeDify,
    supabase: FakeSupabase,
    redis_server: RedisServer,
    instances: Instances,
    codec: NextAuthV4Codec,
) -> None:
    """Two gatehouse processes serve chats and refreshes without a pause while Redis is killed
    mid-run and started again: every request succeeds in time, each process logs the outage
    once and the recovery once, and the shared limit holds again afterwards."""
    dify.default_script = Stream([message_end()])
    pair = await instances(
        2,
        BACKEND_URL=backend.url,
        DIFY_API_KEY=dify.api_key,
        DIFY_API_URL=dify.url,
        SUPABASE_URL=supabase.url,
        CHAT_RATE_PER_MINUTE=str(RATE),
        REDIS_URL=redis_server.url,
        REDIS_TIMEOUT=str(REDIS_TIMEOUT),
    )
    timed = Timed()
    failures: list[int] = []
    stop = asyncio.Event()
    users = itertools.count()

    async def client(n: int) -> None:
        """A new user and a new session (whose refresh token works once) each time round."""
        instance = pair[n % 2]
        while not stop.is_set():
            user = next(users)
            backend.refresh_tokens.add(f"rt-traffic-{user}")
            headers = {"Authorization": f"Bearer {supabase.mint(f'user-{user}')}", "Content-Type": "application/json"}
            chat = await timed.fetch(instance.url + "/api/chat", method="POST", headers=headers, body=CHAT_BODY)
            cookie = {"Cookie": f"next-auth.session-token={expired(codec, f'rt-traffic-{user}')}"}
            proxied = await timed.fetch(instance.url + "/api/proxy/echo", headers=cookie)
            failures.extend(r.code for r in (chat, proxied) if r.code != 200)
            await asyncio.sleep(0.02)

    traffic = [asyncio.ensure_future(client(n)) for n in range(4)]
    await asyncio.sleep(0.5)
    await redis_server.astop()
    await asyncio.sleep(1.5)
    await redis_server.astart()
    await asyncio.sleep(2.0)  # a health check has seen it back
    stop.set()
    await asyncio.gather(*traffic)

    assert failures == []
    assert len(timed.durations) > 40
    assert max(timed.durations) < REDIS_TIMEOUT + SLACK, max(timed.durations)
    slow = [d for d in timed.durations if d > REDIS_TIMEOUT]  # a refused Redis costs nothing
    assert len(slow) <= len(timed.durations) // 10, slow
    for instance in pair:  # both links back before the shared limit is checked again
        assert await wait_until_ready(instance.url, "ok"), instance.url
    assert await timed.chats([i.url for i in pair], supabase.mint("user-final"), RATE + 1) == [200] * RATE + [429]
    for instance in pair:
        messages = [r["message"].split(":")[0] for r in instance.records() if r.get("logger") == "gatehouse.redis"]
        assert messages == ["redis unavailable", "redis available again"], messages


@pytest.mark.gen_test(timeout=40)
async def test_redis_answering_errors_is_not_an_outage(
    backend: FakeBackend,
    dify: FakeDify,
    supabase: FakeSupabase,
    supabase_settings: Callable[..., SupabaseSettings],
    redis_server: RedisServer,
    start_gateway: Callable[..., RunningGateway],
    codec: NextAuthV4Codec,
    logs: LogCapture,
) -> None:
    """Redis at ``maxmemory`` with ``noeviction`` answers ``OOM`` to every script (they write),
    while ``PING`` still answers. Each such call falls back on its own and is counted; the link
    stays ``ok`` (no back-off: the next call tries Redis again), ``/readyz`` says ``ok`` all along,
    and each process logs one warning per operation: not a line per call, nor an "unavailable" /
    "available again" pair every second. Sharing is back the moment Redis accepts writes."""
    dify.default_script = Stream([message_end()])
    gateways = [
        start_gateway(
            backend.url,
            supabase=supabase_settings(),
            dify_api_url=dify.url,
            dify_api_key=dify.api_key,
            chat_rate_per_minute=RATE,
            redis_url=redis_server.url,
            redis_timeout=REDIS_TIMEOUT,
        )
        for _ in range(2)
    ]
    urls = [g.url for g in gateways]
    errors: list[str] = []
    for gateway in gateways:
        assert gateway.ctx.redis is not None
        gateway.ctx.redis.on_error = errors.append
    raw = redis_server.client()
    await raw.config_set("maxmemory-policy", "noeviction")
    await raw.config_set("maxmemory", 1)

    timed = Timed()
    codes: list[int] = []
    ready: list[tuple[int, Any]] = []
    rounds = 0
    ends = time.monotonic() + 2.5  # more than two health checks per link
    while time.monotonic() < ends:
        gateway = gateways[rounds % 2]
        backend.refresh_tokens.add(f"rt-oom-{rounds}")
        codes.append(await timed.chat(gateway.url, supabase.mint(f"user-oom-{rounds}")))
        cookie = {"Cookie": f"next-auth.session-token={expired(codec, f'rt-oom-{rounds}')}"}
        codes.append((await timed.fetch(gateway.url + "/api/proxy/echo", headers=cookie)).code)
        ready.append(await readyz(gateway))
        rounds += 1

    assert codes == [200] * 2 * rounds  # each served by the process alone
    assert ready == [(200, {"status": "ready", "demo": False, "redis": "ok"})] * rounds
    assert [g.ctx.redis_status for g in gateways] == ["ok", "ok"]
    assert errors == ["rate_limit", "refresh_lock"] * rounds  # each call counted, no health check failed
    lines = [(r["message"].split(":")[0], r.get("op"), r.get("error")) for r in logs.records("gatehouse.redis")]
    per_process = [("redis answered with an error", op, "OutOfMemoryError") for op in ("rate_limit", "refresh_lock")]
    assert sorted(lines) == sorted(per_process * 2), lines

    await raw.config_set("maxmemory", 0)  # writes accepted again: shared at once, no health check needed
    assert await timed.chats(urls, supabase.mint("user-after"), RATE + 1) == [200] * RATE + [429]
    await raw.aclose()


@pytest.mark.gen_test(timeout=20)
async def test_the_health_check_outlives_an_unexpected_error(redis_server: RedisServer, logs: LogCapture) -> None:
    """A fault inside a health check (here the error hook, a metrics callback, raising) must not
    end the checks: the link went down with it and would stay down for good, sharing never
    resuming. It is logged once, by type only, and the checks go on."""
    link = RedisLink(redis_server.url, 0.2, check_interval=0.1)
    hook_calls: list[str] = []

    def broken_hook(op: str) -> None:
        hook_calls.append(op)
        raise RuntimeError("a bug in a metrics callback")

    link.on_error = broken_hook
    try:
        assert link.status == "ok"
        await redis_server.astop()
        assert await wait_until(lambda: len(hook_calls) >= 3, 5.0), hook_calls  # three checks failed, each raising
        assert await wait_until(lambda: link.status == "unavailable", 1.0)
        await redis_server.astart()
        assert await wait_until(lambda: link.status == "ok", 5.0)
    finally:
        await link.close()
    faults = [r for r in logs.records("gatehouse.redis") if r["message"].startswith("redis health check failed")]
    assert [(r["op"], r["error"]) for r in faults] == [("ping", "RuntimeError")]
    assert "a bug in a metrics callback" not in logs.text
