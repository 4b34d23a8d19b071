"""CORS for ``ALLOWED_ORIGINS`` (handlers/cors.py, handlers/preflight.py), as a browser's requests
reach gatehouse: preflights answered by gatehouse alone, answers readable by listed origins
only, never ``*``, always ``Vary: Origin``. (tests/browser/ checks the same in Chromium.)"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from tornado.httpclient import HTTPResponse

from tests.conftest import RunningGateway
from tests.fakes.backend import FakeBackend

Fetch = Callable[..., Any]
APP = "https://app.example.com"
EVIL = "https://evil.example"


@pytest.fixture
def cors_gateway(backend: FakeBackend, start_gateway: Callable[..., RunningGateway]) -> RunningGateway:
    return start_gateway(backend.url, allowed_origins=frozenset({APP, "http://127.0.0.1:3000"}))


def cors_headers(response: HTTPResponse) -> dict[str, str]:
    return {name: value for name, value in response.headers.get_all() if name.lower().startswith("access-control-")}


def varies_on_origin(response: HTTPResponse) -> bool:
    return "origin" in {v.strip().lower() for value in response.headers.get_list("Vary") for v in value.split(",")}


async def preflight(
    fetch: Fetch, gateway: RunningGateway, path: str, origin: str, method: str = "POST"
) -> HTTPResponse:
    response: HTTPResponse = await fetch(
        gateway.url + path,
        method="OPTIONS",
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": method,
            "Access-Control-Request-Headers": "content-type,x-csrf",
            "Sec-Fetch-Site": "cross-site",
            "Sec-Fetch-Mode": "cors",
        },
    )
    return response


@pytest.mark.gen_test
@pytest.mark.parametrize("path", ["/api/proxy/items", "/api/proxy/items/7", "/api/auth/login", "/api/auth/session"])
async def test_a_listed_origins_preflight_is_granted_by_gatehouse_alone(
    path: str, cors_gateway: RunningGateway, backend: FakeBackend, fetch: Fetch
) -> None:
    response = await preflight(fetch, cors_gateway, path, APP, "DELETE")

    assert response.code == 204 and response.body == b""
    grant = cors_headers(response)
    assert grant["Access-Control-Allow-Origin"] == APP
    assert grant["Access-Control-Allow-Credentials"] == "true"
    assert {"POST", "PUT", "PATCH", "DELETE"} <= {m.strip() for m in grant["Access-Control-Allow-Methods"].split(",")}
    allowed = {h.strip().lower() for h in grant["Access-Control-Allow-Headers"].split(",")}
    assert {"content-type", "x-csrf", "x-request-id"} <= allowed
    assert int(grant["Access-Control-Max-Age"]) > 0
    assert varies_on_origin(response)
    assert backend.requests == []  # no session needed, nothing forwarded


@pytest.mark.gen_test
async def test_an_unlisted_origins_preflight_is_refused_with_no_grant(
    cors_gateway: RunningGateway, backend: FakeBackend, fetch: Fetch, start_gateway: Callable[..., RunningGateway]
) -> None:
    for gateway in (cors_gateway, start_gateway(backend.url)):  # listed others; lists none
        response = await preflight(fetch, gateway, "/api/proxy/items", EVIL)
        assert response.code == 403
        assert json.loads(response.body)["error"] == "cors_rejected"
        assert cors_headers(response) == {}
    assert backend.requests == []


@pytest.mark.gen_test
async def test_a_plain_options_request_is_still_405(cors_gateway: RunningGateway, fetch: Fetch) -> None:
    response = await fetch(cors_gateway.url + "/api/proxy/items", method="OPTIONS", headers={"Origin": APP})
    assert response.code == 405


@pytest.mark.gen_test
@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", "/api/proxy/items", None),
        ("POST", "/api/proxy/items", b'{"x": 1}'),
        ("DELETE", "/api/proxy/items/7", None),
    ],
)
async def test_a_listed_origin_reads_the_answer(
    method: str,
    path: str,
    body: bytes | None,
    cors_gateway: RunningGateway,
    backend: FakeBackend,
    fetch: Fetch,
    session_cookie: Callable[..., str],
) -> None:
    headers = {
        "Cookie": session_cookie(),
        "Origin": APP,
        "Sec-Fetch-Site": "cross-site",
        "Content-Type": "application/json",
        "X-CSRF": "1",
    }
    response = await fetch(cors_gateway.url + path, method=method, body=body, headers=headers)

    assert response.code == 200
    assert cors_headers(response) == {
        "Access-Control-Allow-Origin": APP,
        "Access-Control-Allow-Credentials": "true",
        "Access-Control-Expose-Headers": "X-Request-ID, Retry-After",
    }
    assert varies_on_origin(response)
    assert len(backend.requests) == 1


@pytest.mark.gen_test
async def test_errors_and_streams_are_readable_by_a_listed_origin(
    cors_gateway: RunningGateway, fetch: Fetch, session_cookie: Callable[..., str]
) -> None:
    signed_out = await fetch(cors_gateway.url + "/api/proxy/items", headers={"Origin": APP})
    assert signed_out.code == 401 and cors_headers(signed_out)["Access-Control-Allow-Origin"] == APP

    limited = await fetch(
        cors_gateway.url + "/api/proxy/status/429", headers={"Origin": APP, "Cookie": session_cookie()}
    )
    assert limited.code == 429 and limited.headers["Retry-After"] == "7"
    assert "Retry-After" in cors_headers(limited)["Access-Control-Expose-Headers"]

    stream = await fetch(
        cors_gateway.url + "/api/proxy/sse?events=3&interval=0.01", headers={"Origin": APP, "Cookie": session_cookie()}
    )
    assert stream.code == 200 and stream.body.count(b"data:") == 3
    assert cors_headers(stream)["Access-Control-Allow-Origin"] == APP and varies_on_origin(stream)


@pytest.mark.gen_test
async def test_unlisted_origins_get_no_grant_and_their_unsafe_requests_stay_refused(
    cors_gateway: RunningGateway, backend: FakeBackend, fetch: Fetch, session_cookie: Callable[..., str]
) -> None:
    cookie = session_cookie()
    # A script's read from an unlisted origin: refused outright, not merely unreadable.
    read = await fetch(
        cors_gateway.url + "/api/proxy/items",
        headers={"Origin": EVIL, "Cookie": cookie, "Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "cors"},
    )
    assert read.code == 403 and cors_headers(read) == {} and varies_on_origin(read)
    # A simple POST needs no preflight: the CSRF rule, not CORS, refuses it.
    post = await fetch(
        cors_gateway.url + "/api/proxy/items",
        method="POST",
        body=b"x=1",
        headers={"Origin": EVIL, "Cookie": cookie, "Sec-Fetch-Site": "cross-site", "Content-Type": "text/plain"},
    )
    assert post.code == 403 and json.loads(post.body)["error"] == "csrf_rejected" and cors_headers(post) == {}
    assert backend.requests == []


@pytest.mark.gen_test
async def test_the_backends_own_cors_headers_never_reach_the_browser(
    cors_gateway: RunningGateway, gateway: RunningGateway, fetch: Fetch, session_cookie: Callable[..., str]
) -> None:
    listed = await fetch(cors_gateway.url + "/api/proxy/headers", headers={"Origin": APP, "Cookie": session_cookie()})
    assert listed.headers["Access-Control-Allow-Origin"] == APP  # gatehouse's grant, not the backend's "*"
    assert listed.headers.get_list("Access-Control-Allow-Origin") == [APP]
    varies = {v.strip().lower() for value in listed.headers.get_list("Vary") for v in value.split(",")}
    assert varies == {"accept-encoding", "origin"}  # the backend's Vary kept, Origin added

    own = await fetch(gateway.url + "/api/proxy/headers", headers={"Cookie": session_cookie()})
    assert own.code == 200 and cors_headers(own) == {}  # no ALLOWED_ORIGINS: no grant, whatever the backend says


@pytest.mark.gen_test
async def test_same_site_none_cookies_are_secure(
    backend: FakeBackend, start_gateway: Callable[..., RunningGateway], fetch: Fetch
) -> None:
    for samesite, expected in (("Lax", "samesite=lax"), ("None", "samesite=none")):
        gateway = start_gateway(backend.url, session_cookie_samesite=samesite)
        response = await fetch(
            gateway.url + "/api/auth/login",
            method="POST",
            body=json.dumps({"username": "ada", "password": "correct horse"}).encode(),
            headers={"Content-Type": "application/json"},
        )
        assert response.code == 200
        cookie = next(c for c in response.headers.get_list("Set-Cookie") if c.startswith("next-auth.session-token="))
        attributes = {a.strip().lower() for a in cookie.split(";")[1:]}
        assert expected in attributes and "httponly" in attributes
        assert ("secure" in attributes) == (samesite == "None")


@pytest.mark.gen_test
async def test_origin_null_and_lookalikes_get_no_grant_and_every_answer_varies(
    cors_gateway: RunningGateway, backend: FakeBackend, fetch: Fetch
) -> None:
    for origin in ("null", "https://app.example.com.evil.example", "http://app.example.com", APP + ":8443"):
        response = await preflight(fetch, cors_gateway, "/api/proxy/items", origin)
        assert response.code == 403 and cors_headers(response) == {}, origin
        assert varies_on_origin(response)
    # A listed origin written differently is the same origin (browsers send it lower-case).
    granted = await preflight(fetch, cors_gateway, "/api/proxy/items", "HTTPS://App.Example.com:443")
    assert granted.code == 204 and granted.headers["Access-Control-Allow-Origin"] == APP
    missing = await fetch(cors_gateway.url + "/no/such/route", headers={"Origin": APP})
    assert missing.code == 404 and varies_on_origin(missing)
    assert missing.headers["Access-Control-Allow-Origin"] == APP
    assert backend.requests == []
