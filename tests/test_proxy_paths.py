"""``/api/proxy/<path>``: which paths reach the backend, where, and which never leave the gateway.

Everything runs against the real gateway on a real socket. Paths an HTTP client might rewrite
(dot segments, backslashes, ``//``) are sent over a raw TCP socket with a literal request line,
so the gateway sees exactly the bytes the test names.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import urllib.parse
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from tornado.httpclient import HTTPResponse
from tornado.httputil import HTTPHeaders

from tests.conftest import ACCESS_TOKEN, RunningGateway
from tests.fakes.backend import FakeBackend
from tests.fakes.raw import RawUpstream, Script

# -- raw HTTP/1.1 over a socket ------------------------------------------------------------


@dataclasses.dataclass
class RawResponse:
    status: int
    headers: HTTPHeaders
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def _dechunk(data: bytes) -> bytes:
    out = bytearray()
    while True:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            return bytes(out)
        out += data[:size]
        data = data[size + 2 :]


def parse_raw_response(data: bytes) -> RawResponse:
    head, sep, body = data.partition(b"\r\n\r\n")
    assert sep, f"no complete response head in {data[:200]!r}"
    status_line, _, header_block = head.decode("latin-1").partition("\r\n")
    headers = HTTPHeaders.parse(header_block)
    if headers.get("Transfer-Encoding", "").lower() == "chunked":
        body = _dechunk(body)
    return RawResponse(int(status_line.split(" ")[1]), headers, body)


def port_of(url: str) -> int:
    port = urllib.parse.urlsplit(url).port
    assert port is not None
    return port


async def raw_exchange(port: int, request: bytes) -> RawResponse:
    """Write ``request`` as is, read until the server closes, parse the one response."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    return parse_raw_response(data)


async def raw_get(
    gateway: RunningGateway, target: str, cookie: str | None = None, headers: dict[str, str] | None = None
) -> RawResponse:
    """``GET <target>`` with ``target`` written byte for byte on the request line."""
    port = port_of(gateway.url)
    lines = [f"GET {target} HTTP/1.1", f"Host: 127.0.0.1:{port}", "Connection: close"]
    if cookie is not None:
        lines.append(f"Cookie: {cookie}")
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    return await raw_exchange(port, ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))


def assert_json_error(response: RawResponse | HTTPResponse, status: int, code: str) -> None:
    body = response.body
    status_seen = response.code if isinstance(response, HTTPResponse) else response.status
    assert status_seen == status, (status_seen, body)
    assert response.headers["Content-Type"].startswith("application/json")
    payload = json.loads(body)
    assert payload["error"] == code, payload
    assert isinstance(payload["message"], str) and payload["message"]
    assert set(payload) == {"error", "message"}, payload


async def assert_control_reaches_backend(gateway: RunningGateway, backend: FakeBackend, cookie: str) -> None:
    """Positive control: the same gateway, backend, session and transport do forward a safe path."""
    before = len(backend.requests)
    response = await raw_get(gateway, "/api/proxy/control/ok?c=1", cookie)
    assert response.status == 200, response.body
    assert len(backend.requests) == before + 1
    assert (backend.requests[-1].path, backend.requests[-1].query) == ("/control/ok", "c=1")


# -- fixtures --------------------------------------------------------------------------------


async def _answer_evil(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    # Should anything ever connect, answer at once (no hang) with a body the client must not see.
    writer.write(
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 9\r\nConnection: close\r\n\r\nEVIL-BODY"
    )
    await writer.drain()
    writer.close()


@pytest.fixture
def evil(io_loop: Any, upstreams: Callable[[Script], Awaitable[RawUpstream]]) -> RawUpstream:
    """A second server that must never be contacted."""
    return io_loop.run_sync(lambda: upstreams(_answer_evil))  # type: ignore[no-any-return]


@pytest.fixture
def cookie(session_cookie: Callable[..., str]) -> str:
    return session_cookie()


# -- methods, paths and query strings --------------------------------------------------------

QUERY = "a=1&a=2&q=%E2%9C%93&x=a%2Bb&sp=a%20b&empty=&flag&plus=a+b&slash=a/b&qm=a?b"


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "PATCH", "DELETE"])
@pytest.mark.gen_test
async def test_each_method_reaches_backend_path_with_query_unchanged(
    method: str, gateway: RunningGateway, backend: FakeBackend, fetch: Any, cookie: str
) -> None:
    body = b'{"k": 1}' if method in ("POST", "PUT", "PATCH") else None
    headers = {"Cookie": cookie, "Content-Type": "application/json"}
    response = await fetch(f"{gateway.url}/api/proxy/users/42/items?{QUERY}", method=method, headers=headers, body=body)

    assert response.code == 200, response.body
    assert len(backend.requests) == 1
    received = backend.requests[0]
    assert received.method == method
    assert received.path == "/users/42/items"
    assert received.query == QUERY
    # The client got the backend's own answer.
    echoed = json.loads(response.body)
    assert (echoed["method"], echoed["path"], echoed["query"]) == (method, "/users/42/items", QUERY)


@pytest.mark.parametrize(
    "query",
    [
        "a=1&a=2",
        "q=%E2%9C%93&x=a%2Bb&sp=a%20b",
        "empty=&also=&=novalue&&",
        "enc=%2e%2e%2F%00%zz",  # the query is the backend's business: forwarded, not judged
        "next=http://evil.example/x&u=@evil.example",
    ],
)
@pytest.mark.gen_test
async def test_query_string_is_forwarded_byte_for_byte(
    query: str, gateway: RunningGateway, backend: FakeBackend, cookie: str
) -> None:
    response = await raw_get(gateway, f"/api/proxy/search?{query}", cookie)

    assert response.status == 200, response.body
    assert [(r.path, r.query) for r in backend.requests] == [("/search", query)]


@pytest.mark.gen_test
async def test_path_keeps_its_percent_encoding_on_the_way_to_the_backend(
    gateway: RunningGateway, backend: FakeBackend, cookie: str
) -> None:
    response = await raw_get(gateway, "/api/proxy/files/caf%C3%A9%20menu/a%2Bb;v=1/~x", cookie)

    assert response.status == 200, response.body
    assert [r.path for r in backend.requests] == ["/files/caf%C3%A9%20menu/a%2Bb;v=1/~x"]


@pytest.mark.parametrize("base", ["/v1", "/v1/", "/api/v2"])
@pytest.mark.gen_test
async def test_backend_url_base_path_is_prefixed(
    base: str, backend: FakeBackend, start_gateway: Callable[..., RunningGateway], fetch: Any, cookie: str
) -> None:
    gateway = start_gateway(backend.url + base)

    response = await fetch(f"{gateway.url}/api/proxy/items?x=1&x=2", headers={"Cookie": cookie})

    assert response.code == 200, response.body
    expected = base.rstrip("/") + "/items"
    assert [(r.path, r.query) for r in backend.requests] == [(expected, "x=1&x=2")]


@pytest.mark.parametrize("path", ["users/", "users/7/", "a/b/c/"])
@pytest.mark.gen_test
async def test_one_trailing_slash_is_kept(
    path: str, gateway: RunningGateway, backend: FakeBackend, fetch: Any, cookie: str
) -> None:
    response = await fetch(f"{gateway.url}/api/proxy/{path}?page=2", headers={"Cookie": cookie})

    assert response.code == 200, response.body
    assert [(r.path, r.query) for r in backend.requests] == [(f"/{path}", "page=2")]


# -- methods the proxy does not serve ---------------------------------------------------------


# CONNECT never reaches a route: the server connection refuses it (tests/test_front_door_framing.py).
@pytest.mark.parametrize("method", ["HEAD", "OPTIONS", "TRACE", "PROPFIND"])
@pytest.mark.gen_test
async def test_other_methods_get_405_with_allow_and_never_reach_backend(
    method: str, gateway: RunningGateway, backend: FakeBackend, fetch: Any, cookie: str
) -> None:
    url = f"{gateway.url}/api/proxy/items"

    response = await fetch(url, method=method, headers={"Cookie": cookie})

    assert response.code == 405, response.body
    allowed = {m.strip() for m in response.headers["Allow"].split(",")}
    assert allowed == {"GET", "POST", "PUT", "PATCH", "DELETE"}
    if method != "HEAD":  # a HEAD answer has no body
        assert_json_error(response, 405, "method_not_allowed")
    assert backend.requests == []

    control = await fetch(url, method="GET", headers={"Cookie": cookie})
    assert control.code == 200
    assert [r.path for r in backend.requests] == ["/items"]


# -- paths that must never be forwarded --------------------------------------------------------

UNSAFE_PATHS = [
    # empty
    "",
    # dot segments
    "..",
    "../x",
    "a/..",
    "a/../b",
    "a/../../etc/passwd",
    ".",
    "./a",
    "a/./b",
    "a/.",
    "a/./",
    "a/../",
    # encoded dot segments
    "%2e%2e/x",
    "a/%2e%2e/b",
    "%2E%2e/x",
    "%2e%2E",
    "%2E%2E/etc/passwd",
    ".%2e/x",
    "%2e./x",
    "a/.%2E",
    "%2e/x",
    "a/%2E",
    # double-encoded dot segments
    "%252e%252e/x",
    "a/%252E%252e/b",
    "%252e/x",
    ".%252e/x",
    # triple-encoded, and Java's path parameters (Tomcat reads "..;x" as "..")
    "%25252e%25252e/x",
    "a/..;/b",
    "a/..;jsessionid=1/b",
    "a/%2e%2e;x/b",
    # backslashes, raw and encoded (also double-encoded)
    "a\\b",
    "a\\..\\b",
    "..\\x",
    "\\\\evil.example\\x",
    "a%5cb",
    "a%5Cb",
    "%5c%5cevil.example/x",
    "..%5cx",
    "a%255cb",
    # encoded slashes (also double-encoded)
    "a%2fb",
    "a%2Fb",
    "..%2f..%2fetc%2fpasswd",
    "%2F%2Fevil.example/x",
    "a%252fb",
    # empty segments
    "a//b",
    "a//",
    "a///b",
    "/evil.example/x",
    "//evil.example/x",
    # control characters
    "a%00b",
    "a%00",
    "a%0ab",
    "a%0Ab",
    "a%0d%0aX-Injected:%201",
    "a%7fb",
    "a%7Fb",
    "a%09b",
    "a%1fb",
    "a%2500b",
    # malformed escapes
    "a%zzb",
    "a%4",
    "a%4/b",
    "a%",
    "a%4g",
    "%%32%65%%32%65/x",
    # absolute URLs as the path
    "http://evil.example",
    "http://evil.example/x",
    "https://evil.example/x",
    "http:%2F%2Fevil.example",
    "http:%2f%2fevil.example/x",
    # characters outside RFC 3986's path alphabet
    "a<script>b",
    'a"b',
    "a{b}",
    "a|b",
    "a^b",
    "a`b",
    "a#frag",
]


@pytest.mark.parametrize("path", UNSAFE_PATHS, ids=[repr(p) for p in UNSAFE_PATHS])
@pytest.mark.gen_test
async def test_unsafe_path_is_400_invalid_path_and_never_forwarded(
    path: str, gateway: RunningGateway, backend: FakeBackend, cookie: str
) -> None:
    response = await raw_get(gateway, f"/api/proxy/{path}", cookie)

    assert_json_error(response, 400, "invalid_path")
    assert backend.requests == []
    await assert_control_reaches_backend(gateway, backend, cookie)


@pytest.mark.gen_test
async def test_raw_non_ascii_in_the_target_is_refused_at_the_front_door(
    gateway: RunningGateway, backend: FakeBackend, cookie: str
) -> None:
    """RFC 9112 targets are ASCII; browsers percent-encode. llhttp refuses raw UTF-8 before any
    route sees it (Tornado's server took it, and the path rule then refused it)."""
    response = await raw_get(gateway, "/api/proxy/caf\xc3\xa9", cookie)

    assert_json_error(response, 400, "bad_request")
    assert backend.requests == []
    await assert_control_reaches_backend(gateway, backend, cookie)


@pytest.mark.parametrize("path", ["%2e%2e/x", "a/%2E%2e/b", "a%2Fb", "a%5cb", "a//b", "a%00b", "a%zz"])
@pytest.mark.gen_test
async def test_unsafe_path_from_an_ordinary_http_client_is_400(
    path: str, gateway: RunningGateway, backend: FakeBackend, fetch: Any, cookie: str
) -> None:
    response = await fetch(f"{gateway.url}/api/proxy/{path}", headers={"Cookie": cookie})

    assert_json_error(response, 400, "invalid_path")
    assert backend.requests == []
    control = await fetch(f"{gateway.url}/api/proxy/x", headers={"Cookie": cookie})
    assert control.code == 200 and [r.path for r in backend.requests] == ["/x"]


@pytest.mark.gen_test
async def test_unsafe_path_is_rejected_before_authentication(gateway: RunningGateway, backend: FakeBackend) -> None:
    response = await raw_get(gateway, "/api/proxy/a/../b")

    assert_json_error(response, 400, "invalid_path")
    assert backend.requests == []


# -- SSRF: the backend's host is the only host ever contacted ------------------------------------

FORWARDED_ATTACKS = [
    "@{evil}/x",
    "@{evil}",
    "x@{evil}",
    "a:b@{evil}",
    "a:b@{evil}/x",
    "%40{evil}/x",
    "{evil}/x",
    "http:/{evil}/x",
    "x@{evil}@y/z",
]


@pytest.mark.parametrize("attack", FORWARDED_ATTACKS)
@pytest.mark.gen_test
async def test_authority_looking_path_goes_to_the_backend_as_a_path(
    attack: str, gateway: RunningGateway, backend: FakeBackend, evil: RawUpstream, cookie: str
) -> None:
    path = attack.format(evil=f"127.0.0.1:{evil.port}")

    response = await raw_get(gateway, f"/api/proxy/{path}?q=1", cookie)

    assert response.status == 200, response.body
    assert b"EVIL-BODY" not in response.body
    assert [(r.path, r.query) for r in backend.requests] == [(f"/{path}", "q=1")]
    assert backend.requests[0].header("Host") == f"127.0.0.1:{backend.port}"
    await asyncio.sleep(0.05)
    assert evil.connections == 0


@pytest.mark.gen_test
async def test_authority_looking_path_under_a_base_path(
    backend: FakeBackend, start_gateway: Callable[..., RunningGateway], evil: RawUpstream, cookie: str
) -> None:
    gateway = start_gateway(backend.url + "/v1")
    path = f"@127.0.0.1:{evil.port}/x"

    response = await raw_get(gateway, f"/api/proxy/{path}", cookie)

    assert response.status == 200, response.body
    assert [r.path for r in backend.requests] == [f"/v1/{path}"]
    assert backend.requests[0].header("Host") == f"127.0.0.1:{backend.port}"
    assert evil.connections == 0


REJECTED_ATTACKS = [
    "/{evil}/x",  # /api/proxy//127.0.0.1:port/x
    "//{evil}/x",
    "http://{evil}",
    "http://{evil}/x",
    "https://{evil}/x",
    "http:%2F%2F{evil}",
    "http:%2f%2f{evil}/x",
    "%2F%2F{evil}/x",
    "%5c%5c{evil}/x",
    "\\\\{evil}\\x",
    "http:\\\\{evil}/x",
    "../{evil}/x",
    "..%2F{evil}/x",
    "%2e%2e/%2e%2e/{evil}",
]


@pytest.mark.parametrize("attack", REJECTED_ATTACKS, ids=[repr(a) for a in REJECTED_ATTACKS])
@pytest.mark.gen_test
async def test_rejected_attack_contacts_neither_evil_host_nor_backend(
    attack: str, gateway: RunningGateway, backend: FakeBackend, evil: RawUpstream, cookie: str
) -> None:
    path = attack.format(evil=f"127.0.0.1:{evil.port}")

    response = await raw_get(gateway, f"/api/proxy/{path}", cookie)

    assert_json_error(response, 400, "invalid_path")
    assert b"EVIL-BODY" not in response.body
    assert backend.requests == []
    await asyncio.sleep(0.05)
    assert evil.connections == 0
    await assert_control_reaches_backend(gateway, backend, cookie)
    assert evil.connections == 0


@pytest.mark.gen_test
async def test_host_header_naming_another_server_does_not_redirect_the_request(
    gateway: RunningGateway, backend: FakeBackend, evil: RawUpstream, cookie: str
) -> None:
    port = port_of(gateway.url)
    request = (
        f"GET /api/proxy/where HTTP/1.1\r\nHost: 127.0.0.1:{evil.port}\r\nConnection: close\r\n"
        f"X-Forwarded-Host: 127.0.0.1:{evil.port}\r\nCookie: {cookie}\r\n\r\n"
    ).encode()

    response = await raw_exchange(port, request)

    assert response.status == 200, response.body
    assert [r.path for r in backend.requests] == ["/where"]
    assert backend.requests[0].header("Host") == f"127.0.0.1:{backend.port}"
    await asyncio.sleep(0.05)
    assert evil.connections == 0


@pytest.mark.gen_test
async def test_absolute_form_request_target_naming_another_server_is_not_proxied(
    gateway: RunningGateway, backend: FakeBackend, evil: RawUpstream, cookie: str
) -> None:
    port = port_of(gateway.url)
    request = (
        f"GET http://127.0.0.1:{evil.port}/api/proxy/x HTTP/1.1\r\nHost: 127.0.0.1:{evil.port}\r\n"
        f"Connection: close\r\nCookie: {cookie}\r\n\r\n"
    ).encode()

    response = await raw_exchange(port, request)

    assert 400 <= response.status < 500, response.body
    assert b"EVIL-BODY" not in response.body
    assert backend.requests == []
    await asyncio.sleep(0.05)
    assert evil.connections == 0
    await assert_control_reaches_backend(gateway, backend, cookie)


# -- PUBLIC_PATHS ---------------------------------------------------------------------------------

PUBLIC = ["auth/password-reset", "auth/forgot-password", "auth/password-reset/confirm", "auth/forgot-password/"]


@pytest.mark.parametrize("path", PUBLIC)
@pytest.mark.gen_test
async def test_public_path_is_forwarded_without_a_session_and_without_authorization(
    path: str, gateway: RunningGateway, backend: FakeBackend, fetch: Any
) -> None:
    response = await fetch(
        f"{gateway.url}/api/proxy/{path}?token=abc",
        method="POST",
        headers={"Content-Type": "application/json"},
        body=b'{"email": "a@example.com"}',
    )

    assert response.code == 200, response.body
    assert [(r.method, r.path, r.query) for r in backend.requests] == [("POST", f"/{path}", "token=abc")]
    assert backend.requests[0].header("Authorization") is None
    assert backend.requests[0].header("Cookie") is None


@pytest.mark.parametrize("path", PUBLIC)
@pytest.mark.gen_test
async def test_public_path_with_a_valid_session_still_sends_no_authorization(
    path: str, gateway: RunningGateway, backend: FakeBackend, fetch: Any, cookie: str
) -> None:
    response = await fetch(
        f"{gateway.url}/api/proxy/{path}",
        headers={"Cookie": f"{cookie}; theme=dark", "Authorization": "Bearer client-sent-token"},
    )

    assert response.code == 200, response.body
    assert [r.path for r in backend.requests] == [f"/{path}"]
    received = backend.requests[0]
    assert received.header("Authorization") is None
    assert received.header("Cookie") is None
    assert ACCESS_TOKEN.encode() not in response.body


@pytest.mark.parametrize(
    "path",
    [
        "auth/password-resetX",
        "auth/password-reset-confirm",
        "auth/forgot-passwordX/y",
        "auth",
        "auth/",
        "auth/other",
        "xauth/password-reset",
        "private/auth/password-reset",
    ],
)
@pytest.mark.gen_test
async def test_path_that_only_resembles_a_public_one_needs_a_session(
    path: str, gateway: RunningGateway, backend: FakeBackend, fetch: Any, cookie: str
) -> None:
    response = await fetch(f"{gateway.url}/api/proxy/{path}")

    assert_json_error(response, 401, "unauthorized")
    assert backend.requests == []

    control = await fetch(f"{gateway.url}/api/proxy/{path}", headers={"Cookie": cookie})
    assert control.code == 200, control.body
    assert [r.path for r in backend.requests] == [f"/{path}"]
    assert backend.requests[0].header("Authorization") == f"Bearer {ACCESS_TOKEN}"


@pytest.mark.parametrize(
    "query", ["next=auth/password-reset", "auth/password-reset", "p=/api/proxy/auth/forgot-password"]
)
@pytest.mark.gen_test
async def test_public_prefix_in_the_query_string_does_not_make_a_path_public(
    query: str, gateway: RunningGateway, backend: FakeBackend, fetch: Any, cookie: str
) -> None:
    response = await fetch(f"{gateway.url}/api/proxy/private?{query}")

    assert_json_error(response, 401, "unauthorized")
    assert backend.requests == []

    control = await fetch(f"{gateway.url}/api/proxy/private?{query}", headers={"Cookie": cookie})
    assert control.code == 200
    assert [(r.path, r.query) for r in backend.requests] == [("/private", query)]


@pytest.mark.parametrize(
    "path",
    ["auth/password-reset/../../private", "auth/password-reset/%2e%2e/%2e%2e/private", "auth/password-reset%2F..%2Fx"],
)
@pytest.mark.gen_test
async def test_dot_segments_cannot_climb_out_of_a_public_path(
    path: str, gateway: RunningGateway, backend: FakeBackend, cookie: str
) -> None:
    response = await raw_get(gateway, f"/api/proxy/{path}")

    assert_json_error(response, 400, "invalid_path")
    assert backend.requests == []
    await assert_control_reaches_backend(gateway, backend, cookie)


@pytest.mark.gen_test
async def test_public_paths_setting_replaces_the_default(
    backend: FakeBackend, start_gateway: Callable[..., RunningGateway], fetch: Any
) -> None:
    gateway = start_gateway(backend.url, public_paths=("status",))

    public = await fetch(f"{gateway.url}/api/proxy/status")
    below = await fetch(f"{gateway.url}/api/proxy/status/200")
    assert public.code == 200, public.body
    assert below.code == 200, below.body
    assert [r.path for r in backend.requests] == ["/status", "/status/200"]
    assert all(r.header("Authorization") is None for r in backend.requests)

    for former in ("auth/password-reset", "auth/forgot-password"):
        response = await fetch(f"{gateway.url}/api/proxy/{former}")
        assert_json_error(response, 401, "unauthorized")
    assert len(backend.requests) == 2


@pytest.mark.parametrize("path", ["%ff", "a/%FF%FE/b", "caf%E9", "%C0%AF", "%C0%AE%C0%AE/x", "a%ED%A0%80"])
@pytest.mark.gen_test
async def test_percent_escape_that_is_not_utf8_is_400_invalid_path(
    path: str, gateway: RunningGateway, backend: FakeBackend, cookie: str
) -> None:
    # "%C0%AF" and "%C0%AE" are overlong encodings of "/" and ".": decoders that accept them
    # would see a separator or a dot segment. None of these is UTF-8, so none has a safe meaning.
    response = await raw_get(gateway, f"/api/proxy/{path}", cookie)

    assert response.status != 500, response.body
    assert_json_error(response, 400, "invalid_path")
    assert backend.requests == []
    await assert_control_reaches_backend(gateway, backend, cookie)
