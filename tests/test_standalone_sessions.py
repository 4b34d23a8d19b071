"""Gatehouse's own sessions: login, logout and session, with no Next.js front end."""

from __future__ import annotations

import datetime
import http.cookies
import json
import time
from collections.abc import Callable
from typing import Any

import pytest
from tornado.httpclient import HTTPResponse

from auth.nextauth import NextAuthV4Codec
from handlers.auth import public_user
from tests.conftest import LogCapture, RunningGateway
from tests.fakes.backend import FakeBackend

Fetch = Callable[..., Any]
Start = Callable[..., RunningGateway]
GOOD = b'{"username": "ada", "password": "correct horse"}'
NAME = "next-auth.session-token"


def jar(response: HTTPResponse) -> dict[str, http.cookies.Morsel[str]]:
    cookies: http.cookies.SimpleCookie = http.cookies.SimpleCookie()
    for header in response.headers.get_list("Set-Cookie"):
        cookies.load(header)
    return dict(cookies)


async def login(fetch: Fetch, gateway: RunningGateway, body: bytes = GOOD, **headers: str) -> HTTPResponse:
    response: HTTPResponse = await fetch(
        gateway.url + "/api/auth/login",
        method="POST",
        body=body,
        headers={"Content-Type": "application/json", **headers},
    )
    return response


async def logout_after_login(fetch: Fetch, gateway: RunningGateway, **headers: str) -> HTTPResponse:
    """Sign in as Ada, then POST /api/auth/logout with that session cookie (and ``headers``)."""
    cookie = jar(await login(fetch, gateway))[NAME].value
    response: HTTPResponse = await fetch(
        gateway.url + "/api/auth/logout", method="POST", body=b"", headers={"Cookie": f"{NAME}={cookie}", **headers}
    )
    return response


@pytest.mark.gen_test
async def test_login_issues_a_nextauth_v4_cookie_and_answers_only_the_user(
    gateway: RunningGateway, backend: FakeBackend, fetch: Fetch, codec: NextAuthV4Codec
) -> None:
    response = await login(fetch, gateway)

    assert response.code == 200
    assert json.loads(response.body) == {"user": {"id": "u-ada", "name": "Ada Lovelace", "email": "ada@example.com"}}
    for secret in (b"at-login", b"rt-login", b"leak-me-not"):
        assert secret not in response.body
    assert backend.calls("/auth/login")[0].body == GOOD  # the credentials, byte for byte
    cookie = jar(response)[NAME]
    assert cookie["httponly"] and cookie["samesite"] == "Lax" and cookie["path"] == "/"
    assert cookie["max-age"] == str(30 * 24 * 3600) and not cookie["secure"]
    assert response.headers["Cache-Control"] == "no-store"
    claims = codec.decode(cookie.value)
    assert (claims["sub"], claims["access_token"], claims["refresh_token"]) == ("u-ada", "at-login", "rt-login")
    assert abs(claims["expires_at"] - (time.time() + 900)) < 5

    # The cookie is a session like any other: the proxy forwards with its token.
    proxied = await fetch(gateway.url + "/api/proxy/echo", headers={"Cookie": f"{NAME}={cookie.value}"})
    assert proxied.code == 200
    assert backend.calls("/echo")[0].header("Authorization") == "Bearer at-login"


@pytest.mark.gen_test
async def test_rejected_credentials_are_401_and_set_no_cookie(
    gateway: RunningGateway, backend: FakeBackend, fetch: Fetch
) -> None:
    response = await login(fetch, gateway, b'{"username": "ada", "password": "wrong"}')
    assert response.code == 401
    assert json.loads(response.body)["error"] == "invalid_credentials"
    assert "Set-Cookie" not in response.headers


@pytest.mark.gen_test
@pytest.mark.parametrize("body", [b"{nope", b"[1, 2]", b'"ada"'])
async def test_malformed_credentials_are_400_and_never_sent(
    body: bytes, gateway: RunningGateway, backend: FakeBackend, fetch: Fetch
) -> None:
    response = await login(fetch, gateway, body)
    assert response.code == 400 and json.loads(response.body)["error"] == "invalid_json"
    assert backend.requests == []


@pytest.mark.gen_test
async def test_login_from_another_site_is_refused(gateway: RunningGateway, backend: FakeBackend, fetch: Fetch) -> None:
    response = await login(fetch, gateway, Origin="https://evil.example")
    assert response.code == 403 and json.loads(response.body)["error"] == "csrf_rejected"
    assert backend.requests == []
    assert (await login(fetch, gateway, Origin=gateway.url)).code == 200


@pytest.mark.gen_test
async def test_production_login_sets_the_secure_cookie(
    backend: FakeBackend, start_gateway: Start, fetch: Fetch
) -> None:
    gateway = start_gateway(backend.url, production=True)
    cookie = jar(await login(fetch, gateway))[f"__Secure-{NAME}"]
    assert cookie["secure"] and cookie["httponly"]


@pytest.mark.gen_test
async def test_an_unreachable_login_backend_is_502(start_gateway: Start, fetch: Fetch) -> None:
    gateway = start_gateway("http://127.0.0.1:9")
    response = await login(fetch, gateway)
    assert response.code == 502 and "Set-Cookie" not in response.headers


@pytest.mark.gen_test
async def test_session_answers_the_user_and_expiry_never_a_token(
    gateway: RunningGateway, fetch: Fetch, codec: NextAuthV4Codec
) -> None:
    cookie = jar(await login(fetch, gateway))[NAME].value
    response = await fetch(gateway.url + "/api/auth/session", headers={"Cookie": f"{NAME}={cookie}"})

    assert response.code == 200
    body = json.loads(response.body)
    assert body["user"] == {"id": "u-ada", "name": "Ada Lovelace", "email": "ada@example.com"}
    expires = datetime.datetime.fromisoformat(body["expires"].replace("Z", "+00:00"))
    assert expires.timestamp() == codec.decode(cookie)["exp"]
    assert b"at-login" not in response.body and b"rt-login" not in response.body

    anonymous = await fetch(gateway.url + "/api/auth/session")
    assert anonymous.code == 401 and json.loads(anonymous.body)["error"] == "unauthorized"


@pytest.mark.gen_test
async def test_logout_clears_the_cookie_without_a_logout_endpoint(
    gateway: RunningGateway, backend: FakeBackend, fetch: Fetch
) -> None:
    response = await logout_after_login(fetch, gateway)
    assert response.code == 200 and json.loads(response.body) == {"signed_out": True}
    cleared = jar(response)[NAME]
    assert cleared.value == "" and cleared["expires"]
    assert [r.path for r in backend.requests] == ["/auth/login"]  # no logout endpoint configured


@pytest.mark.gen_test
async def test_logout_tells_the_configured_backend_endpoint(
    backend: FakeBackend, start_gateway: Start, fetch: Fetch
) -> None:
    gateway = start_gateway(backend.url, auth_logout_path="/auth/logout")
    response = await logout_after_login(fetch, gateway)
    assert response.code == 200
    [call] = backend.calls("/auth/logout")
    assert call.header("Authorization") == "Bearer at-login"
    assert json.loads(call.body) == {"refresh_token": "rt-login"}


@pytest.mark.gen_test
async def test_logout_from_another_site_is_refused(gateway: RunningGateway, fetch: Fetch) -> None:
    response = await logout_after_login(fetch, gateway, **{"Sec-Fetch-Site": "cross-site"})
    assert response.code == 403 and "Set-Cookie" not in response.headers


@pytest.mark.gen_test
async def test_no_token_reaches_a_log_line_through_login_session_and_logout(
    gateway: RunningGateway, fetch: Fetch, logs: LogCapture
) -> None:
    cookie = jar(await login(fetch, gateway))[NAME].value
    headers = {"Cookie": f"{NAME}={cookie}"}
    await fetch(gateway.url + "/api/auth/session", headers=headers)
    await fetch(gateway.url + "/api/auth/logout", method="POST", body=b"", headers=headers)
    await login(fetch, gateway, b'{"username": "ada", "password": "wrong"}')
    assert len(logs.records("gatehouse.access")) == 4
    for secret in ("at-login", "rt-login", "leak-me-not", "correct horse", cookie):
        assert secret not in logs.text


@pytest.mark.parametrize(
    ("claims", "expected"),
    [
        (
            {"user": {"id": "u", "name": "Ada", "account": {"access_token": "AT"}, "jwt": "eyJ", "api_token": "x"}},
            {"id": "u", "name": "Ada"},
        ),
        ({"user": {"id": "u", "email": ["a@x"], "image": True}}, {"id": "u"}),
        (  # a session made by next-auth v4: profile claims, avatar as "picture"
            {"sub": "u", "name": "Ada", "picture": "https://x/a.png", "access_token": "AT", "refresh_token": "RT"},
            {"id": "u", "name": "Ada", "image": "https://x/a.png"},
        ),
    ],
)
def test_the_public_user_holds_profile_fields_only(claims: dict[str, Any], expected: dict[str, Any]) -> None:
    assert public_user(claims) == expected
