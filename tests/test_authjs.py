"""Auth.js v5 session cookies, proved against tokens minted by @auth/core 0.41.3 itself
(tests/fixtures/interop/mint.mjs): read, rotated secrets, chunks, and written back in kind."""

from __future__ import annotations

import http.cookies
import time
import urllib.parse
from collections.abc import Callable
from typing import Any

import pytest

from auth.authjs import AuthJsV5Codec
from tests.conftest import INTEROP, RunningGateway
from tests.fakes.backend import FakeBackend

V5 = INTEROP["authjs_v5"]
V4 = INTEROP["nextauth_v4"]
Fetch = Callable[..., Any]
Start = Callable[..., RunningGateway]


def v5_gateway(start_gateway: Start, backend: FakeBackend, **overrides: Any) -> RunningGateway:
    return start_gateway(backend.url, session_secret=V5["secret"], **overrides)


async def bearer_sent(fetch: Fetch, gateway: RunningGateway, backend: FakeBackend, **kwargs: Any) -> str | None:
    response = await fetch(gateway.url + "/api/proxy/echo", **kwargs)
    if response.code != 200:
        return f"HTTP {response.code}"
    return backend.calls("/echo")[-1].header("Authorization")


@pytest.mark.gen_test
async def test_a_v5_cookie_from_auth_core_authenticates(
    start_gateway: Start, backend: FakeBackend, fetch: Fetch
) -> None:
    gateway = v5_gateway(start_gateway, backend)
    cookie = f"authjs.session-token={V5['guide']['value']}"
    assert await bearer_sent(fetch, gateway, backend, headers={"Cookie": cookie}) == (
        f"Bearer {V5['guide']['claims']['access_token']}"
    )


@pytest.mark.gen_test
async def test_the_secure_name_in_production(start_gateway: Start, backend: FakeBackend, fetch: Fetch) -> None:
    gateway = v5_gateway(start_gateway, backend, production=True)
    secure = f"__Secure-authjs.session-token={V5['secure_guide']['value']}"
    assert await bearer_sent(fetch, gateway, backend, headers={"Cookie": secure}) == (
        f"Bearer {V5['secure_guide']['claims']['access_token']}"
    )
    plain = f"authjs.session-token={V5['guide']['value']}"
    assert await bearer_sent(fetch, gateway, backend, headers={"Cookie": plain}) == "HTTP 401"


@pytest.mark.gen_test
async def test_a_token_made_with_a_rotated_secret_needs_auth_secret_1(
    start_gateway: Start, backend: FakeBackend, fetch: Fetch
) -> None:
    cookie = {"Cookie": f"authjs.session-token={V5['rotated']['value']}"}
    without = v5_gateway(start_gateway, backend)
    assert await bearer_sent(fetch, without, backend, headers=cookie) == "HTTP 401"
    rotated = v5_gateway(start_gateway, backend, previous_secrets=(V5["old_secret"],))
    assert await bearer_sent(fetch, rotated, backend, headers=cookie) == (
        f"Bearer {V5['rotated']['claims']['access_token']}"
    )


@pytest.mark.gen_test
async def test_a_chunked_v5_cookie_is_joined(start_gateway: Start, backend: FakeBackend, fetch: Fetch) -> None:
    gateway = v5_gateway(start_gateway, backend)
    cookie = "; ".join(f"{c['name']}={c['value']}" for c in reversed(V5["chunked"]["chunks"]))
    assert await bearer_sent(fetch, gateway, backend, headers={"Cookie": cookie}) == (
        f"Bearer {V5['chunked']['claims']['access_token']}"
    )


@pytest.mark.gen_test
async def test_v4_and_v5_tokens_only_decode_under_their_own_cookie_names(
    start_gateway: Start, backend: FakeBackend, fetch: Fetch
) -> None:
    same_secret = start_gateway(backend.url, session_secret=V4["secret"])
    v4_token_as_v5 = {"Cookie": f"authjs.session-token={V4['guide']['value']}"}
    assert await bearer_sent(fetch, same_secret, backend, headers=v4_token_as_v5) == "HTTP 401"
    v5 = v5_gateway(start_gateway, backend)
    v5_token_as_v4 = {"Cookie": f"next-auth.session-token={V5['guide']['value']}"}
    assert await bearer_sent(fetch, v5, backend, headers=v5_token_as_v4) == "HTTP 401"
    assert backend.calls("/echo") == []


@pytest.mark.gen_test
async def test_a_tampered_v5_cookie_is_401(start_gateway: Start, backend: FakeBackend, fetch: Fetch) -> None:
    gateway = v5_gateway(start_gateway, backend)
    parts = V5["guide"]["value"].split(".")
    for index in (0, 2, 3, 4):
        tampered = list(parts)
        tampered[index] = tampered[index][:-2] + ("AA" if not tampered[index].endswith("AA") else "BB")
        cookie = {"Cookie": "authjs.session-token=" + ".".join(tampered)}
        assert await bearer_sent(fetch, gateway, backend, headers=cookie) == "HTTP 401", index
    assert backend.calls("/echo") == []


@pytest.mark.gen_test
async def test_a_v5_bearer_token_is_accepted(start_gateway: Start, backend: FakeBackend, fetch: Fetch) -> None:
    gateway = v5_gateway(start_gateway, backend)
    headers = {"Authorization": "Bearer " + urllib.parse.quote(V5["guide"]["value"])}
    assert await bearer_sent(fetch, gateway, backend, headers=headers) == (
        f"Bearer {V5['guide']['claims']['access_token']}"
    )


@pytest.mark.gen_test
async def test_a_refreshed_v5_session_is_written_back_as_v5(
    start_gateway: Start, backend: FakeBackend, fetch: Fetch
) -> None:
    gateway = v5_gateway(start_gateway, backend)
    codec = AuthJsV5Codec((V5["secret"],), "authjs.session-token")
    value = codec.encode({"sub": "u", "access_token": "at-0", "refresh_token": "rt-0", "expires_at": int(time.time())})
    response = await fetch(gateway.url + "/api/proxy/echo", headers={"Cookie": f"authjs.session-token={value}"})

    assert response.code == 200
    jar: http.cookies.SimpleCookie = http.cookies.SimpleCookie()
    for header in response.headers.get_list("Set-Cookie"):
        jar.load(header)
    assert "next-auth.session-token" not in jar
    written = jar["authjs.session-token"].value
    assert codec.decode(written)["access_token"] == "at-1"
    # The same protected header @auth/core writes under this secret and cookie name.
    assert written.split(".")[0] == V5["guide"]["value"].split(".")[0]


def test_our_v5_tokens_have_auth_cores_shape() -> None:
    ours = AuthJsV5Codec((V5["secret"],), "authjs.session-token").encode({"sub": "x"})
    theirs = V5["guide"]["value"]
    assert ours.split(".")[0] == theirs.split(".")[0]
    assert [len(p) for p in ours.split(".")][:3] == [len(p) for p in theirs.split(".")][:3]  # header, "", 16-byte IV
    assert len(ours.split(".")[4]) == len(theirs.split(".")[4])  # 32-byte tag
