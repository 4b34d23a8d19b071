"""Reading next-auth v4 sessions, proved against cookies minted by next-auth itself.

``tests/fixtures/interop/fixtures.json`` was made by next-auth 4.24.15's own ``encode`` and
``SessionStore`` chunking (``tests/fixtures/interop/mint.mjs``).
"""

from __future__ import annotations

import json
import random
import urllib.parse
from collections.abc import Callable
from typing import Any

import pytest

from auth.nextauth import NextAuthV4Codec
from tests.conftest import ACCESS_TOKEN, INTEROP, RunningGateway
from tests.fakes.backend import FakeBackend

V4 = INTEROP["nextauth_v4"]
Fetch = Callable[..., Any]


def cookie_header(pairs: list[tuple[str, str]]) -> str:
    return "; ".join(f"{name}={value}" for name, value in pairs)


async def assert_rejected(fetch: Fetch, gateway: RunningGateway, backend: FakeBackend, **kwargs: Any) -> dict[str, Any]:
    response = await fetch(gateway.url + "/api/proxy/echo/private", **kwargs)
    assert response.code == 401
    assert response.headers["Content-Type"] == "application/json"
    body: dict[str, Any] = json.loads(response.body)
    assert body["error"] == "unauthorized" and body["message"]
    assert backend.requests == []
    return body


async def forwarded_token(fetch: Fetch, gateway: RunningGateway, backend: FakeBackend, **kwargs: Any) -> str | None:
    response = await fetch(gateway.url + "/api/proxy/echo/private", **kwargs)
    assert response.code == 200, response.body
    return backend.requests[-1].header("authorization")


@pytest.mark.gen_test
@pytest.mark.parametrize(("fixture", "field"), [("guide", "access_token"), ("tutorial", "accessToken")])
async def test_real_nextauth_cookie_authenticates(
    fixture: str, field: str, gateway: RunningGateway, backend: FakeBackend, fetch: Fetch
) -> None:
    token = V4[fixture]
    headers = {"Cookie": cookie_header([(token["cookie_name"], token["value"])])}
    assert await forwarded_token(fetch, gateway, backend, headers=headers) == f"Bearer {token['claims'][field]}"


@pytest.mark.gen_test
async def test_real_chunked_cookie_is_joined_in_index_order(
    gateway: RunningGateway, backend: FakeBackend, fetch: Fetch
) -> None:
    chunks = [(c["name"], c["value"]) for c in V4["chunked"]["chunks"]]
    assert len(chunks) >= 2
    shuffled = [*chunks[::-1], ("other", "1")]
    random.Random(1).shuffle(shuffled)
    expected = f"Bearer {V4['chunked']['claims']['access_token']}"
    assert await forwarded_token(fetch, gateway, backend, headers={"Cookie": cookie_header(shuffled)}) == expected


@pytest.mark.gen_test
async def test_bearer_jwe_is_accepted_when_no_cookie_and_not_forwarded(
    gateway: RunningGateway, backend: FakeBackend, fetch: Fetch
) -> None:
    jwe = urllib.parse.quote(V4["guide"]["value"])
    token = await forwarded_token(fetch, gateway, backend, headers={"Authorization": f"Bearer {jwe}"})
    assert token == f"Bearer {V4['guide']['claims']['access_token']}"


@pytest.mark.gen_test
async def test_cookie_wins_over_bearer(gateway: RunningGateway, backend: FakeBackend, fetch: Fetch) -> None:
    headers = {
        "Cookie": cookie_header([("next-auth.session-token", V4["tutorial"]["value"])]),
        "Authorization": f"Bearer {V4['guide']['value']}",
    }
    assert (
        await forwarded_token(fetch, gateway, backend, headers=headers)
        == f"Bearer {V4['tutorial']['claims']['accessToken']}"
    )


@pytest.mark.gen_test
async def test_no_session_is_401_and_backend_not_called(
    gateway: RunningGateway, backend: FakeBackend, fetch: Fetch
) -> None:
    body = await assert_rejected(fetch, gateway, backend)
    assert "session" in body["message"]
    await assert_rejected(fetch, gateway, backend, headers={"Cookie": "unrelated=1"})
    await assert_rejected(fetch, gateway, backend, headers={"Authorization": "Basic dXNlcjpwdw=="})


@pytest.mark.gen_test
async def test_expired_session_from_nextauth_is_401(
    gateway: RunningGateway, backend: FakeBackend, fetch: Fetch
) -> None:
    await assert_rejected(
        fetch,
        gateway,
        backend,
        headers={"Cookie": cookie_header([("next-auth.session-token", V4["expired"]["value"])])},
    )


@pytest.mark.gen_test
@pytest.mark.parametrize("segment", [0, 2, 3, 4])
async def test_tampered_cookie_is_401(
    segment: int, gateway: RunningGateway, backend: FakeBackend, fetch: Fetch
) -> None:
    parts = V4["guide"]["value"].split(".")
    part = parts[segment]
    parts[segment] = part[:5] + ("A" if part[5] != "A" else "B") + part[6:]
    await assert_rejected(
        fetch, gateway, backend, headers={"Cookie": cookie_header([("next-auth.session-token", ".".join(parts))])}
    )


@pytest.mark.gen_test
@pytest.mark.parametrize(
    "value", ["garbage", "a.b.c.d.e", "....", "eyJhbGciOiJub25lIn0..AAAA.AAAA.AAAA", "%ZZ", "x" * 5000]
)
async def test_malformed_cookie_is_401(value: str, gateway: RunningGateway, backend: FakeBackend, fetch: Fetch) -> None:
    await assert_rejected(fetch, gateway, backend, headers={"Cookie": f"next-auth.session-token={value}"})


@pytest.mark.gen_test
async def test_wrong_secret_is_401(
    backend: FakeBackend, start_gateway: Callable[..., RunningGateway], fetch: Fetch
) -> None:
    gateway = start_gateway(backend.url, session_secret="a-different-secret")
    await assert_rejected(
        fetch, gateway, backend, headers={"Cookie": cookie_header([("next-auth.session-token", V4["guide"]["value"])])}
    )


@pytest.mark.gen_test
async def test_session_without_access_token_is_401(
    gateway: RunningGateway, backend: FakeBackend, fetch: Fetch, codec: NextAuthV4Codec
) -> None:
    cookie = codec.encode({"sub": "user-1", "name": "No Token"})
    await assert_rejected(fetch, gateway, backend, headers={"Cookie": f"next-auth.session-token={cookie}"})


@pytest.mark.gen_test
async def test_production_reads_only_the_secure_cookie_name(
    backend: FakeBackend, start_gateway: Callable[..., RunningGateway], fetch: Fetch, session_cookie: Callable[..., str]
) -> None:
    gateway = start_gateway(backend.url, production=True)
    await assert_rejected(fetch, gateway, backend, headers={"Cookie": session_cookie()})
    secure = session_cookie("__Secure-next-auth.session-token")
    assert await forwarded_token(fetch, gateway, backend, headers={"Cookie": secure}) == f"Bearer {ACCESS_TOKEN}"


@pytest.mark.gen_test
async def test_authjs_v5_cookie_is_not_a_v4_session(
    gateway: RunningGateway, backend: FakeBackend, fetch: Fetch
) -> None:
    v5 = INTEROP["authjs_v5"]["guide"]
    await assert_rejected(fetch, gateway, backend, headers={"Cookie": f"next-auth.session-token={v5['value']}"})


def test_gateway_tokens_decode_with_the_same_rules_as_nextauth_fixtures() -> None:
    """Our encoder and next-auth's agree: each decodes the other's tokens under one secret."""
    codec = NextAuthV4Codec(V4["secret"])
    ours = codec.encode({"sub": "user-9", "access_token": "at"})
    assert codec.decode(ours)["access_token"] == "at"
    assert codec.decode(V4["guide"]["value"])["sub"] == V4["guide"]["claims"]["sub"]
    assert ours.split(".")[0] == V4["guide"]["value"].split(".")[0]  # same protected header bytes


@pytest.mark.gen_test
@pytest.mark.parametrize("field", ["accessTokenExpires", "expires_at"])
async def test_an_expiry_too_large_for_a_float_is_no_expiry_not_a_500(
    field: str, gateway: RunningGateway, backend: FakeBackend, fetch: Fetch, codec: NextAuthV4Codec
) -> None:
    """JSON integers have no bound: 10**400 once overflowed ``float()`` in the expiry check."""
    cookie = codec.encode({"sub": "user-1", "access_token": ACCESS_TOKEN, field: 10**400})
    headers = {"Cookie": f"next-auth.session-token={cookie}"}
    assert await forwarded_token(fetch, gateway, backend, headers=headers) == f"Bearer {ACCESS_TOKEN}"


@pytest.mark.gen_test
async def test_a_session_that_ends_after_the_year_9999_is_refused_not_a_500(
    gateway: RunningGateway, backend: FakeBackend, fetch: Fetch, codec: NextAuthV4Codec
) -> None:
    """``/api/auth/session`` shows the expiry as a date, which stops at 9999-12-31."""
    cookie = codec.encode({"sub": "user-1", "access_token": ACCESS_TOKEN}, max_age=10**20)
    response = await fetch(gateway.url + "/api/auth/session", headers={"Cookie": f"next-auth.session-token={cookie}"})
    assert response.code == 401 and json.loads(response.body)["error"] == "unauthorized"
    await assert_rejected(fetch, gateway, backend, headers={"Cookie": f"next-auth.session-token={cookie}"})
