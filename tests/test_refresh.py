"""Refreshing access tokens: before expiry, once per session under concurrency, written back.

The fake backend's ``/auth/refresh`` rotates refresh tokens and rejects reuse, as real ones do.
"""

from __future__ import annotations

import asyncio
import http.cookies
import json
import time
from collections.abc import Callable
from typing import Any

import pytest
from tornado.httpclient import HTTPResponse

from auth.jose import b64url_encode
from auth.nextauth import NextAuthV4Codec
from auth.refresh import parse_tokens
from tests.conftest import LogCapture, RunningGateway
from tests.fakes.backend import FakeBackend

Fetch = Callable[..., Any]
NAME = "next-auth.session-token"


def session(codec: NextAuthV4Codec, **claims: Any) -> str:
    base = {"sub": "user-1", "name": "Ada", "email": "ada@example.com", "access_token": "at-0", "refresh_token": "rt-0"}
    return codec.encode({**base, **claims})


def set_cookies(response: HTTPResponse) -> dict[str, http.cookies.Morsel[str]]:
    jar: http.cookies.SimpleCookie = http.cookies.SimpleCookie()
    for header in response.headers.get_list("Set-Cookie"):
        jar.load(header)
    return dict(jar)


def written_session(response: HTTPResponse, codec: NextAuthV4Codec) -> dict[str, Any]:
    jar = set_cookies(response)
    chunks = sorted((k, m.value) for k, m in jar.items() if (k == NAME or k.startswith(NAME + ".")) and m.value)
    return codec.decode("".join(v for _, v in chunks))


async def get(fetch: Fetch, gateway: RunningGateway, cookie: str) -> HTTPResponse:
    response: HTTPResponse = await fetch(gateway.url + "/api/proxy/echo", headers={"Cookie": cookie})
    return response


@pytest.mark.gen_test
async def test_a_session_about_to_expire_is_refreshed_first_and_written_back(
    gateway: RunningGateway, backend: FakeBackend, fetch: Fetch, codec: NextAuthV4Codec
) -> None:
    cookie = f"{NAME}={session(codec, expires_at=int(time.time()) + 30)}"  # inside the 60 s leeway
    response = await get(fetch, gateway, cookie)

    assert response.code == 200
    [call] = backend.calls("/auth/refresh")
    assert json.loads(call.body) == {"refresh_token": "rt-0"}
    assert backend.calls("/echo")[0].header("Authorization") == "Bearer at-1"
    morsel = set_cookies(response)[NAME]
    assert morsel["httponly"] and morsel["path"] == "/" and morsel["samesite"] == "Lax"
    assert morsel["max-age"] == str(30 * 24 * 3600) and not morsel["secure"]
    claims = written_session(response, codec)
    assert (claims["access_token"], claims["refresh_token"]) == ("at-1", "rt-1")
    assert abs(claims["expires_at"] - (time.time() + 3600)) < 5
    assert (claims["sub"], claims["name"], claims["email"]) == ("user-1", "Ada", "ada@example.com")
    assert b"at-1" not in response.body.replace(b"Bearer at-1", b"")  # only the backend's echo shows it


@pytest.mark.gen_test
async def test_a_fresh_session_is_not_refreshed(
    gateway: RunningGateway, backend: FakeBackend, fetch: Fetch, codec: NextAuthV4Codec
) -> None:
    response = await get(fetch, gateway, f"{NAME}={session(codec, expires_at=int(time.time()) + 3600)}")
    assert response.code == 200
    assert backend.calls("/auth/refresh") == []
    assert "Set-Cookie" not in response.headers
    assert backend.calls("/echo")[0].header("Authorization") == "Bearer at-0"


@pytest.mark.gen_test(timeout=30)
async def test_200_concurrent_requests_with_one_expired_session_refresh_exactly_once(
    gateway: RunningGateway, backend: FakeBackend, fetch: Fetch, codec: NextAuthV4Codec
) -> None:
    backend.refresh_delay = 0.2  # every request arrives while the refresh is in flight
    cookie = f"{NAME}={session(codec, expires_at=int(time.time()) - 10)}"
    responses = await asyncio.gather(*(get(fetch, gateway, cookie) for _ in range(200)))

    assert [r.code for r in responses] == [200] * 200
    assert len(backend.calls("/auth/refresh")) == 1
    assert {r.header("Authorization") for r in backend.calls("/echo")} == {"Bearer at-1"}
    assert len(backend.calls("/echo")) == 200
    assert {written_session(r, codec)["refresh_token"] for r in responses} == {"rt-1"}


@pytest.mark.gen_test(timeout=10)
async def test_the_old_cookie_reuses_the_refresh_within_the_grace_window_only(
    backend: FakeBackend, start_gateway: Callable[..., RunningGateway], fetch: Fetch, codec: NextAuthV4Codec
) -> None:
    gateway = start_gateway(backend.url, refresh_grace=0.5)
    old = f"{NAME}={session(codec, expires_at=int(time.time()) - 10)}"
    assert (await get(fetch, gateway, old)).code == 200
    late = await get(fetch, gateway, old)  # the browser had not stored the new cookie yet
    assert late.code == 200
    assert len(backend.calls("/auth/refresh")) == 1
    assert [r.header("Authorization") for r in backend.calls("/echo")] == ["Bearer at-1", "Bearer at-1"]

    await asyncio.sleep(0.7)
    expired = await get(fetch, gateway, old)  # a stale cookie long after: the rotated token is dead
    assert len(backend.calls("/auth/refresh")) == 2
    assert expired.code == 401
    assert json.loads(expired.body)["error"] == "session_expired"


@pytest.mark.gen_test
async def test_a_rejected_refresh_ends_the_session_and_clears_the_cookie(
    gateway: RunningGateway, backend: FakeBackend, fetch: Fetch, codec: NextAuthV4Codec
) -> None:
    value = session(codec, refresh_token="rt-revoked", expires_at=int(time.time()) - 10)
    response = await get(fetch, gateway, f"{NAME}={value}")

    assert response.code == 401
    body = json.loads(response.body)
    assert body["error"] == "session_expired" and body["message"]
    assert backend.calls("/echo") == []
    cleared = set_cookies(response)[NAME]
    assert cleared.value == "" and cleared["expires"] and cleared["path"] == "/"
    assert b"rt-revoked" not in response.body


@pytest.mark.gen_test
async def test_an_unreachable_refresh_endpoint_is_502_and_keeps_the_session(
    gateway: RunningGateway, backend: FakeBackend, fetch: Fetch, codec: NextAuthV4Codec
) -> None:
    backend.refresh_status = 503
    response = await get(fetch, gateway, f"{NAME}={session(codec, expires_at=int(time.time()) - 10)}")
    assert response.code == 502
    assert json.loads(response.body)["error"] == "bad_gateway"
    assert "Set-Cookie" not in response.headers
    assert backend.calls("/echo") == []


@pytest.mark.gen_test
async def test_the_tutorial_spelling_is_kept_with_its_millisecond_expiry(
    gateway: RunningGateway, backend: FakeBackend, fetch: Fetch, codec: NextAuthV4Codec
) -> None:
    value = codec.encode(
        {"sub": "u", "accessToken": "at-0", "refreshToken": "rt-0", "accessTokenExpires": int(time.time() * 1000)}
    )
    response = await get(fetch, gateway, f"{NAME}={value}")
    claims = written_session(response, codec)
    assert (claims["accessToken"], claims["refreshToken"]) == ("at-1", "rt-1")
    assert abs(claims["accessTokenExpires"] / 1000 - (time.time() + 3600)) < 5
    assert "access_token" not in claims and "expires_at" not in claims


@pytest.mark.gen_test
async def test_expiry_is_read_from_the_access_tokens_own_exp(
    gateway: RunningGateway, backend: FakeBackend, fetch: Fetch, codec: NextAuthV4Codec
) -> None:
    def jwt(exp: int) -> str:
        return ".".join((b64url_encode(b'{"alg":"HS256"}'), b64url_encode(json.dumps({"exp": exp}).encode()), "sig"))

    fresh = await get(fetch, gateway, f"{NAME}={session(codec, access_token=jwt(int(time.time()) + 3600))}")
    assert fresh.code == 200 and backend.calls("/auth/refresh") == []
    stale = await get(fetch, gateway, f"{NAME}={session(codec, access_token=jwt(int(time.time()) + 5))}")
    assert stale.code == 200 and len(backend.calls("/auth/refresh")) == 1


@pytest.mark.gen_test
async def test_write_back_is_chunked_like_nextauth_and_clears_stale_chunks(
    gateway: RunningGateway, backend: FakeBackend, fetch: Fetch, codec: NextAuthV4Codec
) -> None:
    big = session(codec, access_token="at-" + "x" * 9000, expires_at=int(time.time()) - 10)
    chunks = [big[i : i + 3933] for i in range(0, len(big), 3933)]
    assert len(chunks) == 4
    cookie = "; ".join(f"{NAME}.{i}={chunk}" for i, chunk in enumerate(chunks))
    response = await get(fetch, gateway, cookie)

    assert response.code == 200
    assert backend.calls("/echo")[0].header("Authorization") == "Bearer at-1"
    jar = set_cookies(response)
    assert jar[NAME].value and len(jar[NAME].value) <= 3933  # the new, small session fits one cookie
    for i in range(4):
        assert jar[f"{NAME}.{i}"].value == "" and jar[f"{NAME}.{i}"]["expires"]  # every old chunk cleared
    assert written_session(response, codec)["access_token"] == "at-1"


@pytest.mark.gen_test
async def test_a_bearer_session_is_not_refreshed(
    gateway: RunningGateway, backend: FakeBackend, fetch: Fetch, codec: NextAuthV4Codec
) -> None:
    """Rotated tokens could not be handed back to a Bearer client: refreshing would spend its
    refresh token and sign it out once the grace window ends. The backend judges the token."""
    value = session(codec, expires_at=int(time.time()) - 10)
    for _ in range(2):
        response = await fetch(gateway.url + "/api/proxy/echo", headers={"Authorization": f"Bearer {value}"})
        assert response.code == 200
    assert backend.calls("/auth/refresh") == []
    assert [r.header("Authorization") for r in backend.calls("/echo")] == ["Bearer at-0", "Bearer at-0"]
    assert "Set-Cookie" not in response.headers


@pytest.mark.gen_test
async def test_refresh_tokens_never_reach_a_response_or_a_log_line(
    gateway: RunningGateway, backend: FakeBackend, fetch: Fetch, codec: NextAuthV4Codec, logs: LogCapture
) -> None:
    backend.refresh_tokens = {"rt-secret-0"}
    value = session(codec, refresh_token="rt-secret-0", expires_at=int(time.time()) - 10)
    ok = await get(fetch, gateway, f"{NAME}={value}")
    rejected = await get(fetch, gateway, f"{NAME}={value}")  # rotated: the old token is refused now
    assert (ok.code, rejected.code) == (200, 200)  # the second one still inside the grace window
    for response in (ok, rejected):
        raw = response.body + str(list(response.headers.get_all())).encode()
        assert b"rt-secret" not in raw and b"rt-1" not in raw
    assert "rt-secret" not in logs.text and "rt-1" not in logs.text and "at-1" not in logs.text


def _jwt_expiring(at: float) -> str:
    return ".".join(("e30", b64url_encode(b'{"exp": %d}' % at), "s"))


@pytest.mark.parametrize(
    ("answer", "access", "refresh"),
    [
        (lambda now: {"access_token": "a", "refresh_token": "r", "expires_in": 600}, "a", "r"),
        (lambda now: {"accessToken": "a", "refreshToken": "r", "accessTokenExpires": (now + 600) * 1000}, "a", "r"),
        (lambda now: {"access_token": "a", "expires_at": now + 600}, "a", "old"),  # no new refresh token
        (lambda now: {"access_token": _jwt_expiring(now + 600)}, None, "old"),  # only the token's own exp
    ],
    ids=["snake_expires_in", "camel_ms", "expires_at_keeps_refresh", "jwt_exp"],
)
def test_refresh_answers_in_every_spelling(
    answer: Callable[[float], dict[str, Any]], access: str | None, refresh: str
) -> None:
    now = time.time()
    data = answer(now)
    tokens = parse_tokens(data, "old")
    assert tokens.access_token == (access or data["access_token"])
    assert tokens.refresh_token == refresh
    assert tokens.expires_at is not None and abs(tokens.expires_at - (now + 600)) < 5


@pytest.mark.gen_test
async def test_a_refused_refresh_connection_is_502_and_keeps_the_session(
    start_gateway: Callable[..., RunningGateway], fetch: Fetch, codec: NextAuthV4Codec
) -> None:
    gateway = start_gateway("http://127.0.0.1:9")  # nothing listens: the refresh call is refused
    response = await get(fetch, gateway, f"{NAME}={session(codec, expires_at=int(time.time()) - 10)}")
    assert response.code == 502
    assert json.loads(response.body) == {
        "error": "bad_gateway",
        "message": "The session could not be refreshed now; try again.",
    }
    assert "Set-Cookie" not in response.headers


@pytest.mark.parametrize("bad", [float("inf"), float("nan"), True, "3600"])
def test_an_unusable_expiry_in_a_refresh_answer_is_ignored_not_a_crash(bad: object) -> None:
    tokens = parse_tokens({"access_token": "opaque", "expires_in": bad}, "old")
    assert tokens.expires_at is None  # nothing usable: the token's own exp (none here) decides


@pytest.mark.gen_test
async def test_an_infinite_expiry_from_the_backend_is_not_a_500(
    gateway: RunningGateway, backend: FakeBackend, fetch: Fetch, codec: NextAuthV4Codec
) -> None:
    response = await get(fetch, gateway, f"{NAME}={session(codec, expires_at=1e400)}")
    assert response.code == 200  # an unusable expiry is unknown, not a crash
