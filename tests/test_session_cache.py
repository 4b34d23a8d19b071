"""The cache of decrypted sessions (auth/session_cache.py), through a real gatehouse.

Each test counts the codecs' real ``decode`` calls (`decodes`) and checks what the browser and
the backend see, so a cache that is not used, or that answers differently from decoding afresh,
fails. Times are real: tokens are minted to expire moments from now, as tests/test_refresh.py
and tests/test_supabase_auth.py do.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import http.cookies
import json
import time
import urllib.parse
from collections.abc import Callable
from typing import Any

import pytest
from tornado.httpclient import HTTPResponse
from tornado.httputil import HTTPHeaders

from auth.authjs import AuthJsV5Codec
from auth.jose import CLOCK_TOLERANCE, InvalidToken
from auth.nextauth import NextAuthV4Codec
from auth.session import SessionReader
from auth.session_cache import DEFAULT_MAX_ENTRIES, SessionCache
from tests.conftest import ACCESS_TOKEN, INTEROP, RunningGateway
from tests.fakes.backend import FakeBackend

Fetch = Callable[..., Any]
Start = Callable[..., RunningGateway]
Counts = collections.Counter[str]
V4_NAME = "next-auth.session-token"
V5_NAME = "authjs.session-token"
V5 = INTEROP["authjs_v5"]


@pytest.fixture
def decodes(monkeypatch: pytest.MonkeyPatch) -> Counts:
    """How often each codec's real ``decode`` ran, successful or not."""
    counts: Counts = collections.Counter()
    for codec in (NextAuthV4Codec, AuthJsV5Codec):
        original = codec.decode

        def counting(self: Any, token: str, now: float | None = None, *, _o: Any = original, _c: Any = codec) -> Any:
            counts[_c.__name__] += 1
            return _o(self, token, now)

        monkeypatch.setattr(codec, "decode", counting)
    return counts


def reader(gateway: RunningGateway) -> SessionReader:
    assert gateway.ctx.backend is not None
    return gateway.ctx.backend.sessions


def cache(gateway: RunningGateway) -> SessionCache:
    found = reader(gateway).cache
    assert found is not None, "the session cache is on by default"
    return found


def v4_token(codec: NextAuthV4Codec, **claims: Any) -> str:
    base = {"sub": "user-1", "access_token": ACCESS_TOKEN, "refresh_token": "rt-0"}
    return codec.encode({**base, **claims})


async def get(fetch: Fetch, gateway: RunningGateway, **headers: str) -> HTTPResponse:
    response: HTTPResponse = await fetch(gateway.url + "/api/proxy/echo", headers=headers)
    return response


def forwarded(backend: FakeBackend) -> list[str | None]:
    return [r.header("Authorization") for r in backend.calls("/echo")]


def outcome(response: HTTPResponse) -> tuple[int, Any]:
    return response.code, json.loads(response.body) if response.code != 200 else None


def new_session_cookie(response: HTTPResponse) -> str:
    jar: http.cookies.SimpleCookie = http.cookies.SimpleCookie()
    for header in response.headers.get_list("Set-Cookie"):
        jar.load(header)
    return f"{V4_NAME}={jar[V4_NAME].value}"


# (1) One decryption for many requests, the same answers.


@pytest.mark.gen_test
@pytest.mark.parametrize("kind", ["v4 cookie", "v4 bearer", "v5 cookie"])
async def test_a_session_is_decrypted_once_for_many_requests(
    kind: str,
    start_gateway: Start,
    backend: FakeBackend,
    fetch: Fetch,
    codec: NextAuthV4Codec,
    decodes: Counts,
) -> None:
    if kind == "v5 cookie":
        gateway = start_gateway(backend.url, session_secret=V5["secret"])
        headers, expected = {"Cookie": f"{V5_NAME}={V5['guide']['value']}"}, V5["guide"]["claims"]["access_token"]
        decoder = "AuthJsV5Codec"
    else:
        gateway = start_gateway(backend.url)
        token, expected, decoder = v4_token(codec), ACCESS_TOKEN, "NextAuthV4Codec"
        headers = {"Cookie": f"{V4_NAME}={token}"}
        if kind == "v4 bearer":
            headers = {"Authorization": f"Bearer {urllib.parse.quote(token)}"}

    responses = [await get(fetch, gateway, **headers) for _ in range(10)]

    assert [r.code for r in responses] == [200] * 10
    assert forwarded(backend) == [f"Bearer {expected}"] * 10
    assert decodes == {decoder: 1}
    assert (cache(gateway).hits, cache(gateway).misses, len(cache(gateway))) == (9, 1, 1)


@pytest.mark.gen_test
async def test_each_session_has_its_own_entry(
    gateway: RunningGateway, backend: FakeBackend, fetch: Fetch, codec: NextAuthV4Codec, decodes: Counts
) -> None:
    alice = f"{V4_NAME}={v4_token(codec, sub='alice', access_token='at-alice')}"
    bob = f"{V4_NAME}={v4_token(codec, sub='bob', access_token='at-bob')}"
    for cookie in (alice, bob, alice, bob, bob, alice):
        assert (await get(fetch, gateway, Cookie=cookie)).code == 200
    assert forwarded(backend) == ["Bearer at-alice", "Bearer at-bob", "Bearer at-alice"] + ["Bearer at-bob"] * 2 + [
        "Bearer at-alice"
    ]
    assert decodes == {"NextAuthV4Codec": 2}


@pytest.mark.gen_test
async def test_the_cookie_name_is_part_of_the_key(
    gateway: RunningGateway, backend: FakeBackend, fetch: Fetch, codec: NextAuthV4Codec
) -> None:
    token = v4_token(codec)
    assert (await get(fetch, gateway, Cookie=f"{V4_NAME}={token}")).code == 200
    # The same value under the Auth.js v5 name does not decode there (another key), cached or not.
    response = await get(fetch, gateway, Cookie=f"{V5_NAME}={token}")
    assert response.code == 401
    assert forwarded(backend) == [f"Bearer {ACCESS_TOKEN}"]


@pytest.mark.gen_test
async def test_invalid_tokens_are_not_cached(
    gateway: RunningGateway, backend: FakeBackend, fetch: Fetch, codec: NextAuthV4Codec, decodes: Counts
) -> None:
    parts = v4_token(codec).split(".")
    parts[3] = parts[3][:5] + ("A" if parts[3][5] != "A" else "B") + parts[3][6:]
    tampered = f"{V4_NAME}={'.'.join(parts)}"
    for _ in range(3):
        response = await get(fetch, gateway, Cookie=tampered)
        assert response.code == 401 and json.loads(response.body)["error"] == "unauthorized"
    assert decodes == {"NextAuthV4Codec": 3}, "every attempt is decoded: a failure is never remembered"
    assert len(cache(gateway)) == 0
    assert backend.requests == []


@pytest.mark.gen_test
async def test_cached_claims_are_read_only(gateway: RunningGateway, codec: NextAuthV4Codec) -> None:
    headers = HTTPHeaders({"Cookie": f"{V4_NAME}={v4_token(codec, user={'id': 'user-1', 'name': 'Ada'})}"})
    first, second = reader(gateway).authenticate(headers), reader(gateway).authenticate(headers)
    assert second.claims is first.claims  # the cached object, shared...
    with pytest.raises(TypeError):
        first.claims["access_token"] = "at-forged"  # type: ignore[index]  # ...so it cannot be changed
    assert reader(gateway).authenticate(headers).access_token == ACCESS_TOKEN


# (2) Expiry: never used past the session's own exp, nor past the TTL.


@pytest.mark.gen_test(timeout=15)
async def test_an_expired_session_is_refused_even_when_cached_while_valid(
    start_gateway: Start,
    backend: FakeBackend,
    fetch: Fetch,
    codec: NextAuthV4Codec,
    decodes: Counts,
) -> None:
    cached, uncached = start_gateway(backend.url), start_gateway(backend.url)
    reader(uncached).cache = None
    # exp + CLOCK_TOLERANCE, the codec's own limit, falls 1..2 s from now.
    issued = time.time() - 60 - CLOCK_TOLERANCE + 2
    token = codec.encode({"sub": "u", "access_token": "at-0"}, max_age=60, now=issued)
    deadline = int(issued) + 60 + CLOCK_TOLERANCE
    cookie = f"{V4_NAME}={token}"

    assert (await get(fetch, cached, Cookie=cookie)).code == 200
    assert (await get(fetch, cached, Cookie=cookie)).code == 200
    assert cache(cached).hits == 1
    await asyncio.sleep(deadline - time.time() + 0.2)

    late = await get(fetch, cached, Cookie=cookie)
    fresh = await get(fetch, uncached, Cookie=cookie)
    refused = (401, {"error": "unauthorized", "message": "The session is invalid or has expired; sign in again."})
    assert outcome(late) == outcome(fresh) == refused
    assert cache(cached).hits == 1, "the expired entry was not used"
    assert len(cache(cached)) == 0, "and it was dropped, not cached again"
    assert decodes == {"NextAuthV4Codec": 3}  # cached: once valid, once expired; uncached: once
    assert forwarded(backend) == ["Bearer at-0", "Bearer at-0"]


def test_the_exp_boundary_is_the_codecs_own(monkeypatch: pytest.MonkeyPatch, codec: NextAuthV4Codec) -> None:
    """At exactly exp + CLOCK_TOLERANCE both accept; a millisecond later both refuse."""
    exp = 2_000_000_000
    token = codec.encode({"sub": "u", "access_token": "at-0"}, max_age=100, now=exp - 100)
    sessions = SessionCache()
    clock = [exp - 30.0]
    monkeypatch.setattr(time, "time", lambda: clock[0])

    assert sessions.decode(V4_NAME, token, codec.decode)["exp"] == exp  # cached now
    clock[0] = exp + CLOCK_TOLERANCE
    assert codec.decode(token)["exp"] == exp
    assert sessions.decode(V4_NAME, token, codec.decode)["exp"] == exp
    assert sessions.hits == 1
    clock[0] = exp + CLOCK_TOLERANCE + 0.001
    with pytest.raises(InvalidToken, match="session expired"):
        codec.decode(token)
    with pytest.raises(InvalidToken, match="session expired"):
        sessions.decode(V4_NAME, token, codec.decode)
    assert (sessions.hits, len(sessions)) == (1, 0)


@pytest.mark.gen_test
async def test_an_entry_is_not_used_past_the_ttl(
    gateway: RunningGateway, backend: FakeBackend, fetch: Fetch, codec: NextAuthV4Codec, decodes: Counts
) -> None:
    reader(gateway).cache = SessionCache(ttl=0.3)
    cookie = f"{V4_NAME}={v4_token(codec)}"
    assert (await get(fetch, gateway, Cookie=cookie)).code == 200
    assert (await get(fetch, gateway, Cookie=cookie)).code == 200
    assert decodes == {"NextAuthV4Codec": 1}
    await asyncio.sleep(0.4)
    assert (await get(fetch, gateway, Cookie=cookie)).code == 200
    assert decodes == {"NextAuthV4Codec": 2}, "decrypted again once the TTL passed"
    assert forwarded(backend) == [f"Bearer {ACCESS_TOKEN}"] * 3


# (3) Refresh: the new cookie works, the old one behaves as it does without a cache.


@pytest.mark.gen_test(timeout=15)
@pytest.mark.parametrize("cached", [True, False])
async def test_refresh_and_the_old_cookie_behave_as_without_a_cache(
    cached: bool,
    start_gateway: Start,
    backend: FakeBackend,
    fetch: Fetch,
    codec: NextAuthV4Codec,
    decodes: Counts,
) -> None:
    gateway = start_gateway(backend.url, refresh_grace=0.5)
    if not cached:
        reader(gateway).cache = None
    old = f"{V4_NAME}={v4_token(codec, access_token='at-0', expires_at=int(time.time()) - 10)}"

    first = await get(fetch, gateway, Cookie=old)  # expired access token: refreshed, written back
    new = new_session_cookie(first)
    outcomes = [first.code]
    outcomes += [(await get(fetch, gateway, Cookie=new)).code for _ in range(2)]
    outcomes.append((await get(fetch, gateway, Cookie=old)).code)  # within the grace window
    await asyncio.sleep(0.7)
    stale = await get(fetch, gateway, Cookie=old)  # the cached old claims still hold rt-0, now spent
    outcomes.append(stale.code)
    outcomes.append((await get(fetch, gateway, Cookie=new)).code)

    assert outcomes == [200, 200, 200, 200, 401, 200]
    assert json.loads(stale.body)["error"] == "session_expired"
    assert forwarded(backend) == ["Bearer at-1"] * 5, "never the old access token, never a resurrected one"
    assert [json.loads(c.body)["refresh_token"] for c in backend.calls("/auth/refresh")] == ["rt-0", "rt-0"]
    assert decodes == {"NextAuthV4Codec": 2 if cached else 6}


# (4) The bound.


@pytest.mark.gen_test
async def test_the_cache_is_bounded_least_recently_used_first(
    gateway: RunningGateway, backend: FakeBackend, fetch: Fetch, codec: NextAuthV4Codec, decodes: Counts
) -> None:
    reader(gateway).cache = SessionCache(max_entries=3)
    cookies = [f"{V4_NAME}={v4_token(codec, sub=f'u{i}', access_token=f'at-{i}')}" for i in range(5)]

    async def use(i: int) -> None:
        assert (await get(fetch, gateway, Cookie=cookies[i])).code == 200
        assert forwarded(backend)[-1] == f"Bearer at-{i}"

    for i in range(5):
        await use(i)
    assert len(cache(gateway)) == 3 and decodes["NextAuthV4Codec"] == 5  # holds 2, 3, 4
    await use(2)  # a hit, and now the most recent
    assert decodes["NextAuthV4Codec"] == 5
    await use(0)  # evicted earlier: decoded again, evicting 3 (least recently used), not 2
    assert decodes["NextAuthV4Codec"] == 6
    await use(2)
    assert decodes["NextAuthV4Codec"] == 6
    await use(3)
    assert decodes["NextAuthV4Codec"] == 7
    assert len(cache(gateway)) == 3


def test_the_default_bound_holds(gateway: RunningGateway) -> None:
    sessions = cache(gateway)

    def decoder(token: str, now: float | None = None) -> dict[str, Any]:
        return {"sub": token, "access_token": "at"}

    for i in range(DEFAULT_MAX_ENTRIES + 500):
        sessions.decode(V4_NAME, f"token-{i}", decoder)
    assert len(sessions) == DEFAULT_MAX_ENTRIES == 10_000
    assert sessions.decode(V4_NAME, f"token-{DEFAULT_MAX_ENTRIES + 499}", decoder)["sub"].endswith("499")
    assert sessions.hits == 1


# (5) No raw token is kept.


@pytest.mark.gen_test
async def test_keys_are_digests_not_tokens(
    gateway: RunningGateway, backend: FakeBackend, fetch: Fetch, codec: NextAuthV4Codec
) -> None:
    cookie_token, bearer_token = v4_token(codec), v4_token(codec, sub="other")
    assert (await get(fetch, gateway, Cookie=f"{V4_NAME}={cookie_token}")).code == 200
    assert (await get(fetch, gateway, Authorization=f"Bearer {urllib.parse.quote(bearer_token)}")).code == 200

    entries = cache(gateway)._entries
    assert len(entries) == 2
    for key in entries:
        assert isinstance(key, bytes) and len(key) == 32
    held = repr(list(entries.items()))
    for token in (cookie_token, bearer_token):
        assert token not in held and token.split(".")[3] not in held  # not even the ciphertext
        for name in (b"", V4_NAME.encode() + b"\0"):
            plain = {hashlib.sha256(name + token.encode()).digest(), hashlib.blake2b(name + token.encode()).digest()}
            plain.add(hashlib.blake2b(name + token.encode(), digest_size=32).digest())
            assert not plain & set(entries), "keyed digests: not a plain hash anyone could recompute"
