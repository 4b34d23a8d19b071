"""The CSRF rule on cookie-authenticated unsafe requests (auth/csrf.py), through the proxy."""

from __future__ import annotations

import json
import time
import urllib.parse
from collections.abc import Callable
from typing import Any

import pytest

from auth.nextauth import NextAuthV4Codec
from tests.conftest import INTEROP, RunningGateway
from tests.fakes.backend import FakeBackend

Fetch = Callable[..., Any]
EVIL = "https://evil.example"


def own(gateway: RunningGateway) -> str:
    return gateway.url  # http://127.0.0.1:<port>, the request's own origin outside production


async def send(
    fetch: Fetch, gateway: RunningGateway, headers: dict[str, str], method: str = "POST"
) -> tuple[int, dict[str, Any] | None]:
    body = b'{"x": 1}' if method in ("POST", "PUT", "PATCH") else None
    response = await fetch(
        gateway.url + "/api/proxy/items",
        method=method,
        body=body,
        headers={"Content-Type": "application/json", **headers},
    )
    return response.code, (json.loads(response.body) if response.body else None)


REJECTED: list[tuple[str, Callable[[RunningGateway], dict[str, str]]]] = [
    ("sec-fetch-site cross-site", lambda g: {"Sec-Fetch-Site": "cross-site"}),
    ("sec-fetch-site same-site", lambda g: {"Sec-Fetch-Site": "same-site"}),
    ("sec-fetch-site wins over a good origin", lambda g: {"Sec-Fetch-Site": "cross-site", "Origin": own(g)}),
    ("origin evil", lambda g: {"Origin": EVIL}),
    ("origin null", lambda g: {"Origin": "null"}),
    ("origin other port", lambda g: {"Origin": "http://127.0.0.1:1"}),
    ("origin other scheme", lambda g: {"Origin": own(g).replace("http://", "https://")}),
    ("origin garbage", lambda g: {"Origin": "not a url"}),
    ("origin evil beats a good referer", lambda g: {"Origin": EVIL, "Referer": own(g) + "/page"}),
    ("referer evil", lambda g: {"Referer": EVIL + "/attack.html"}),
    ("referer lookalike", lambda g: {"Referer": "http://127.0.0.1.evil.example/x"}),
]
ACCEPTED: list[tuple[str, Callable[[RunningGateway], dict[str, str]]]] = [
    ("no browser headers", lambda g: {}),
    ("sec-fetch-site same-origin", lambda g: {"Sec-Fetch-Site": "same-origin", "Origin": own(g)}),
    ("sec-fetch-site none", lambda g: {"Sec-Fetch-Site": "none"}),
    ("origin own", lambda g: {"Origin": own(g)}),
    ("origin own, upper case", lambda g: {"Origin": own(g).upper().replace("HTTP://", "http://")}),
    ("referer own", lambda g: {"Referer": own(g) + "/app/page?x=1"}),
]


@pytest.mark.gen_test
@pytest.mark.parametrize(("case", "headers"), REJECTED, ids=[c for c, _ in REJECTED])
@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE"])
async def test_cross_site_cookie_requests_are_403_and_not_forwarded(
    case: str,
    headers: Callable[[RunningGateway], dict[str, str]],
    method: str,
    gateway: RunningGateway,
    backend: FakeBackend,
    fetch: Fetch,
    session_cookie: Callable[..., str],
) -> None:
    status, body = await send(fetch, gateway, {"Cookie": session_cookie(), **headers(gateway)}, method)
    assert status == 403
    assert body is not None and body["error"] == "csrf_rejected" and body["message"]
    assert backend.requests == []
    # Positive control: the same request without the cross-site marks goes through.
    status, _ = await send(fetch, gateway, {"Cookie": session_cookie()}, method)
    assert status == 200 and len(backend.requests) == 1


READS_REFUSED: list[tuple[str, dict[str, str]]] = [
    ("fetch from another site", {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "cors", "Origin": EVIL}),
    (
        "EventSource from a sibling origin",
        {"Sec-Fetch-Site": "same-site", "Sec-Fetch-Mode": "cors", "Origin": "http://127.0.0.1:1"},
    ),
    (
        "an <img> on another site",
        {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "no-cors", "Sec-Fetch-Dest": "image"},
    ),
    (
        "an <embed> on another site",
        {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "navigate", "Sec-Fetch-Dest": "embed"},
    ),
    ("no fetch metadata, a foreign Origin", {"Origin": EVIL}),
    ("no fetch metadata, Origin null", {"Origin": "null"}),
]
READS_PASSED: list[tuple[str, Callable[[RunningGateway], dict[str, str]]]] = [
    ("same origin", lambda g: {"Sec-Fetch-Site": "same-origin", "Sec-Fetch-Mode": "cors"}),
    ("typed or bookmarked", lambda g: {"Sec-Fetch-Site": "none", "Sec-Fetch-Mode": "navigate"}),
    ("a link from another site", lambda g: {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "navigate"}),
    (
        "a frame on another site",
        lambda g: {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "navigate", "Sec-Fetch-Dest": "iframe"},
    ),
    ("no fetch metadata, own Origin", lambda g: {"Origin": own(g)}),
    ("not a browser", lambda g: {}),
]


PASSED = [("POST", case, headers) for case, headers in ACCEPTED] + [
    ("GET", case, headers) for case, headers in READS_PASSED
]


@pytest.mark.gen_test
@pytest.mark.parametrize(("method", "case", "headers"), PASSED, ids=[f"{m} {c}" for m, c, _ in PASSED])
async def test_same_origin_and_non_browser_cookie_requests_pass(
    method: str,
    case: str,
    headers: Callable[[RunningGateway], dict[str, str]],
    gateway: RunningGateway,
    backend: FakeBackend,
    fetch: Fetch,
    session_cookie: Callable[..., str],
) -> None:
    """Writes and reads from gatehouse's own pages, links followed, and non-browsers pass."""
    status, _ = await send(fetch, gateway, {"Cookie": session_cookie(), **headers(gateway)}, method)
    assert status == 200
    assert len(backend.requests) == 1


@pytest.mark.gen_test
@pytest.mark.parametrize(("case", "headers"), READS_REFUSED, ids=[c for c, _ in READS_REFUSED])
async def test_another_sites_script_or_subresource_reads_are_403_and_not_forwarded(
    case: str,
    headers: dict[str, str],
    gateway: RunningGateway,
    backend: FakeBackend,
    fetch: Fetch,
    session_cookie: Callable[..., str],
) -> None:
    """CORS would only hide the answer; the request itself, with the user's session, must not
    reach the backend (Fetch Metadata's resource isolation policy)."""
    response = await fetch(gateway.url + "/api/proxy/items", headers={"Cookie": session_cookie(), **headers})
    assert response.code == 403 and json.loads(response.body)["error"] == "csrf_rejected"
    assert backend.requests == []


@pytest.mark.gen_test
async def test_a_listed_origins_reads_pass(
    backend: FakeBackend, start_gateway: Callable[..., RunningGateway], fetch: Fetch, session_cookie: Callable[..., str]
) -> None:
    gateway = start_gateway(backend.url, allowed_origins=frozenset({"https://app.example.com"}))
    listed = {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "cors", "Origin": "https://app.example.com"}
    assert (await send(fetch, gateway, {"Cookie": session_cookie(), **listed}, "GET"))[0] == 200
    listed_no_metadata = {"Origin": "https://app.example.com"}
    assert (await send(fetch, gateway, {"Cookie": session_cookie(), **listed_no_metadata}, "GET"))[0] == 200
    # An <img> on the listed front end: no Origin; its Referer names the page.
    image = {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "no-cors", "Sec-Fetch-Dest": "image"}
    listed_page = {"Referer": "https://app.example.com/gallery"}
    assert (await send(fetch, gateway, {"Cookie": session_cookie(), **image, **listed_page}, "GET"))[0] == 200
    evil_page = {"Referer": EVIL + "/https://app.example.com/"}
    assert (await send(fetch, gateway, {"Cookie": session_cookie(), **image, **evil_page}, "GET"))[0] == 403
    assert len(backend.requests) == 3


@pytest.mark.gen_test
async def test_another_sites_read_of_the_session_refreshes_nothing(
    backend: FakeBackend, gateway: RunningGateway, fetch: Fetch, codec: NextAuthV4Codec
) -> None:
    """``/api/auth/session`` refreshes an expiring session, as any use would: another site's
    script or ``<img>`` must not make gatehouse spend the refresh token."""
    claims = {"sub": "user-1", "access_token": "at-0", "refresh_token": "rt-0", "expires_at": int(time.time()) - 10}
    cookie = f"next-auth.session-token={codec.encode(claims)}"
    image = {"Sec-Fetch-Site": "same-site", "Sec-Fetch-Mode": "no-cors", "Sec-Fetch-Dest": "image"}
    response = await fetch(gateway.url + "/api/auth/session", headers={"Cookie": cookie, **image})
    assert response.code == 403 and json.loads(response.body)["error"] == "csrf_rejected"
    assert backend.calls("/auth/refresh") == []
    own = await fetch(gateway.url + "/api/auth/session", headers={"Cookie": cookie, "Sec-Fetch-Site": "same-origin"})
    assert own.code == 200 and len(backend.calls("/auth/refresh")) == 1


@pytest.mark.gen_test
async def test_allowed_origins_pass_even_when_the_browser_says_cross_site(
    backend: FakeBackend, start_gateway: Callable[..., RunningGateway], fetch: Fetch, session_cookie: Callable[..., str]
) -> None:
    gateway = start_gateway(backend.url, allowed_origins=frozenset({"https://app.example.com"}))
    for site in ("same-site", "cross-site"):
        headers = {"Cookie": session_cookie(), "Origin": "https://app.example.com", "Sec-Fetch-Site": site}
        assert (await send(fetch, gateway, headers))[0] == 200
        evil = {"Cookie": session_cookie(), "Origin": EVIL, "Sec-Fetch-Site": site}
        assert (await send(fetch, gateway, evil))[0] == 403
    assert len(backend.requests) == 2


@pytest.mark.gen_test
async def test_allowed_origins_are_accepted(
    backend: FakeBackend, start_gateway: Callable[..., RunningGateway], fetch: Fetch, session_cookie: Callable[..., str]
) -> None:
    gateway = start_gateway(backend.url, allowed_origins=frozenset({"https://app.example.com"}))
    assert (await send(fetch, gateway, {"Cookie": session_cookie(), "Origin": "https://app.example.com"}))[0] == 200
    referer = {"Cookie": session_cookie(), "Referer": "https://app.example.com/chat"}
    assert (await send(fetch, gateway, referer))[0] == 200
    assert (await send(fetch, gateway, {"Cookie": session_cookie(), "Origin": EVIL}))[0] == 403
    assert len(backend.requests) == 2


@pytest.mark.gen_test
async def test_production_own_origin_is_https(
    backend: FakeBackend, start_gateway: Callable[..., RunningGateway], fetch: Fetch, session_cookie: Callable[..., str]
) -> None:
    gateway = start_gateway(backend.url, production=True)
    cookie = session_cookie("__Secure-next-auth.session-token")
    https_own = gateway.url.replace("http://", "https://")
    assert (await send(fetch, gateway, {"Cookie": cookie, "Origin": https_own}))[0] == 200
    assert (await send(fetch, gateway, {"Cookie": cookie, "Origin": gateway.url}))[0] == 403


@pytest.mark.gen_test
async def test_required_csrf_header(
    backend: FakeBackend, start_gateway: Callable[..., RunningGateway], fetch: Fetch, session_cookie: Callable[..., str]
) -> None:
    gateway = start_gateway(backend.url, csrf_header_required=True)
    cookie = session_cookie()
    status, body = await send(fetch, gateway, {"Cookie": cookie})
    assert status == 403 and body is not None and "X-CSRF" in body["message"]
    assert (await send(fetch, gateway, {"Cookie": cookie, "X-CSRF": "0"}))[0] == 403
    assert (await send(fetch, gateway, {"Cookie": cookie, "X-CSRF": "1", "Origin": own(gateway)}))[0] == 200
    assert (await send(fetch, gateway, {"Cookie": cookie, "X-CSRF": "1", "Origin": EVIL}))[0] == 403
    assert (await send(fetch, gateway, {"Cookie": cookie}, "GET"))[0] == 200  # safe methods never
    assert len(backend.requests) == 2


@pytest.mark.gen_test
async def test_bearer_authenticated_requests_are_not_ambient_and_skip_the_check(
    backend: FakeBackend, start_gateway: Callable[..., RunningGateway], fetch: Fetch
) -> None:
    gateway = start_gateway(backend.url, csrf_header_required=True)
    bearer = {"Authorization": "Bearer " + urllib.parse.quote(INTEROP["nextauth_v4"]["guide"]["value"])}
    status, _ = await send(fetch, gateway, {**bearer, "Origin": EVIL, "Sec-Fetch-Site": "cross-site"})
    assert status == 200 and len(backend.requests) == 1


@pytest.mark.gen_test
async def test_public_paths_carry_no_session_and_are_not_checked(
    gateway: RunningGateway, backend: FakeBackend, fetch: Fetch, session_cookie: Callable[..., str]
) -> None:
    response = await fetch(
        gateway.url + "/api/proxy/auth/forgot-password",
        method="POST",
        body=b'{"email": "a@example.com"}',
        headers={"Content-Type": "application/json", "Cookie": session_cookie(), "Origin": EVIL},
    )
    assert response.code == 200
    assert backend.requests[0].header("Authorization") is None
