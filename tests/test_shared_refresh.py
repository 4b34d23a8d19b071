"""Refresh single flight across processes and instances, through a real redis-server.

Two gatehouses run as separate processes (``python server.py``) against one Redis and the fake
backend, whose refresh tokens work once: any second refresh with the same token is a 401 and
would sign the user out. In-process gatehouses (``start_gateway``) are used where a test reads
what only the process can say (the refresh results reported for metrics). The lock's own
rules (owners, lapsed leases, what a late holder may leave) are tested on `SharedFlight`
itself, each flight with its own link, as two processes have.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.cookies
import json
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from tornado.httpclient import AsyncHTTPClient, HTTPResponse

from auth.nextauth import NextAuthV4Codec
from auth.refresh import RefreshResult
from shared.flight import BUSY, Found, Lease, SharedFlight, lease_for
from shared.redis import UNAVAILABLE, RedisLink
from shared.sealed import Sealer
from tests.conftest import SECRET, LogCapture, RunningGateway, wait_until
from tests.fakes.backend import FakeBackend
from tests.instances import Instance, instances
from tests.redis_server import REDIS_PASSWORD, RedisServer, redis_server, redis_with_password

__all__ = ["instances", "redis_server", "redis_with_password"]  # fixtures used here

NAME = "next-auth.session-token"
Instances = Callable[..., Awaitable[list[Instance]]]


def expired_session(codec: NextAuthV4Codec, refresh_token: str = "rt-0") -> str:
    claims = {"sub": "user-1", "access_token": "at-0", "refresh_token": refresh_token}
    return codec.encode({**claims, "expires_at": int(time.time()) - 10})


def written_cookie(response: HTTPResponse) -> str:
    """The session cookie the answer set, as the browser would send it next."""
    jar: http.cookies.SimpleCookie = http.cookies.SimpleCookie()
    for header in response.headers.get_list("Set-Cookie"):
        jar.load(header)
    return jar[NAME].value


async def get_all(urls: list[str], cookie: str) -> list[HTTPResponse]:
    """GET every URL at once (each on its own connection), with the session cookie."""
    client = AsyncHTTPClient(force_instance=True, max_clients=len(urls) + 4)
    try:
        return await asyncio.gather(
            *(
                client.fetch(url, headers={"Cookie": f"{NAME}={cookie}"}, raise_error=False, request_timeout=30)
                for url in urls
            )
        )
    finally:
        client.close()


@pytest.mark.gen_test(timeout=45)
async def test_two_instances_spend_a_rotating_refresh_token_once_for_100_requests(
    backend: FakeBackend, redis_server: RedisServer, instances: Instances, codec: NextAuthV4Codec
) -> None:
    backend.refresh_delay = lease_for(0.5) + 0.5  # longer than the lock's first lease: it must be renewed
    first, second = await instances(2, BACKEND_URL=backend.url, REDIS_URL=redis_server.url, REDIS_TIMEOUT="0.5")
    cookie = expired_session(codec)

    responses = await get_all([(first, second)[n % 2].url + "/api/proxy/echo" for n in range(100)], cookie)

    assert [r.code for r in responses] == [200] * 100
    assert len(backend.calls("/auth/refresh")) == 1
    echoes = backend.calls("/echo")
    assert len(echoes) == 100
    assert {r.header("Authorization") for r in echoes} == {"Bearer at-1"}
    assert {codec.decode(written_cookie(r))["refresh_token"] for r in responses} == {"rt-1"}

    # The cookie one instance wrote back is a session for the other: no refresh, the new token.
    [again] = await get_all([second.url + "/api/proxy/echo"], written_cookie(responses[0]))
    assert again.code == 200
    assert len(backend.calls("/auth/refresh")) == 1
    assert backend.calls("/echo")[-1].header("Authorization") == "Bearer at-1"

    # Redis holds the result for the grace period, and no lock: its holder released it.
    keys = list(await redis_server.dump())
    assert [k.decode().rsplit(":", 1)[1] for k in keys] == ["result"]


@pytest.mark.gen_test(timeout=20)
async def test_each_request_is_reported_once_as_ok_or_shared_and_a_rejection_is_shared_too(
    backend: FakeBackend,
    redis_server: RedisServer,
    start_gateway: Callable[..., RunningGateway],
    codec: NextAuthV4Codec,
) -> None:
    """Two gatehouses in this process, each with its own Redis link: what a metrics counter
    would count, and a rejected token never tried twice."""
    gateways = [start_gateway(backend.url, redis_url=redis_server.url) for _ in range(2)]
    results: list[list[RefreshResult]] = [[], []]
    for gateway, seen in zip(gateways, results, strict=True):
        assert gateway.ctx.backend is not None
        gateway.ctx.backend.refresher.on_result = seen.append
    backend.refresh_delay = 0.3

    responses = await get_all([g.url + "/api/proxy/echo" for g in gateways for _ in range(5)], expired_session(codec))
    assert [r.code for r in responses] == [200] * 10
    assert len(backend.calls("/auth/refresh")) == 1
    assert sorted(results[0] + results[1]) == ["ok"] + ["shared"] * 9
    assert {g.ctx.backend.refresher.calls for g in gateways if g.ctx.backend} == {0, 1}

    for seen in results:
        seen.clear()
    revoked = expired_session(codec, refresh_token="rt-revoked")
    rejected = await get_all([g.url + "/api/proxy/echo" for g in gateways for _ in range(3)], revoked)
    assert [r.code for r in rejected] == [401] * 6
    assert {json.loads(r.body)["error"] for r in rejected} == {"session_expired"}
    assert [json.loads(r.body)["refresh_token"] for r in backend.calls("/auth/refresh")[1:]] == ["rt-revoked"]
    assert results[0] + results[1] == ["rejected"] * 6
    late = await get_all([gateways[1].url + "/api/proxy/echo"], revoked)  # within the grace period
    assert late[0].code == 401
    assert len(backend.calls("/auth/refresh")) == 2


@pytest.mark.gen_test(timeout=20)
async def test_a_holder_overtaken_after_its_lease_lapsed_signs_nobody_out_later(
    backend: FakeBackend,
    redis_server: RedisServer,
    start_gateway: Callable[..., RunningGateway],
    codec: NextAuthV4Codec,
) -> None:
    """Gatehouse A refreshes; its lock vanishes mid-call (its lease lapsed, as for a stalled
    process: here Redis is told to drop it); gatehouse B takes the lock and refreshes the same
    token. A's call spends the token and B's is refused, which B's own request cannot escape.
    Requests that come later with the old cookie get A's new tokens, not a 401."""
    backend.refresh_delay = 1.0
    first, second = (start_gateway(backend.url, redis_url=redis_server.url) for _ in range(2))
    cookie = expired_session(codec)
    client = redis_server.client()

    holding = asyncio.ensure_future(get_all([first.url + "/api/proxy/echo"], cookie))
    assert await wait_until(lambda: len(backend.calls("/auth/refresh")) == 1, 5.0)
    assert await client.delete(*[key async for key in client.scan_iter(match="*:lock")]) == 1
    [overtaking] = await get_all([second.url + "/api/proxy/echo"], cookie)
    [held] = await holding
    assert (held.code, overtaking.code) == (200, 401)  # the token was spent twice: A first

    [late] = await get_all([second.url + "/api/proxy/echo"], cookie)  # nothing of it in B's memory
    assert late.code == 200, late.body
    assert backend.calls("/echo")[-1].header("Authorization") == "Bearer at-1"
    assert len(backend.calls("/auth/refresh")) == 2
    await client.aclose()


def _contains(haystack: str, secret: str) -> bool:
    """Whether ``secret`` appears in ``haystack`` as a whole token (the fake backend's tokens
    are short, ``at-1``: they must not match inside longer words)."""
    return re.search(rf"(?<![\w-]){re.escape(secret)}(?![\w-])", haystack) is not None


@pytest.mark.gen_test(timeout=30)
async def test_no_redis_key_value_or_log_line_holds_a_token_cookie_or_secret(
    backend: FakeBackend, redis_with_password: RedisServer, instances: Instances, codec: NextAuthV4Codec
) -> None:
    redis = redis_with_password
    backend.refresh_delay = 0.3
    backend.refresh_tokens |= {"rt-during-outage"}
    first, second = await instances(2, BACKEND_URL=backend.url, REDIS_URL=redis.url, REDIS_TIMEOUT="0.5")
    cookie = expired_session(codec)
    revoked = expired_session(codec, refresh_token="rt-revoked-7d2a")

    ok = await get_all([first.url + "/api/proxy/echo", second.url + "/api/proxy/echo"], cookie)
    assert [r.code for r in ok] == [200, 200]
    refused = await get_all([first.url + "/api/proxy/echo", second.url + "/api/proxy/echo"], revoked)
    assert [r.code for r in refused] == [401, 401]
    stored = await redis.dump()
    assert len(stored) == 2  # a result and a rejection, nothing else

    redis.stop()  # the outage is logged: nothing of the URL in that line either
    outage_cookie = expired_session(codec, refresh_token="rt-during-outage")
    [during] = await get_all([first.url + "/api/proxy/echo"], outage_cookie)
    assert during.code == 200  # refreshed by the process alone
    await asyncio.gather(first.stop(), second.stop())

    written = [written_cookie(r) for r in (*ok, during)]
    secrets = [SECRET, REDIS_PASSWORD, cookie, revoked, outage_cookie, *written]
    tokens = ["rt-0", "rt-1", "at-1", "rt-revoked-7d2a", "rt-during-outage", "at-2", "rt-2"]
    assert [r.header("Authorization") for r in backend.calls("/echo")][-1] == "Bearer at-2"
    logs = first.log_text() + second.log_text()
    assert "redis unavailable" in logs
    redis_text = "\n".join(
        part.decode("latin-1") for key, values in stored.items() for part in (key, *values) if part is not None
    )
    for secret in secrets:
        assert secret not in logs
        assert secret not in redis_text
    for token in tokens:
        assert not _contains(logs, token), token
        assert not _contains(redis_text, token), token
    assert first.records() and all("redis://" not in json.dumps(r) for r in first.records() + second.records())


@pytest.mark.gen_test(timeout=10)
async def test_a_lock_holder_cancelled_while_it_lets_go_still_releases_the_lock(redis_server: RedisServer) -> None:
    """A cancelled release must not leave the lock held (redis-py #3847): the release runs in a
    task of its own, which a second cancellation of the holder does not stop. The link has no
    open connection at that moment (as after a Redis restart), so the release must connect
    first, and the second cancellation lands while it does, before anything was sent. (Once the
    command is sent, Redis runs it whoever waits for the answer.) The lease is long, so only a
    release can free the lock within the test."""
    link = RedisLink(redis_server.url, timeout=0.5)
    flight = SharedFlight(link, SECRET, "refresh", lease=30.0)
    try:
        lease = await flight.claim(flight.keys("rt-cancelled"))
        assert isinstance(lease, Lease)
        entered = asyncio.Event()

        async def holder() -> None:
            async with lease:
                entered.set()
                await asyncio.sleep(30)

        task = asyncio.ensure_future(holder())
        await entered.wait()
        await link.client.connection_pool.disconnect()
        task.cancel()  # leaves the `async with`: the release starts...
        await asyncio.sleep(0)
        task.cancel()  # ...and the holder is cancelled again while it waits for it
        with pytest.raises(asyncio.CancelledError):
            await task
        await link.wait_detached()  # the release's own task ends meanwhile
        assert await redis_server.dump() == {}  # no lock left: a new claimant would get it at once
    finally:
        await link.close()


@contextlib.asynccontextmanager
async def flights(redis: RedisServer, *leases: float) -> AsyncIterator[list[SharedFlight]]:
    """One `SharedFlight` per lease, each on a Redis link of its own, as processes have."""
    links = [RedisLink(redis.url, 0.5) for _ in leases]
    try:
        yield [SharedFlight(link, SECRET, "refresh", lease=lease) for link, lease in zip(links, leases, strict=True)]
    finally:
        for link in links:
            await link.close()


SUCCESS = b'{"access_token":"at-1"}'
REJECTED = b'{"rejected":true}'


async def lapsed_then_taken(first: SharedFlight, second: SharedFlight, token: str) -> tuple[Lease, Lease]:
    """``first`` takes ``token``'s lock and lets its (short) lease lapse, unrenewed, as a holder
    stalled past its lease does; ``second`` then takes the lock."""
    early = await first.claim(first.keys(token))
    assert isinstance(early, Lease)
    await asyncio.sleep(first.lease + 0.2)
    late = await second.claim(second.keys(token))
    assert isinstance(late, Lease), late
    return early, late


async def found(flight: SharedFlight, token: str) -> bytes | None:
    """What a waiter finds for ``token`` now: the result's value, or None while the lock is held."""
    claim = await flight.claim(flight.keys(token))
    if claim is BUSY:
        return None
    assert isinstance(claim, Found), claim
    return claim.value


@pytest.mark.gen_test(timeout=15)
async def test_a_rejection_never_replaces_a_success_and_a_lapsed_holder_leaves_no_rejection(
    redis_server: RedisServer,
) -> None:
    """A's lease lapses mid-refresh; B takes the lock and refreshes with the same token. Whoever
    the backend refuses (the token was spent by the other), waiters must end up with the success:
    a rejection left for them would sign out everyone carrying the old cookie."""
    async with flights(redis_server, 0.3, 30.0, 30.0) as (a, b, waiter):
        # The review's scenario: A succeeds and leaves its tokens, then B is refused.
        lapsed, holder = await lapsed_then_taken(a, b, "rt-a-first")
        await lapsed.finish(SUCCESS, 30)
        await holder.fail(REJECTED, 30)
        assert await found(waiter, "rt-a-first") == SUCCESS

        # B succeeds, A's late call is refused: A no longer holds the lock and leaves nothing,
        # so waiters keep waiting for B instead of taking a rejection.
        lapsed, holder = await lapsed_then_taken(a, b, "rt-b-first")
        await lapsed.fail(REJECTED, 30)
        assert await found(waiter, "rt-b-first") is None
        await holder.finish(SUCCESS, 30)
        assert await found(waiter, "rt-b-first") == SUCCESS

        # B, the holder, is refused first and leaves the rejection; A's success then replaces it.
        lapsed, holder = await lapsed_then_taken(a, b, "rt-success-last")
        await holder.fail(REJECTED, 30)
        assert await found(waiter, "rt-success-last") == REJECTED
        await lapsed.finish(SUCCESS, 30)
        assert await found(waiter, "rt-success-last") == SUCCESS


@pytest.mark.gen_test(timeout=15)
async def test_only_the_owner_renews_or_releases_a_lock(redis_server: RedisServer) -> None:
    """After A's lease lapsed and B took the lock, nothing A does touches B's lock: not its
    renewal (with A's short lease), not its release, not its finish."""
    client = redis_server.client()
    async with flights(redis_server, 0.3, 30.0, 30.0) as (a, b, waiter):
        for token in ("rt-release", "rt-finish"):
            lapsed, holder = await lapsed_then_taken(a, b, token)
            lock, _ = b.keys(token)
            owner = await client.get(lock)
            if token == "rt-release":
                assert await lapsed.renew() is False
                async with lapsed:  # leaving it releases A's hold
                    pass
            else:
                await lapsed.finish(SUCCESS, 30)
            assert await client.get(lock) == owner  # still B's...
            assert await client.pttl(lock) > 20_000  # ...with B's lease, not A's 0.3 s
            assert await holder.renew() is True
            async with holder:  # B lets go: now the lock is free
                pass
            assert await client.exists(lock) == 0
        assert isinstance(await waiter.claim(waiter.keys("rt-release")), Lease)  # free: a new claimant takes it
    await client.aclose()


@pytest.mark.gen_test(timeout=15)
async def test_a_holder_keeps_its_lock_through_a_redis_stall(redis_server: RedisServer) -> None:
    """Two renewals in a row time out (Redis hangs) and put the holder's link in its back-off;
    the next renewal is tried anyway, sooner than the usual third of the lease, and keeps a lock
    that would otherwise have lapsed. No health check runs meanwhile (a long interval), so only
    the renewals' own way past the back-off can save it."""
    holder_link = RedisLink(redis_server.url, 0.2, check_interval=60.0)
    failed: list[str] = []
    holder_link.on_error = failed.append
    loop = asyncio.get_running_loop()
    async with flights(redis_server, 30.0) as (other,):
        try:
            holder = SharedFlight(holder_link, SECRET, "refresh")
            assert holder.lease == lease_for(0.2) == 2.0
            lease = await holder.claim(holder.keys("rt-stall"))
            assert isinstance(lease, Lease)
            expires = loop.time() + holder.lease
            async with lease:
                redis_server.freeze()
                try:  # two renewals time out: with the usual interval only, the second would end past the lease
                    assert await wait_until(lambda: len(failed) >= 2, holder.lease), failed
                finally:
                    redis_server.thaw()
                assert loop.time() < expires
                assert holder_link.status == "unavailable"
                await asyncio.sleep(expires + 0.5 - loop.time())  # past the lease the claim gave
                assert holder_link.status == "unavailable"  # no health check has ended the back-off
                assert await other.claim(other.keys("rt-stall")) is BUSY  # a renewal kept it
        finally:
            await holder_link.close()


@pytest.mark.gen_test(timeout=20)
async def test_waiting_on_another_process_refresh_ends_at_upstream_response_timeout(
    backend: FakeBackend,
    redis_server: RedisServer,
    start_gateway: Callable[..., RunningGateway],
    codec: NextAuthV4Codec,
) -> None:
    """Another process holds the token's lock and never finishes: a request waits at most
    UPSTREAM_RESPONSE_TIMEOUT for it, then answers 502 with the session kept; it never spends
    the token itself, nor reaches the backend."""
    gateway = start_gateway(backend.url, redis_url=redis_server.url, upstream_response_timeout=1.0)
    async with flights(redis_server, 30.0) as (flight,):
        lock, _ = flight.keys("rt-0")
    client = redis_server.client()
    await client.set(lock, "another-process", px=60_000)

    started = time.monotonic()
    [response] = await get_all([gateway.url + "/api/proxy/echo"], expired_session(codec))
    waited = time.monotonic() - started

    assert response.code == 502 and json.loads(response.body)["error"] == "bad_gateway"
    assert 1.0 <= waited < 1.0 + 3.0, waited
    assert "Set-Cookie" not in response.headers  # the session is kept
    assert backend.calls("/auth/refresh") == [] and backend.calls("/echo") == []
    assert await client.get(lock) == b"another-process"
    await client.aclose()


@pytest.mark.gen_test(timeout=10)
async def test_a_result_another_secret_sealed_is_not_used_and_warned_about_once(
    redis_server: RedisServer, logs: LogCapture
) -> None:
    async with flights(redis_server, 30.0) as (flight,):
        _, result = flight.keys("rt-0")
        client = redis_server.client()
        await client.set(result, Sealer("another secret, not this one", "refresh").seal(SUCCESS, result), px=60_000)
        assert await flight.claim(flight.keys("rt-0")) is UNAVAILABLE  # the caller refreshes alone
        assert await flight.claim(flight.keys("rt-0")) is UNAVAILABLE
        await client.aclose()
    warnings = [r["message"] for r in logs.records("gatehouse.redis")]
    assert warnings == ["a shared result did not open: this process refreshes alone"]


@pytest.mark.gen_test(timeout=10)
async def test_closing_the_link_lets_a_pending_release_end_and_connects_no_more(redis_server: RedisServer) -> None:
    """At shutdown a holder is cancelled and its release starts in a task of its own; closing
    the link lets that release end first, then nothing reconnects to Redis."""
    link = RedisLink(redis_server.url, timeout=0.5)
    flight = SharedFlight(link, SECRET, "refresh", lease=30.0)
    entered = asyncio.Event()

    async def holder() -> None:
        lease = await flight.claim(flight.keys("rt-shutdown"))
        assert isinstance(lease, Lease)
        async with lease:
            entered.set()
            await asyncio.sleep(30)

    task = asyncio.ensure_future(holder())
    await entered.wait()
    task.cancel()
    await asyncio.sleep(0)  # the holder leaves its `async with`: its release starts, in a task of its own
    await link.close()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await flight.claim(flight.keys("rt-late")) is UNAVAILABLE  # a call after close: no connection
    await asyncio.sleep(0.2)  # time for anything left over to reconnect, were it to
    assert await redis_server.dump() == {}  # the release ran before the close
    client = redis_server.client()
    assert len(await client.client_list()) == 1  # this client's own connection only
    await client.aclose()
