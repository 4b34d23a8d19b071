"""``/api/proxy`` with Supabase sessions: with ``SUPABASE_URL`` set, a request without a
next-auth / Auth.js session may carry a Supabase one (Bearer JWT or @supabase/ssr cookie), and
the backend gets that access token as ``Authorization: Bearer``."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from settings import SupabaseSettings
from tests.conftest import ACCESS_TOKEN, INTEROP, RunningGateway
from tests.fakes.backend import FakeBackend
from tests.fakes.supabase import FakeSupabase

Fetch = Callable[..., Any]
USER = "5b0c3e2a-8d4f-4c6e-9a1b-2f3d4e5f6a7b"
SSR = INTEROP["supabase_ssr"]


@pytest.fixture
def both(
    backend: FakeBackend,
    start_gateway: Callable[..., RunningGateway],
    supabase_settings: Callable[..., SupabaseSettings],
) -> RunningGateway:
    """A gateway in front of the backend that also accepts Supabase sessions."""
    return start_gateway(backend.url, supabase=supabase_settings())


def ssr_cookie_header(supabase: FakeSupabase, token: str) -> str:
    cookies = supabase.ssr_cookie(supabase.session_json(token))
    return "; ".join(f"{name}={value}" for name, value in cookies)


@pytest.mark.gen_test
async def test_supabase_bearer_token_is_forwarded_to_the_backend(
    both: RunningGateway, backend: FakeBackend, supabase: FakeSupabase, fetch: Fetch
) -> None:
    token = supabase.mint(USER)
    response = await fetch(both.url + "/api/proxy/echo/me", headers={"Authorization": f"Bearer {token}"})
    assert response.code == 200, response.body
    assert backend.requests[-1].header("authorization") == f"Bearer {token}"


@pytest.mark.gen_test
async def test_supabase_ssr_cookie_is_forwarded_and_held_to_the_csrf_rule(
    both: RunningGateway, backend: FakeBackend, supabase: FakeSupabase, fetch: Fetch
) -> None:
    token = supabase.mint(USER)
    cookie = ssr_cookie_header(supabase, token)
    response = await fetch(both.url + "/api/proxy/echo/me", headers={"Cookie": cookie})
    assert response.code == 200, response.body
    assert backend.requests[-1].header("authorization") == f"Bearer {token}"
    assert backend.requests[-1].header("cookie") is None

    cross_site = {"Cookie": cookie, "Origin": "https://evil.example", "Content-Type": "application/json"}
    response = await fetch(both.url + "/api/proxy/echo/items", method="POST", body=b"{}", headers=cross_site)
    assert response.code == 403 and json.loads(response.body)["error"] == "csrf_rejected"
    assert len(backend.requests) == 1


@pytest.mark.gen_test
async def test_a_nextauth_session_still_comes_first(
    both: RunningGateway,
    backend: FakeBackend,
    supabase: FakeSupabase,
    session_cookie: Callable[..., str],
    fetch: Fetch,
) -> None:
    headers = {"Cookie": session_cookie(), "Authorization": f"Bearer {supabase.mint(USER)}"}
    response = await fetch(both.url + "/api/proxy/echo/me", headers=headers)
    assert response.code == 200
    assert backend.requests[-1].header("authorization") == f"Bearer {ACCESS_TOKEN}"


@pytest.mark.gen_test
@pytest.mark.parametrize("bad", ["expired", "forged", "wrong_audience", "alg_is_a_list"])
async def test_invalid_supabase_tokens_are_401_and_never_reach_the_backend(
    bad: str, both: RunningGateway, backend: FakeBackend, supabase: FakeSupabase, fetch: Fetch
) -> None:
    tokens: dict[str, Callable[[], str]] = {
        "expired": lambda: supabase.mint(USER, ttl=-60),
        "forged": lambda: supabase.mint(USER)[:-4] + "AAAA",
        "wrong_audience": lambda: supabase.mint(USER, aud="anon"),
        "alg_is_a_list": lambda: "eyJhbGciOltdfQ.e30.",  # {"alg":[]}.{}: was a 500 (issue 11)
    }
    token = tokens[bad]()
    response = await fetch(both.url + "/api/proxy/echo/me", headers={"Authorization": f"Bearer {token}"})
    assert response.code == 401 and json.loads(response.body)["error"] == "unauthorized"
    assert token not in response.body.decode()
    assert backend.requests == []


@pytest.mark.gen_test
async def test_supabase_sessions_are_refused_when_supabase_is_not_configured(
    gateway: RunningGateway, backend: FakeBackend, supabase: FakeSupabase, fetch: Fetch
) -> None:
    response = await fetch(
        gateway.url + "/api/proxy/echo/me", headers={"Authorization": f"Bearer {supabase.mint(USER)}"}
    )
    assert response.code == 401
    assert backend.requests == []


@pytest.mark.gen_test
async def test_supabase_unreachable_is_503_not_401(
    both: RunningGateway, backend: FakeBackend, supabase: FakeSupabase, fetch: Fetch
) -> None:
    token = supabase.mint(USER)
    supabase.status_override = 503  # the JWKS cannot be fetched
    response = await fetch(both.url + "/api/proxy/echo/me", headers={"Authorization": f"Bearer {token}"})
    assert response.code == 503 and json.loads(response.body)["error"] == "auth_unavailable"
    assert backend.requests == []


@pytest.mark.gen_test
async def test_a_cookie_minted_by_supabase_ssr_opens_the_proxy(
    backend: FakeBackend, start_gateway: Callable[..., RunningGateway], fetch: Fetch
) -> None:
    fake = FakeSupabase.from_interop_fixture()
    try:
        settings = SupabaseSettings(url=fake.url, jwt_issuer=f"{SSR['supabase_url']}/auth/v1")
        running = start_gateway(backend.url, supabase=settings)
        cookie = "; ".join(c.split(";", 1)[0] for c in SSR["chunked"]["set_cookie"])
        response = await fetch(running.url + "/api/proxy/echo/me", headers={"Cookie": cookie})
        assert response.code == 200, response.body
        assert backend.requests[-1].header("authorization") == f"Bearer {SSR['chunked']['session']['access_token']}"
    finally:
        await fake.aclose()
