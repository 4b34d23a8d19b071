"""Request and response bodies through ``/api/proxy/<path>``: exact bytes, limits, failures.

The fake backend reads every body streamed and records its size and SHA-256, so "byte for
byte" is checked as digest and length equality with what the test sent.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import time
import urllib.parse
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from tornado.httpclient import HTTPResponse
from tornado.httputil import HTTPHeaders

from tests.conftest import RunningGateway, closed_port
from tests.fakes.backend import FakeBackend, payload
from tests.fakes.raw import RawUpstream, Script

MB20 = 20 * 1024 * 1024
Write = Callable[[bytes], Awaitable[None]]


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def assert_json_error(response: HTTPResponse, status: int, code: str) -> None:
    assert response.code == status, (response.code, response.body, response.error)
    assert response.headers["Content-Type"].startswith("application/json")
    body = json.loads(response.body)
    assert body["error"] == code, body
    assert isinstance(body["message"], str) and body["message"]


def producer(data: bytes, chunk_size: int = 64 * 1024) -> Callable[[Write], Awaitable[None]]:
    """A ``body_producer``: Tornado's client then sends the body chunked, with no Content-Length."""

    async def produce(write: Write) -> None:
        for start in range(0, len(data), chunk_size):
            await write(data[start : start + chunk_size])

    return produce


@pytest.fixture
def cookie(session_cookie: Callable[..., str]) -> str:
    return session_cookie()


@dataclasses.dataclass
class RawResponse:
    status: int | None  # None: the connection closed without an answer
    headers: HTTPHeaders
    body: bytes


def port_of(url: str) -> int:
    port = urllib.parse.urlsplit(url).port
    assert port is not None
    return port


async def _read_response(reader: asyncio.StreamReader) -> RawResponse:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError) as exc:
        partial = getattr(exc, "partial", b"")
        if not partial:
            return RawResponse(None, HTTPHeaders(), b"")
        head = partial + b"\r\n\r\n"
    status_line, _, header_block = head.decode("latin-1").partition("\r\n")
    headers = HTTPHeaders.parse(header_block)
    status = int(status_line.split(" ")[1])
    try:
        if "Content-Length" in headers:
            body = await reader.readexactly(int(headers["Content-Length"]))
        elif headers.get("Transfer-Encoding", "").lower() == "chunked":
            body = b""
            while True:
                size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                body += await reader.readexactly(size + 2)
                if size == 0:
                    break
        else:
            body = await reader.read()
    except (asyncio.IncompleteReadError, ConnectionError) as exc:
        body = getattr(exc, "partial", b"")
    return RawResponse(status, headers, body)


async def raw_exchange(port: int, request: bytes) -> RawResponse:
    """Write ``request`` byte for byte; read one response (or the connection's end)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        try:
            writer.write(request)
            await writer.drain()
        except ConnectionError:
            pass
        return await asyncio.wait_for(_read_response(reader), 10)
    finally:
        writer.close()


async def raw_chunked(
    gateway: RunningGateway, method: str, target: str, headers: dict[str, str], body: bytes, chunk_size: int
) -> RawResponse:
    """A correctly framed chunked request over a raw socket.

    Needed for DELETE: Tornado's client only chunk-frames POST/PUT/PATCH bodies and would write
    a DELETE ``body_producer``'s bytes unframed.
    """
    lines = [f"{method} {target} HTTP/1.1", "Host: x", "Connection: close", "Transfer-Encoding: chunked"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    chunks = [body[i : i + chunk_size] for i in range(0, len(body), chunk_size)]
    framed = b"".join(f"{len(c):x}\r\n".encode() + c + b"\r\n" for c in chunks) + b"0\r\n\r\n"
    return await raw_exchange(port_of(gateway.url), ("\r\n".join(lines) + "\r\n\r\n").encode() + framed)


async def send_chunked(
    fetch: Any, gateway: RunningGateway, method: str, path: str, headers: dict[str, str], body: bytes, chunk_size: int
) -> tuple[int | None, bytes]:
    """Send ``body`` chunked (no Content-Length): Tornado's client where it can, else a raw socket."""
    if method == "DELETE":
        raw = await raw_chunked(gateway, method, path, headers, body, chunk_size)
        return raw.status, raw.body
    response = await fetch(gateway.url + path, method=method, headers=headers, body_producer=producer(body, chunk_size))
    return response.code, response.body or b""


def assert_error_body(status: int | None, body: bytes, expected_status: int, code: str) -> None:
    assert status == expected_status, (status, body)
    payload = json.loads(body)
    assert payload["error"] == code, payload
    assert isinstance(payload["message"], str) and payload["message"]


def assert_received(backend: FakeBackend, method: str, path: str, sent: bytes) -> None:
    assert len(backend.requests) == 1, [(r.method, r.path) for r in backend.requests]
    received = backend.requests[0]
    assert (received.method, received.path) == (method, path)
    assert received.body_size == len(sent)
    assert received.body_sha256 == sha256(sent)


# -- JSON ---------------------------------------------------------------------------------------

JSON_TYPES = [
    "application/json",
    "application/json; charset=utf-8",
    "application/vnd.api+json",
    "application/vnd.api+json; charset=utf-8",
    "Application/JSON;charset=UTF-8",
]
JSON_BODIES = [
    b'{"a":1}',
    b'  {\n\t"a" :  1 ,"b":[ 1,2 ,\r\n3 ] ,  "c" : { } }\r\n\t ',
    '{"name": "Zoë ✓ 日本 😀", "escaped": "\\u00e9\\ud83d\\ude00", "n": -0.0e+10}'.encode(),
    b"[]",
    b'"just a string"',
    b"null",
    json.dumps({"rows": [{"i": i, "s": "x" * 50} for i in range(3000)]}).encode(),  # ~200 KB
]


@pytest.mark.parametrize("content_type", JSON_TYPES)
@pytest.mark.parametrize("body", JSON_BODIES, ids=[f"body{i}" for i in range(len(JSON_BODIES))])
@pytest.mark.gen_test
async def test_json_body_is_forwarded_byte_for_byte(
    content_type: str, body: bytes, gateway: RunningGateway, backend: FakeBackend, fetch: Any, cookie: str
) -> None:
    response = await fetch(
        f"{gateway.url}/api/proxy/items",
        method="POST",
        body=body,
        headers={"Cookie": cookie, "Content-Type": content_type},
    )

    assert response.code == 200, response.body
    assert_received(backend, "POST", "/items", body)
    received = backend.requests[0]
    assert received.body == body
    assert received.header("Content-Type") == content_type
    assert received.header("Content-Length") == str(len(body))


@pytest.mark.parametrize("method", ["PUT", "PATCH", "DELETE"])
@pytest.mark.parametrize("chunked", [False, True])
@pytest.mark.gen_test
async def test_json_body_on_other_methods_and_chunked(
    method: str, chunked: bool, gateway: RunningGateway, backend: FakeBackend, fetch: Any, cookie: str
) -> None:
    body = '{"id": 7, "note": "ünïcödé"}'.encode()
    headers = {"Cookie": cookie, "Content-Type": "application/json"}

    if chunked:
        status, answer = await send_chunked(fetch, gateway, method, "/api/proxy/items/7", headers, body, 5)
    else:
        response = await fetch(f"{gateway.url}/api/proxy/items/7", method=method, headers=headers, body=body)
        status, answer = response.code, response.body

    assert status == 200, answer
    assert_received(backend, method, "/items/7", body)


MALFORMED_JSON = [
    b"{",
    b'{"a":1,}',
    b"{'a': 1}",
    b'{"a":1}{"b":2}',
    b'{"a": tru}',
    b"nul",
    b"   ",
    b'{"a": "unterminated}',
    b"<html></html>",
]


@pytest.mark.parametrize("body", MALFORMED_JSON)
@pytest.mark.parametrize("content_type", ["application/json", "application/vnd.api+json; charset=utf-8"])
@pytest.mark.gen_test
async def test_malformed_json_is_400_invalid_json_and_never_forwarded(
    body: bytes, content_type: str, gateway: RunningGateway, backend: FakeBackend, fetch: Any, cookie: str
) -> None:
    headers = {"Cookie": cookie, "Content-Type": content_type}

    response = await fetch(f"{gateway.url}/api/proxy/items", method="POST", body=body, headers=headers)

    assert_json_error(response, 400, "invalid_json")
    await asyncio.sleep(0.02)
    assert backend.requests == []
    control = await fetch(f"{gateway.url}/api/proxy/items", method="POST", body=b'{"ok": 1}', headers=headers)
    assert control.code == 200
    assert_received(backend, "POST", "/items", b'{"ok": 1}')


@pytest.mark.gen_test
async def test_malformed_chunked_json_is_400_and_never_forwarded(
    gateway: RunningGateway, backend: FakeBackend, fetch: Any, cookie: str
) -> None:
    headers = {"Cookie": cookie, "Content-Type": "application/json"}

    response = await fetch(
        f"{gateway.url}/api/proxy/items", method="POST", body_producer=producer(b'{"a": [1, 2,', 3), headers=headers
    )

    assert_json_error(response, 400, "invalid_json")
    assert backend.requests == []


INVALID_UTF8_JSON = {
    "byte-ff": b'{"a": "\xff"}',
    "latin1": b'{"a": "caf\xe9"}',
    "truncated": b'{"a": "\xc3"}',
    "overlong-slash": b'{"a": "\xc0\xaf"}',
    "encoded-surrogate": b'{"a": "\xed\xa0\x80"}',  # UTF-8 never encodes surrogates (RFC 3629)
    # JSON exchanged between systems MUST be UTF-8 (RFC 8259 section 8.1):
    "utf16le": '{"a": 1}'.encode("utf-16-le"),
    "utf16-bom": '{"a": 1}'.encode("utf-16"),
    "utf32-bom": '{"a": 1}'.encode("utf-32"),
}


@pytest.mark.parametrize("body", list(INVALID_UTF8_JSON.values()), ids=list(INVALID_UTF8_JSON))
@pytest.mark.gen_test
async def test_json_body_that_is_not_utf8_is_400_invalid_json(
    body: bytes, gateway: RunningGateway, backend: FakeBackend, fetch: Any, cookie: str
) -> None:
    headers = {"Cookie": cookie, "Content-Type": "application/json; charset=utf-8"}

    response = await fetch(f"{gateway.url}/api/proxy/items", method="POST", body=body, headers=headers)

    assert_json_error(response, 400, "invalid_json")
    assert backend.requests == []


# -- multipart uploads ------------------------------------------------------------------------------

BOUNDARY = "----gatehouseBoundary7MA4YWxkTrZu0gW"


def multipart(file_bytes: bytes) -> bytes:
    return b"".join(
        [
            f"--{BOUNDARY}\r\n".encode(),
            b'Content-Disposition: form-data; name="description"\r\n\r\n',
            "quarterly numbers ✓\r\n".encode(),
            f"--{BOUNDARY}\r\n".encode(),
            b'Content-Disposition: form-data; name="file"; filename="data.bin"\r\n',
            b"Content-Type: application/octet-stream\r\n\r\n",
            file_bytes,
            f"\r\n--{BOUNDARY}--\r\n".encode(),
        ]
    )


@pytest.fixture(scope="module")
def big_upload() -> bytes:
    return multipart(payload(MB20))


@pytest.mark.parametrize("path", ["chat/extract", "analytics/csv/databases", "analytics/excel/database"])
@pytest.mark.gen_test(timeout=30)
async def test_20mb_multipart_upload_arrives_byte_for_byte(
    path: str, big_upload: bytes, gateway: RunningGateway, backend: FakeBackend, fetch: Any, cookie: str
) -> None:
    content_type = f"multipart/form-data; boundary={BOUNDARY}"

    response = await fetch(
        f"{gateway.url}/api/proxy/{path}?source=web",
        method="POST",
        body=big_upload,
        headers={"Cookie": cookie, "Content-Type": content_type},
    )

    assert response.code == 200, response.body
    assert_received(backend, "POST", f"/{path}", big_upload)
    received = backend.requests[0]
    assert received.query == "source=web"
    assert received.header("Content-Type") == content_type
    assert received.header("Content-Length") == str(len(big_upload))
    echoed = json.loads(response.body)
    assert (echoed["body_size"], echoed["body_sha256"]) == (len(big_upload), sha256(big_upload))


@pytest.mark.gen_test(timeout=30)
async def test_20mb_chunked_multipart_upload_arrives_byte_for_byte(
    big_upload: bytes, gateway: RunningGateway, backend: FakeBackend, fetch: Any, cookie: str
) -> None:
    content_type = f"multipart/form-data; boundary={BOUNDARY}"

    response = await fetch(
        f"{gateway.url}/api/proxy/chat/extract",
        method="POST",
        body_producer=producer(big_upload, 256 * 1024),
        headers={"Cookie": cookie, "Content-Type": content_type},
    )

    assert response.code == 200, response.body
    assert_received(backend, "POST", "/chat/extract", big_upload)
    assert backend.requests[0].header("Content-Type") == content_type


# -- downloads ------------------------------------------------------------------------------------


@pytest.mark.parametrize("chunked", [False, True])
@pytest.mark.gen_test(timeout=30)
async def test_20mb_download_arrives_byte_for_byte(
    chunked: bool, gateway: RunningGateway, fetch: Any, cookie: str
) -> None:
    query = "?chunked=1" if chunked else ""

    response = await fetch(f"{gateway.url}/api/proxy/bytes/{MB20}{query}", headers={"Cookie": cookie})

    assert response.code == 200, response.error
    assert response.headers["Content-Type"] == "application/octet-stream"
    if chunked:
        assert "Content-Length" not in response.headers
    else:
        assert response.headers["Content-Length"] == str(MB20)
    assert len(response.body) == MB20
    assert response.body == payload(MB20)


# -- other bodies ---------------------------------------------------------------------------------

OTHER_BODIES: list[tuple[str | None, bytes]] = [
    ("text/plain; charset=utf-8", "plain text ✓\r\n\twith whitespace  \n".encode()),
    ("application/octet-stream", payload(300_000, seed=3) + b"\x00\x00\xff"),
    ("application/x-www-form-urlencoded", b"a=1&a=2&b=%26%3D&c=&d=caf%C3%A9+au+lait"),
    ("application/xml", b"<?xml version='1.0'?><a>\xc3\xa9</a>"),
]


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE"])
@pytest.mark.parametrize("content_type,body", OTHER_BODIES, ids=[str(t) for t, _ in OTHER_BODIES])
@pytest.mark.gen_test
async def test_other_bodies_pass_unchanged(
    method: str,
    content_type: str,
    body: bytes,
    gateway: RunningGateway,
    backend: FakeBackend,
    fetch: Any,
    cookie: str,
) -> None:
    headers = {"Cookie": cookie, "Content-Type": content_type}

    response = await fetch(f"{gateway.url}/api/proxy/things/1", method=method, body=body, headers=headers)

    assert response.code == 200, response.body
    assert_received(backend, method, "/things/1", body)
    assert backend.requests[0].header("Content-Type") == content_type


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE"])
@pytest.mark.gen_test
async def test_chunked_bodies_pass_unchanged(
    method: str, gateway: RunningGateway, backend: FakeBackend, fetch: Any, cookie: str
) -> None:
    body = payload(500_000, seed=11)
    headers = {"Cookie": cookie, "Content-Type": "application/octet-stream"}

    status, answer = await send_chunked(fetch, gateway, method, "/api/proxy/things/2", headers, body, 10_000)

    assert status == 200, answer
    assert_received(backend, method, "/things/2", body)


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE"])
@pytest.mark.gen_test
async def test_body_without_content_type_passes_unchanged(
    method: str, gateway: RunningGateway, backend: FakeBackend, cookie: str
) -> None:
    # A raw socket: Tornado's client would add a form Content-Type to a POST.
    body = b"no content type at all \x00\xff"
    request = (
        f"{method} /api/proxy/things/3 HTTP/1.1\r\nHost: x\r\nConnection: close\r\nCookie: {cookie}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body

    response = await raw_exchange(port_of(gateway.url), request)

    assert response.status == 200, response.body
    assert_received(backend, method, "/things/3", body)
    assert backend.requests[0].header("Content-Type") is None


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH"])
@pytest.mark.parametrize("content_type", [None, "application/json"])
@pytest.mark.gen_test
async def test_body_method_without_a_body_sends_an_empty_body(
    method: str, content_type: str | None, gateway: RunningGateway, backend: FakeBackend, fetch: Any, cookie: str
) -> None:
    headers = {"Cookie": cookie}
    if content_type:
        headers["Content-Type"] = content_type

    response = await fetch(f"{gateway.url}/api/proxy/actions/run", method=method, body=b"", headers=headers)

    assert response.code == 200, response.body
    assert_received(backend, method, "/actions/run", b"")
    assert backend.requests[0].header("Content-Length") == "0"


@pytest.mark.gen_test
async def test_post_without_content_length_or_body_sends_an_empty_body(
    gateway: RunningGateway, backend: FakeBackend, cookie: str
) -> None:
    response = await raw_exchange(
        port_of(gateway.url),
        f"POST /api/proxy/actions/run HTTP/1.1\r\nHost: x\r\nConnection: close\r\nCookie: {cookie}\r\n\r\n".encode(),
    )

    assert response.status == 200, response.body
    assert_received(backend, "POST", "/actions/run", b"")


@pytest.mark.gen_test
async def test_get_is_forwarded_without_a_body(
    gateway: RunningGateway, backend: FakeBackend, fetch: Any, cookie: str
) -> None:
    response = await fetch(f"{gateway.url}/api/proxy/things", headers={"Cookie": cookie})

    assert response.code == 200
    assert_received(backend, "GET", "/things", b"")
    assert backend.requests[0].header("Transfer-Encoding") is None


# -- MAX_BODY_BYTES -----------------------------------------------------------------------------


@pytest.fixture
def small_gateway(backend: FakeBackend, start_gateway: Callable[..., RunningGateway]) -> RunningGateway:
    return start_gateway(backend.url, max_body_bytes=1000)


@pytest.mark.parametrize(
    "content_type", ["application/octet-stream", "application/json", "multipart/form-data; boundary=x"]
)
@pytest.mark.gen_test
async def test_body_over_the_limit_with_content_length_is_413_and_never_forwarded(
    content_type: str, small_gateway: RunningGateway, backend: FakeBackend, fetch: Any, cookie: str
) -> None:
    body = b"[" + b"1," * 499 + b"1]" if content_type == "application/json" else b"x" * 1001
    assert len(body) == 1001

    response = await fetch(
        f"{small_gateway.url}/api/proxy/upload",
        method="POST",
        body=body,
        headers={"Cookie": cookie, "Content-Type": content_type},
    )

    assert_json_error(response, 413, "payload_too_large")
    await asyncio.sleep(0.05)
    assert backend.requests == []


@pytest.mark.parametrize("content_type", ["application/octet-stream", "application/json"])
@pytest.mark.parametrize("chunked", [False, True])
@pytest.mark.parametrize("method", ["POST", "DELETE"])
@pytest.mark.gen_test
async def test_body_of_exactly_the_limit_passes(
    method: str,
    content_type: str,
    chunked: bool,
    small_gateway: RunningGateway,
    backend: FakeBackend,
    fetch: Any,
    cookie: str,
) -> None:
    body = b"[" + b"1," * 498 + b"12]" if content_type == "application/json" else payload(1000)
    assert len(body) == 1000
    headers = {"Cookie": cookie, "Content-Type": content_type}

    if chunked:
        status, answer = await send_chunked(fetch, small_gateway, method, "/api/proxy/upload", headers, body, 100)
    else:
        response = await fetch(f"{small_gateway.url}/api/proxy/upload", method=method, headers=headers, body=body)
        status, answer = response.code, response.body

    assert status == 200, answer
    assert_received(backend, method, "/upload", body)


@pytest.mark.parametrize("content_type", ["application/octet-stream", "application/json", "text/plain"])
@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE"])
@pytest.mark.gen_test
async def test_chunked_body_over_the_limit_is_413_and_never_completes_upstream(
    content_type: str, method: str, small_gateway: RunningGateway, backend: FakeBackend, fetch: Any, cookie: str
) -> None:
    body = b"[" + b"1," * 1000 + b"1]" if content_type == "application/json" else b"y" * 2003
    headers = {"Cookie": cookie, "Content-Type": content_type}

    status, answer = await send_chunked(fetch, small_gateway, method, "/api/proxy/upload", headers, body, 250)

    assert_error_body(status, answer, 413, "payload_too_large")
    await asyncio.sleep(0.1)
    # A streamed upload may have started upstream, but it was cut off: the backend never got the
    # whole body, never more than the limit, and never handled the request.
    for received in backend.requests:
        assert received.body_size <= 1000
        assert received.body_sha256 == ""
    control = await fetch(
        f"{small_gateway.url}/api/proxy/upload", method=method, body=b"ok", headers={"Cookie": cookie}
    )
    assert control.code == 200
    assert backend.requests[-1].body_sha256 == sha256(b"ok")


# -- upstream failures ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "method,body,content_type",
    [
        ("GET", None, None),
        ("POST", b'{"a": 1}', "application/json"),
        ("POST", payload(1_000_000), "application/octet-stream"),
    ],
    ids=["get", "json", "upload-1mb"],
)
@pytest.mark.gen_test
async def test_unreachable_backend_is_502(
    method: str,
    body: bytes | None,
    content_type: str | None,
    start_gateway: Callable[..., RunningGateway],
    fetch: Any,
    cookie: str,
) -> None:
    gateway = start_gateway(f"http://127.0.0.1:{closed_port()}")
    headers = {"Cookie": cookie}
    if content_type:
        headers["Content-Type"] = content_type

    started = time.monotonic()
    response = await fetch(
        f"{gateway.url}/api/proxy/items", method=method, body=body, headers=headers, request_timeout=10
    )

    assert_json_error(response, 502, "bad_gateway")
    assert time.monotonic() - started < 5


async def _never_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await asyncio.sleep(30)


@pytest.fixture
def silent_upstream(io_loop: Any, upstreams: Callable[[Script], Awaitable[RawUpstream]]) -> RawUpstream:
    return io_loop.run_sync(lambda: upstreams(_never_answer))  # type: ignore[no-any-return]


@pytest.mark.parametrize("method,body", [("GET", None), ("POST", b'{"a": 1}'), ("PUT", b"x" * 50_000)])
@pytest.mark.gen_test
async def test_backend_that_never_answers_is_504_quickly(
    method: str,
    body: bytes | None,
    silent_upstream: RawUpstream,
    start_gateway: Callable[..., RunningGateway],
    fetch: Any,
    cookie: str,
) -> None:
    gateway = start_gateway(silent_upstream.url, upstream_response_timeout=0.3)
    content_type = "application/json" if body and body.startswith(b"{") else "application/octet-stream"

    started = time.monotonic()
    response = await fetch(
        f"{gateway.url}/api/proxy/items",
        method=method,
        body=body,
        headers={"Cookie": cookie, "Content-Type": content_type},
        request_timeout=10,
    )
    elapsed = time.monotonic() - started

    assert_json_error(response, 504, "gateway_timeout")
    assert 0.25 <= elapsed < 2, elapsed
    assert silent_upstream.connections == 1  # it was the silence, not a refused connection
    assert silent_upstream.heads[0].startswith(f"{method} /items HTTP/1.1".encode())


@pytest.mark.gen_test
async def test_slow_backend_within_the_response_timeout_is_200(
    backend: FakeBackend, start_gateway: Callable[..., RunningGateway], fetch: Any, cookie: str
) -> None:
    gateway = start_gateway(backend.url, upstream_response_timeout=5)

    started = time.monotonic()
    response = await fetch(f"{gateway.url}/api/proxy/slow?delay=1", headers={"Cookie": cookie})

    assert response.code == 200, response.body
    assert json.loads(response.body) == {"slow": True}
    assert time.monotonic() - started >= 1


# -- nothing the client sends produces a 500 -------------------------------------------------------


def _garbage(cookie: str) -> list[tuple[str, bytes]]:
    """Requests no browser sends; each label names what is wrong with it."""
    c = f"Cookie: {cookie}\r\n".encode()
    close = b"Host: x\r\nConnection: close\r\n"
    get = b"GET /api/proxy/echo HTTP/1.1\r\n" + close
    post = b"POST /api/proxy/echo HTTP/1.1\r\n" + close + c
    big, huge = b"v" * 60_000, b"v" * 200_000

    def get_path(target: bytes) -> bytes:
        return b"GET " + target + b" HTTP/1.1\r\n" + close + c + b"\r\n"

    def post_json(body: bytes) -> bytes:
        return post + f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body

    return [
        ("content-length-abc", post + b"Content-Length: abc\r\n\r\nabc"),
        ("content-length-negative", post + b"Content-Length: -1\r\n\r\n"),
        ("content-length-plus", post + b"Content-Length: +3\r\n\r\nabc"),
        ("content-length-list", post + b"Content-Length: 3, 3\r\n\r\nabc"),
        ("content-length-twice", post + b"Content-Length: 3\r\nContent-Length: 4\r\n\r\nabcd"),
        ("content-length-enormous", post + b"Content-Length: 99999999999999999999999999\r\n\r\nabc"),
        ("content-length-unicode-digit", post + "Content-Length: \u0663\r\n\r\nabc".encode()),
        ("cl-and-te", post + b"Content-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"),
        ("te-bad-chunk-size", post + b"Transfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n"),
        ("te-unknown", post + b"Transfer-Encoding: gzip\r\n\r\nabc"),
        (
            "te-bad-chunked-json",
            post + b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\nq\r\n",
        ),
        ("json-truncated", post_json(b'{"a":')),
        ("json-nul", post_json(b'{"a\x00":1}')),
        ("json-bad-utf8", post_json(b'{"a":"\xff"}')),
        ("json-utf16", post_json('{"a": 1}'.encode("utf-16"))),
        ("expect-100", post + b"Expect: 100-continue\r\nContent-Length: 2\r\n\r\nhi"),
        ("content-type-garbage", post + b"Content-Type: ;;;\xff/+json\r\nContent-Length: 2\r\n\r\n{}"),
        ("header-60k", get + c + b"X-Big: " + big + b"\r\n\r\n"),
        ("header-200k", get + c + b"X-Big: " + huge + b"\r\n\r\n"),
        ("cookie-60k", get + b"Cookie: a=" + big + b"\r\n\r\n"),
        ("header-nul", get + c + b"X-Nul: a\x00b\r\n\r\n"),
        ("header-no-colon", get + c + b"NoColonHere\r\n\r\n"),
        ("header-obs-fold", get + c + b"X-Fold: a\r\n b\r\n\r\n"),
        ("header-latin1", get + c + b"X-Latin: caf\xe9\r\n\r\n"),
        ("request-id-control", get + c + b"X-Request-ID: a\x01b\r\n\r\n"),
        ("cookie-garbage", get + b"Cookie: next-auth.session-token=%%%; =;;; a\r\n\r\n"),
        (
            "cookie-chunks-garbage",
            get + b"Cookie: next-auth.session-token.0=abc; next-auth.session-token.1=\xff\r\n\r\n",
        ),
        ("bearer-garbage", get + b"Authorization: Bearer %zz%ff..\xff\r\n\r\n"),
        ("bearer-jwe-shaped", get + b"Authorization: Bearer a..b.c.d\r\n\r\n"),
        ("bearer-huge", get + b"Authorization: Bearer " + big + b"\r\n\r\n"),
        ("method-weird", b"FOO /api/proxy/echo HTTP/1.1\r\n" + close + c + b"\r\n"),
        ("method-lowercase", b"get /api/proxy/echo HTTP/1.1\r\n" + close + c + b"\r\n"),
        ("method-nul", b"GE\x00T /api/proxy/echo HTTP/1.1\r\n" + close + b"\r\n"),
        ("method-long", b"A" * 5000 + b" /api/proxy/echo HTTP/1.1\r\n" + close + b"\r\n"),
        ("method-connect", b"CONNECT evil.example:443 HTTP/1.1\r\nHost: evil.example:443\r\n\r\n"),
        ("method-pri", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"),
        ("version-bogus", b"GET /api/proxy/echo HTTP/9.9\r\n" + close + b"\r\n"),
        ("version-1.0", b"GET /api/proxy/echo HTTP/1.0\r\n" + c + b"\r\n"),
        ("no-host", b"GET /api/proxy/echo HTTP/1.1\r\nConnection: close\r\n" + c + b"\r\n"),
        ("request-line-spaces", b"GET  /api/proxy/echo  HTTP/1.1\r\n" + close + b"\r\n"),
        ("request-line-lf-only", (b"GET /api/proxy/echo HTTP/1.1\r\n" + close + c + b"\r\n").replace(b"\r\n", b"\n")),
        ("path-bad-escapes", get_path(b"/api/proxy/%zz/%4/%?%zz=%")),
        ("path-not-utf8", get_path(b"/api/proxy/%ff%fe")),
        ("path-overlong-slash", get_path(b"/api/proxy/a%C0%AFb")),
        ("path-raw-latin1", get_path(b"/api/proxy/caf\xe9")),
        ("path-nul-escape", get_path(b"/api/proxy/a%00b")),
        ("path-raw-control", get_path(b"/api/proxy/a\x01b")),
        ("path-asterisk", get_path(b"*")),
        ("path-relative", get_path(b"api/proxy/echo")),
        ("query-raw-latin1", get_path(b"/api/proxy/echo?q=\xff\xfe")),
        ("query-nul-escape", get_path(b"/api/proxy/echo?q=%00&%zz")),
        ("empty-lines-only", b"\r\n\r\n\r\n"),
        ("binary-noise", bytes(range(256)) * 4 + b"\r\n\r\n"),
    ]


GARBAGE_IDS = [label for label, _ in _garbage("x=y")]


@pytest.mark.parametrize("label", GARBAGE_IDS)
@pytest.mark.gen_test
async def test_nothing_a_client_sends_produces_a_500(
    label: str, gateway: RunningGateway, backend: FakeBackend, cookie: str, logs: Any
) -> None:
    request = dict(_garbage(cookie))[label]
    port = port_of(gateway.url)

    response = await raw_exchange(port, request)

    assert response.status is None or response.status < 500, (response.status, response.body)
    assert b"Traceback" not in response.body
    assert b"internal_error" not in response.body
    assert "unhandled error" not in logs.text
    # The gateway is still fine afterwards.
    control = await raw_exchange(
        port, f"GET /api/proxy/still-ok HTTP/1.1\r\nHost: x\r\nConnection: close\r\nCookie: {cookie}\r\n\r\n".encode()
    )
    assert control.status == 200, control.body
    assert backend.requests[-1].path == "/still-ok"
