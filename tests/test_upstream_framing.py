"""How the upstream client frames an upstream's answers (``upstream/http1.py``): the defences
against response smuggling, and the edge cases of RFC 9112 section 6.

A gateway that reads an answer's end at a different byte than its upstream meant can hand one
browser the rest of another's answer, or a forged one, on a reused keep-alive connection. So
every ambiguous or malformed framing must be refused (502 before the head reaches the browser,
a cut body after it) and its connection never reused. Every test goes through a real gateway's
``/api/proxy/<path>`` route, with a session cookie, to a scripted upstream on a real socket
(``tests/fakes/keepalive.py`` numbers its connections; ``tests/fakes/raw.py`` scripts one
connection byte by byte), and asserts what the browser gets and which connection carried it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from tests.conftest import RunningGateway, wait_until
from tests.fakes.backend import payload
from tests.fakes.keepalive import Answer, KeepAliveUpstream, Seen, ok
from tests.fakes.loopback import LoopbackServer
from tests.fakes.raw import RawUpstream, reset
from tests.fakes.sse_scripts import RawClient, chunk
from upstream.client import AbortableRequest, UpstreamClient

Reader = asyncio.StreamReader
Writer = asyncio.StreamWriter
Fetch = Callable[..., Awaitable[Any]]
StartGateway = Callable[..., RunningGateway]
StartKeepAlive = Callable[[Callable[[Seen], Answer]], Awaitable[KeepAliveUpstream]]
StartRaw = Callable[..., Awaitable[RawUpstream]]

CHUNKED_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
SMUGGLED = ok(b'{"smuggled": true}')  # a whole forged answer, hidden in some framing ambiguity


# -- fixtures and helpers ------------------------------------------------------------------


@pytest.fixture
def cookie(session_cookie: Callable[..., str]) -> str:
    return session_cookie()


def now() -> float:
    return asyncio.get_running_loop().time()


def port_of(gateway: RunningGateway) -> int:
    return int(gateway.url.rsplit(":", 1)[1])


def numbered(seen: Seen) -> Answer:
    """Answers each request with its path and the connection it came on."""
    return Answer(ok(json.dumps({"path": seen.path, "connection": seen.connection}).encode()))


def answer_bad_with(data: bytes) -> Callable[[Seen], Answer]:
    """``/bad`` is answered with ``data`` as is; every other path as `numbered`."""

    def answer(seen: Seen) -> Answer:
        return Answer(data) if seen.path == "/bad" else numbered(seen)

    return answer


def head(*lines: str, status: str = "200 OK") -> bytes:
    return ("\r\n".join([f"HTTP/1.1 {status}", *lines]) + "\r\n\r\n").encode()


async def get(fetch: Fetch, gateway: RunningGateway, cookie: str, path: str) -> Any:
    return await fetch(f"{gateway.url}/api/proxy/{path}", headers={"Cookie": cookie})


async def assert_refused_and_dropped(
    keepalive: StartKeepAlive, start_gateway: StartGateway, fetch: Fetch, cookie: str, bad: bytes
) -> None:
    """``bad`` as the answer to ``/bad`` is a 502 JSON error, its connection is closed by the
    gateway, and the next request gets its own answer on a new connection."""
    upstream = await keepalive(answer_bad_with(bad))
    gateway = start_gateway(upstream.url)

    refused = await get(fetch, gateway, cookie, "bad")
    assert refused.code == 502, refused.body
    assert refused.headers["Content-Type"].startswith("application/json")
    assert json.loads(refused.body)["error"] == "bad_gateway"
    assert b"smuggled" not in refused.body

    after = await get(fetch, gateway, cookie, "next")
    assert after.code == 200, after.body
    assert json.loads(after.body) == {"path": "/next", "connection": 2}
    assert [(s.path, s.connection) for s in upstream.seen] == [("/bad", 1), ("/next", 2)]
    assert await wait_until(lambda: upstream.closed_connections == 1, 2), "the gateway kept the bad connection open"


async def assert_accepted_and_reused(
    keepalive: StartKeepAlive, start_gateway: StartGateway, fetch: Fetch, cookie: str, good: bytes, body: bytes
) -> Any:
    """``good`` as the answer to ``/bad`` reaches the browser with exactly ``body``, and its
    connection, read exactly to the end, carries the next request. Returns the response."""
    upstream = await keepalive(answer_bad_with(good))
    gateway = start_gateway(upstream.url)

    first = await get(fetch, gateway, cookie, "bad")
    assert first.code == 200, first.body
    assert first.body == body

    after = await get(fetch, gateway, cookie, "next")
    assert json.loads(after.body) == {"path": "/next", "connection": 1}
    assert upstream.connections == 1
    return first


async def relay_until_cut(
    start_gateway: StartGateway, upstreams: StartRaw, cookie: str, first: bytes, then: bytes
) -> tuple[RawClient, RawUpstream, float]:
    """A chunked 200 whose upstream sends ``first`` (after the head), then ``then``, then stays
    open and silent: any cut is the gateway's own doing, from the bytes alone. Returns the
    browser after the gateway closed it, the upstream, and how long the body took to end."""

    async def script(reader: Reader, writer: Writer) -> None:
        writer.write(CHUNKED_HEAD + first)
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(then)
        await writer.drain()
        await asyncio.sleep(30)

    upstream = await upstreams(script)
    gateway = start_gateway(upstream.url, stream_idle_timeout=5)
    client = await RawClient.open(port_of(gateway), "/api/proxy/file", cookie)
    await asyncio.wait_for(client.read_head(), 2)
    assert client.status == 200 and client.chunked
    started = now()
    try:
        await asyncio.wait_for(client.read_to_end(), 3)
    except TimeoutError:
        pytest.fail(f"the body was neither ended nor cut; the browser got {client.body!r} and waits")
    return client, upstream, now() - started


# -- 1. Content-Length and Transfer-Encoding together -------------------------------------


@pytest.mark.parametrize(
    "bad",
    [
        pytest.param(
            head("Content-Length: 5", "Transfer-Encoding: chunked") + b"0\r\n\r\n" + SMUGGLED,
            id="length-first",
        ),
        pytest.param(
            head("Transfer-Encoding: chunked", "Content-Length: 40") + b"0\r\n\r\n" + SMUGGLED,
            id="chunked-first",
        ),
        pytest.param(head("Content-Length: 0", "Transfer-Encoding: chunked") + chunk(b"hello"), id="zero-length"),
    ],
)
@pytest.mark.gen_test(timeout=10)
async def test_an_answer_with_both_length_and_chunking_is_refused_and_its_connection_dropped(
    bad: bytes, keepalive: StartKeepAlive, start_gateway: StartGateway, fetch: Fetch, cookie: str
) -> None:
    """The classic CL.TE / TE.CL desync: the gateway and another hop would end the body at
    different bytes, and the leftover (here a forged answer) would answer the next request."""
    await assert_refused_and_dropped(keepalive, start_gateway, fetch, cookie, bad)


@pytest.mark.gen_test(timeout=10)
async def test_a_malformed_answer_on_a_reused_connection_is_refused_and_not_sent_again(
    keepalive: StartKeepAlive, start_gateway: StartGateway, fetch: Fetch, cookie: str
) -> None:
    """The resend of a GET is for a pooled connection the upstream closed as the request went
    out (``UpstreamClient.fetch``). A malformed answer is an answer, not a dead connection:
    the upstream already handled the request once, and sending it again doubles its work."""
    bad = head("Content-Length: 5", "Transfer-Encoding: chunked") + b"0\r\n\r\n"
    upstream = await keepalive(answer_bad_with(bad))
    gateway = start_gateway(upstream.url)

    assert (await get(fetch, gateway, cookie, "warm")).code == 200
    refused = await get(fetch, gateway, cookie, "bad")

    assert refused.code == 502 and json.loads(refused.body)["error"] == "bad_gateway"
    assert [(s.path, s.connection) for s in upstream.seen] == [("/warm", 1), ("/bad", 1)]


# -- 2. Content-Length values -------------------------------------------------------------------


@pytest.mark.parametrize(
    "lengths",
    [
        pytest.param(["5", "6"], id="two-headers-differ"),
        pytest.param(["5, 6"], id="list-differs"),
        pytest.param(["5", "5, 6"], id="list-and-header-differ"),
        pytest.param(["+5"], id="plus-sign"),
        pytest.param(["0x5"], id="hex"),
        pytest.param(["-1"], id="negative"),
        pytest.param(["5 5"], id="inner-space"),
        pytest.param(["5.0"], id="decimal"),
        pytest.param([""], id="empty"),
        pytest.param(["5;"], id="trailing-junk"),
        pytest.param(["9" * 20], id="twenty-digits"),
    ],
)
@pytest.mark.gen_test(timeout=10)
async def test_an_ambiguous_or_malformed_content_length_is_refused(
    lengths: list[str], keepalive: StartKeepAlive, start_gateway: StartGateway, fetch: Fetch, cookie: str
) -> None:
    """Parsers disagree on what ``+5`` or ``5, 6`` means (Python's ``int`` takes ``+5``,
    ``-1`` and ``5_0``); the only safe reading of a length that is not plain digits, or of
    two lengths, is none. The body sent is 5 bytes followed by a forged answer."""
    bad = head(*(f"Content-Length: {value}" for value in lengths)) + b"hello" + SMUGGLED
    await assert_refused_and_dropped(keepalive, start_gateway, fetch, cookie, bad)


@pytest.mark.parametrize(
    "lengths",
    [
        pytest.param(["5"], id="one"),
        pytest.param(["5", "5"], id="two-equal-headers"),
        pytest.param(["5, 5"], id="equal-list"),
        pytest.param(["5 "], id="trailing-whitespace"),  # OWS around a field value is not part of it
    ],
)
@pytest.mark.gen_test(timeout=10)
async def test_identical_content_lengths_frame_the_body_exactly(
    lengths: list[str], keepalive: StartKeepAlive, start_gateway: StartGateway, fetch: Fetch, cookie: str
) -> None:
    """RFC 9110 section 8.6 lets a recipient take repeated identical lengths as one; the body
    ends after exactly those 5 bytes, so the connection is read to its end and is reused."""
    good = head("Content-Type: text/plain", *(f"Content-Length: {value}" for value in lengths)) + b"hello"
    await assert_accepted_and_reused(keepalive, start_gateway, fetch, cookie, good, b"hello")


# -- 3. Transfer-Encoding values ------------------------------------------------------------------


@pytest.mark.parametrize(
    "encodings",
    [
        pytest.param(["gzip, chunked"], id="gzip-chunked"),
        pytest.param(["chunked, gzip"], id="chunked-not-last"),
        pytest.param(["identity"], id="identity"),
        pytest.param(["chunked, chunked"], id="chunked-twice"),
        pytest.param(["gzip", "chunked"], id="two-headers"),
        pytest.param(["xchunked"], id="lookalike"),
        pytest.param([""], id="empty"),
    ],
)
@pytest.mark.gen_test(timeout=10)
async def test_a_transfer_encoding_other_than_exactly_chunked_is_refused(
    encodings: list[str], keepalive: StartKeepAlive, start_gateway: StartGateway, fetch: Fetch, cookie: str
) -> None:
    """Only ``chunked`` alone is framed the same way by every hop; anything else (an unknown
    coding, chunked applied twice or not last) is how TE.TE desyncs are made."""
    bad = head(*(f"Transfer-Encoding: {value}" for value in encodings)) + chunk(b"hello") + b"0\r\n\r\n" + SMUGGLED
    await assert_refused_and_dropped(keepalive, start_gateway, fetch, cookie, bad)


@pytest.mark.parametrize("encoding", ["chunked", "Chunked", "CHUNKED"])
@pytest.mark.gen_test(timeout=10)
async def test_chunked_in_any_case_is_accepted(
    encoding: str, keepalive: StartKeepAlive, start_gateway: StartGateway, fetch: Fetch, cookie: str
) -> None:
    """Positive control for the refusals above: transfer-coding names are case-insensitive."""
    good = head("Content-Type: text/plain", f"Transfer-Encoding: {encoding}") + chunk(b"hello") + b"0\r\n\r\n"
    await assert_accepted_and_reused(keepalive, start_gateway, fetch, cookie, good, b"hello")


# -- 4. chunk framing mid-body ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad_line",
    [
        pytest.param(b"zz\r\nhello\r\n0\r\n\r\n", id="not-hex"),
        pytest.param(b"0x5\r\nhello\r\n0\r\n\r\n", id="0x-prefix"),
        pytest.param(b"-5\r\nhello\r\n0\r\n\r\n", id="negative"),
        pytest.param(b"+5\r\nhello\r\n0\r\n\r\n", id="plus-sign"),
        pytest.param(b"\r\nhello\r\n0\r\n\r\n", id="empty"),
        pytest.param(b"1" * 16 + b"\r\nhello\r\n0\r\n\r\n", id="sixteen-digits"),
        pytest.param(b"5;" + b"e" * 5000, id="too-long-unterminated"),
        pytest.param(b"5;" + b"e" * 5000 + b"\r\nhello\r\n0\r\n\r\n", id="too-long-in-one-piece"),
        pytest.param(b"0\r\nX-Trailer: " + b"t" * 5000, id="trailer-too-long-unterminated"),
        pytest.param(b"0\r\nX-Trailer: " + b"t" * 5000 + b"\r\n\r\n", id="trailer-too-long-in-one-piece"),
    ],
)
@pytest.mark.gen_test(timeout=10)
async def test_a_bad_chunk_size_line_cuts_the_body_off(
    bad_line: bytes, start_gateway: StartGateway, upstreams: StartRaw, cookie: str
) -> None:
    """The head is already with the browser, so the only honest signal left is a body that
    visibly ends short: the connection closed with no terminating chunk. A size or trailer
    line longer than 4096 bytes (``MAX_CHUNK_LINE``) is refused whether or not its CRLF came
    in the same read: a limit must not depend on how TCP happened to segment the bytes."""
    client, upstream, took = await relay_until_cut(start_gateway, upstreams, cookie, chunk(b"hello"), bad_line)

    assert client.body == b"hello", client.pieces
    assert client.cut and not client.ended_cleanly
    assert took < 1.0  # the bytes alone ended it, not the 5 s idle timeout
    await asyncio.wait_for(upstream.closed.wait(), 1)


@pytest.mark.parametrize(
    "bad_data",
    [
        pytest.param(b"5\r\nhelloXX0\r\n\r\n", id="junk-after-data"),
        pytest.param(b"5\r\nhello world\r\n0\r\n\r\n", id="data-longer-than-size"),
        pytest.param(b"5\r\nhello\n0\r\n\r\n", id="bare-lf"),
    ],
)
@pytest.mark.gen_test(timeout=10)
async def test_chunk_data_not_followed_by_crlf_cuts_the_body_off(
    bad_data: bytes, start_gateway: StartGateway, upstreams: StartRaw, cookie: str
) -> None:
    """A chunk whose data does not end with CRLF where its size says means the two sides
    disagree about the size: nothing after it may be relayed, and the body must not end."""
    client, _, took = await relay_until_cut(start_gateway, upstreams, cookie, chunk(b"first"), bad_data)

    assert client.body in (b"first", b"firsthello"), client.pieces  # never " world", never a 0 chunk
    assert client.cut and not client.ended_cleanly
    assert took < 1.0


@pytest.mark.gen_test(timeout=10)
async def test_chunk_extensions_and_trailers_are_accepted_and_not_relayed(
    keepalive: StartKeepAlive, start_gateway: StartGateway, fetch: Fetch, cookie: str
) -> None:
    """Extensions and trailer fields are legal and carry nothing the browser needs; the body
    is exactly the chunks' data, and the trailer section's end is the answer's end."""
    good = (
        head("Content-Type: text/plain", "Transfer-Encoding: chunked", "Trailer: X-Checksum")
        + b"5;ext=1\r\nhello\r\n"
        + b'6 ; name="quoted;value" ; flag\r\n world\r\n'
        + b"0;last=yes\r\nX-Checksum: abc\r\nX-Other: 2\r\n\r\n"
    )
    first = await assert_accepted_and_reused(keepalive, start_gateway, fetch, cookie, good, b"hello world")
    assert "X-Checksum" not in first.headers and "Trailer" not in first.headers


@pytest.mark.gen_test(timeout=10)
async def test_bytes_after_the_last_chunk_never_answer_the_next_request(
    keepalive: StartKeepAlive, start_gateway: StartGateway, fetch: Fetch, cookie: str
) -> None:
    """Like bytes past a Content-Length (test_upstream_pool.py), for a chunked answer."""
    upstream = await keepalive(
        answer_bad_with(head("Transfer-Encoding: chunked") + chunk(b"{}") + b"0\r\n\r\n" + SMUGGLED)
    )
    gateway = start_gateway(upstream.url)

    first = await get(fetch, gateway, cookie, "bad")
    second = await get(fetch, gateway, cookie, "next")

    assert first.code == 200 and first.body == b"{}"
    assert json.loads(second.body) == {"path": "/next", "connection": 2}


# -- 5. the response head -----------------------------------------------------------------------------


@pytest.mark.parametrize("whole", [True, False], ids=["terminated", "never-ending"])
@pytest.mark.gen_test(timeout=10)
async def test_a_response_head_over_64_kib_is_refused(
    whole: bool, start_gateway: StartGateway, upstreams: StartRaw, fetch: Fetch, cookie: str
) -> None:
    """A head is buffered whole before anything is relayed; its size must be bounded, whether
    it ends (just past the limit) or is a stream of header bytes that never ends."""

    async def script(reader: Reader, writer: Writer) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n")
        for _ in range(70):  # 70 KiB of header lines, more than MAX_HEAD_BYTES
            writer.write(b"X-Pad: " + b"p" * 1014 + b"\r\n")
            await writer.drain()
        if whole:
            writer.write(b"Content-Length: 2\r\n\r\nok")
            await writer.drain()
        await asyncio.sleep(30)

    upstream = await upstreams(script)
    gateway = start_gateway(upstream.url, upstream_response_timeout=5)
    started = now()
    response = await get(fetch, gateway, cookie, "big")

    assert response.code == 502, response.body
    assert json.loads(response.body)["error"] == "bad_gateway"
    assert now() - started < 2  # refused on size, not after the 5 s response timeout
    await asyncio.wait_for(upstream.closed.wait(), 1)


@pytest.mark.gen_test(timeout=10)
async def test_a_response_head_just_under_64_kib_is_accepted(
    start_gateway: StartGateway, upstreams: StartRaw, fetch: Fetch, cookie: str
) -> None:
    """Positive control for the limit: 60 KiB of head is fine (in a header the gateway drops,
    so the browser's own client's head limit is not what is tested)."""

    async def script(reader: Reader, writer: Writer) -> None:
        writer.write(head("Content-Type: text/plain", "Set-Cookie: x=" + "c" * 60 * 1024, "Content-Length: 2") + b"ok")
        await writer.drain()

    upstream = await upstreams(script)
    gateway = start_gateway(upstream.url)
    response = await get(fetch, gateway, cookie, "big")

    assert response.code == 200 and response.body == b"ok"
    assert "Set-Cookie" not in response.headers


# -- 6. interim (1xx) answers -----------------------------------------------------------------------


@pytest.mark.gen_test(timeout=10)
async def test_interim_answers_are_skipped_and_only_the_final_one_is_relayed(
    keepalive: StartKeepAlive, start_gateway: StartGateway, fetch: Fetch, cookie: str
) -> None:
    """100 Continue and 103 Early Hints precede the real answer on the same connection; the
    browser gets the final status, and none of the interim heads' headers."""
    interim = head(status="100 Continue") + head(
        "Link: </style.css>; rel=preload; as=style", "X-Early: 1", status="103 Early Hints"
    )
    good = interim + head("Content-Type: text/plain", "Content-Length: 5") + b"hello"
    first = await assert_accepted_and_reused(keepalive, start_gateway, fetch, cookie, good, b"hello")

    assert "Link" not in first.headers and "X-Early" not in first.headers
    assert first.headers["Content-Type"] == "text/plain"


@pytest.mark.gen_test(timeout=10)
async def test_ten_interim_answers_are_allowed(
    keepalive: StartKeepAlive, start_gateway: StartGateway, fetch: Fetch, cookie: str
) -> None:
    """The boundary of ``MAX_INTERIM``: exactly ten interim heads still lead to the answer."""
    good = head(status="102 Processing") * 10 + head("Content-Length: 5") + b"hello"
    await assert_accepted_and_reused(keepalive, start_gateway, fetch, cookie, good, b"hello")


@pytest.mark.parametrize(
    "bad",
    [
        pytest.param(head("Connection: Upgrade", "Upgrade: websocket", status="101 Switching Protocols"), id="101"),
        pytest.param(head(status="102 Processing") * 11 + head("Content-Length: 5") + b"hello", id="eleven-interim"),
        pytest.param(head("Content-Length: 5", status="100 Continue") + b"hello" + ok(b"{}"), id="1xx-with-length"),
    ],
)
@pytest.mark.gen_test(timeout=10)
async def test_a_protocol_switch_or_endless_interim_answers_are_refused(
    bad: bytes, keepalive: StartKeepAlive, start_gateway: StartGateway, fetch: Fetch, cookie: str
) -> None:
    """The gateway never asked to switch protocols: after a 101 the bytes are not HTTP. And an
    upstream may not hold the exchange with interim heads forever."""
    await assert_refused_and_dropped(keepalive, start_gateway, fetch, cookie, bad)


# -- 7. answers without a body ----------------------------------------------------------------------


@pytest.mark.parametrize("status", ["204 No Content", "304 Not Modified"], ids=lambda status: status.split()[0])
@pytest.mark.gen_test(timeout=10)
async def test_no_body_answers_with_a_content_length_end_at_their_head(
    status: str, keepalive: StartKeepAlive, start_gateway: StartGateway, fetch: Fetch, cookie: str
) -> None:
    """204 and 304 never have a body, whatever Content-Length says (a 304's is the length the
    200 would have had): the answer ends at its head, and the connection is reused at once. A
    client waiting for 5 body bytes would hang, or take the next answer's first 5 bytes."""
    no_body = head('ETag: "v1"', "Content-Length: 5", status=status)
    upstream = await keepalive(answer_bad_with(no_body))
    gateway = start_gateway(upstream.url, upstream_response_timeout=2)

    started = now()
    try:
        first = await get(fetch, gateway, cookie, "bad")
        browser_saw: Any = (first.code, first.body)
    except Exception as exc:  # the browser's connection failed: asserted last, after the upstream side
        browser_saw = exc
    after = await get(fetch, gateway, cookie, "next")

    # The upstream side: the answer ended at its head and its connection carried the next request.
    assert now() - started < 1
    assert json.loads(after.body) == {"path": "/next", "connection": 1}
    assert upstream.connections == 1
    # The browser side.
    assert browser_saw == (int(status.split()[0]), b"")


@pytest.mark.gen_test(timeout=10)
async def test_a_204_as_the_browser_sees_it_has_no_length_and_the_connection_stays_usable(
    keepalive: StartKeepAlive, start_gateway: StartGateway, cookie: str
) -> None:
    """What a 204 with ``Content-Length: 5`` upstream looks like on the browser's socket: a 204
    head (RFC 9110 section 8.6: a server MUST NOT send Content-Length in a 204), and the
    browser's keep-alive connection still usable for its next request."""
    upstream = await keepalive(answer_bad_with(head("Content-Length: 5", status="204 No Content")))
    gateway = start_gateway(upstream.url)
    port = port_of(gateway)

    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        request = f"GET /api/proxy/{{}} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nCookie: {cookie}\r\n\r\n"
        writer.write(request.format("bad").encode())
        raw_head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 2)
        assert raw_head.startswith(b"HTTP/1.1 204 "), raw_head
        assert b"content-length" not in raw_head.lower(), raw_head

        writer.write(request.format("next").encode())
        next_head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 2)
        assert next_head.startswith(b"HTTP/1.1 200 "), next_head
        length = int(re.search(rb"(?i)content-length: *(\d+)", next_head).group(1))  # type: ignore[union-attr]
        assert json.loads(await reader.readexactly(length))["path"] == "/next"
    finally:
        writer.close()


@pytest.mark.gen_test(timeout=10)
async def test_a_body_sent_after_a_204_never_answers_the_next_request(
    keepalive: StartKeepAlive, start_gateway: StartGateway, fetch: Fetch, cookie: str
) -> None:
    """An upstream that sends a body after a 204 anyway is out of step: those bytes (here a
    forged answer) must be dropped with their connection, not read as the next answer."""
    upstream = await keepalive(answer_bad_with(head(status="204 No Content") + b"hello" + SMUGGLED))
    gateway = start_gateway(upstream.url)

    first = await get(fetch, gateway, cookie, "bad")
    await asyncio.sleep(0.05)
    after = await get(fetch, gateway, cookie, "next")

    assert first.body == b""
    assert json.loads(after.body) == {"path": "/next", "connection": 2}


@pytest.mark.parametrize("extra", [b"", b"hello" + SMUGGLED], ids=["no-body", "body-anyway"])
@pytest.mark.gen_test(timeout=10)
async def test_an_answer_to_head_has_no_body_whatever_its_length(extra: bytes, keepalive: StartKeepAlive) -> None:
    """``/api/proxy`` does not accept HEAD (405), so this one drives the gateway's client
    directly: the answer to a HEAD ends at its head, and its connection is reused, unless
    bytes followed it."""

    def answer(seen: Seen) -> Answer:
        if seen.method == "HEAD":
            return Answer(head("Content-Type: text/plain", "Content-Length: 5") + extra)
        return numbered(seen)

    upstream = await keepalive(answer)
    client = UpstreamClient(connect_timeout=5)
    try:
        headed = await asyncio.wait_for(client.fetch(AbortableRequest(f"{upstream.url}/h", method="HEAD")), 2)
        await asyncio.sleep(0.05)
        after = await asyncio.wait_for(client.fetch(AbortableRequest(f"{upstream.url}/g")), 2)
    finally:
        client.close()

    assert headed.code == 200 and headed.body == b"" and headed.headers["Content-Length"] == "5"
    assert json.loads(after.body) == {"path": "/g", "connection": 2 if extra else 1}


# -- 8. answers that end the connection ---------------------------------------------------------------


@pytest.mark.parametrize("connection", [None, "keep-alive"])
@pytest.mark.gen_test(timeout=10)
async def test_an_http_1_0_answer_is_relayed_whole_and_its_connection_not_reused(
    connection: str | None, keepalive: StartKeepAlive, start_gateway: StartGateway, fetch: Fetch, cookie: str
) -> None:
    """HTTP/1.0 keep-alive is an opt-in the client never offered (it speaks 1.1), so a 1.0
    answer's connection is done after it, even when the upstream leaves it open and says
    ``keep-alive``."""
    extra = [f"Connection: {connection}"] if connection else []
    upstream = await keepalive(answer_bad_with(ok(b'{"old": true}', *extra, version="HTTP/1.0")))
    gateway = start_gateway(upstream.url)

    first = await get(fetch, gateway, cookie, "bad")
    after = await get(fetch, gateway, cookie, "next")

    assert first.code == 200 and first.body == b'{"old": true}'
    assert json.loads(after.body) == {"path": "/next", "connection": 2}
    assert await wait_until(lambda: upstream.closed_connections == 1, 2)  # the gateway closed it


@pytest.mark.parametrize("ending", ["fin", "reset"])
@pytest.mark.gen_test(timeout=10)
async def test_a_close_delimited_body_ends_whole_on_fin_and_is_cut_on_reset(
    ending: str, start_gateway: StartGateway, upstreams: StartRaw, cookie: str
) -> None:
    """Without a length or chunking, the body ends where the upstream closes. A FIN is that end
    (the browser's chunked body is completed); a reset is a failure (cut, never completed)."""
    body = payload(30_000)

    async def script(reader: Reader, writer: Writer) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n\r\n" + body)
        await writer.drain()
        await asyncio.sleep(0.1)
        if ending == "fin":
            writer.close()
        else:
            reset(writer)

    upstream = await upstreams(script)
    gateway = start_gateway(upstream.url, stream_idle_timeout=5)
    client = await RawClient.open(port_of(gateway), "/api/proxy/file", cookie)
    await asyncio.wait_for(client.read_head(), 2)
    assert client.status == 200 and client.chunked  # the gateway frames it for the browser
    await asyncio.wait_for(client.read_to_end(), 3)

    assert client.body == body
    if ending == "fin":
        assert client.ended_cleanly and not client.cut
    else:
        assert client.cut and not client.ended_cleanly


# -- 9. an idle pooled connection -----------------------------------------------------------------------


@pytest.mark.gen_test(timeout=10)
async def test_a_pooled_connection_the_upstream_wrote_to_while_idle_is_not_used(
    start_gateway: StartGateway, upstreams: StartRaw, fetch: Fetch, cookie: str
) -> None:
    """Bytes that arrive while nothing was asked are out of step: used, they would be read as
    the answer to the next request. That connection is skipped; the next GET gets its own."""
    number = [0]

    async def script(reader: Reader, writer: Writer) -> None:
        number[0] += 1
        writer.write(ok(json.dumps({"connection": number[0]}).encode()))
        await writer.drain()
        await asyncio.sleep(0.1)
        writer.write(SMUGGLED)  # unasked, while the gateway holds the connection idle
        await writer.drain()
        await asyncio.sleep(30)

    upstream = await upstreams(script)
    gateway = start_gateway(upstream.url)

    first = await get(fetch, gateway, cookie, "a")
    assert json.loads(first.body) == {"connection": 1}
    assert gateway.ctx.upstream.idle_connections == 1  # control: it was pooled
    assert await wait_until(lambda: gateway.ctx.upstream.idle_connections == 0, 2)
    second = await get(fetch, gateway, cookie, "b")

    assert second.code == 200 and json.loads(second.body) == {"connection": 2}
    assert upstream.connections == 2
    assert upstream.bytes_after_head == 0  # nothing was sent on the first connection
    assert await wait_until(lambda: len(upstream.closed_at) >= 1, 2)  # it was closed, not kept


# -- 10. chunked uploads ----------------------------------------------------------------------------------


@dataclasses.dataclass
class Upload:
    headers: dict[str, str]
    body: bytes  # decoded by the framing the headers announced
    error: str | None  # the first framing violation, if any
    after: bytes  # whatever arrived after the framed body


class CaptureUpstream(LoopbackServer):
    """One request per connection, its body read strictly by its own framing and recorded."""

    def __init__(self) -> None:
        self.uploads: list[Upload] = []

    async def _serve(self, reader: Reader, writer: Writer) -> None:
        try:
            raw = await reader.readuntil(b"\r\n\r\n")
            lines = raw.decode("latin-1").split("\r\n")[1:]
            headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines if line)}
            body, error = await self._read_body(reader, headers)
            try:
                after = await asyncio.wait_for(reader.read(65536), 0.1)
            except TimeoutError:
                after = b""
            self.uploads.append(Upload(headers, body, error, after))
            writer.write(ok(json.dumps({"received": len(body)}).encode(), "Connection: close"))
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError) as exc:
            self.uploads.append(Upload({}, b"", repr(exc), b""))
        finally:
            writer.close()

    @staticmethod
    async def _read_body(reader: Reader, headers: dict[str, str]) -> tuple[bytes, str | None]:
        if "transfer-encoding" in headers and "content-length" in headers:
            return b"", "both Transfer-Encoding and Content-Length"
        if headers.get("transfer-encoding") == "chunked":
            body = bytearray()
            while True:
                size_line = (await reader.readuntil(b"\r\n"))[:-2]
                if not re.fullmatch(rb"[0-9a-fA-F]+", size_line):
                    return bytes(body), f"bad chunk size line {size_line[:40]!r}"
                size = int(size_line, 16)
                if size == 0:
                    break
                data = await reader.readexactly(size + 2)
                if data[-2:] != b"\r\n":
                    return bytes(body), "chunk data not followed by CRLF"
                body += data[:-2]
            while await reader.readuntil(b"\r\n") != b"\r\n":  # trailer fields, if any
                pass
            return bytes(body), None
        if "transfer-encoding" in headers:
            return b"", f"unexpected Transfer-Encoding {headers['transfer-encoding']!r}"
        return await reader.readexactly(int(headers.get("content-length", "0"))), None


@pytest.mark.parametrize(
    ("content_type", "framing"),
    [("application/octet-stream", "chunked"), ("application/json", "length")],
    ids=["streamed", "buffered-json"],
)
@pytest.mark.gen_test(timeout=10)
async def test_a_chunked_upload_reaches_the_upstream_intact_and_correctly_framed(
    content_type: str, framing: str, start_gateway: StartGateway, cookie: str
) -> None:
    """A browser's chunked body is re-framed for the upstream: streamed bodies as chunked,
    buffered JSON bodies with a Content-Length. Either way the upstream must decode exactly
    the browser's bytes, including ones that look like chunk framing and a request, and
    nothing may follow the body."""
    trap = b"\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"
    if framing == "chunked":
        body = payload(100_000) + trap + payload(50_000, seed=8)
    else:
        body = json.dumps({"trap": trap.decode(), "pad": "x" * 100_000}).encode()
    pieces = [body[:1], body[1:100], body[100:70_000], body[70_000:]]

    upstream = await CaptureUpstream().start()
    try:
        gateway = start_gateway(upstream.url)
        client = await RawClient.open(
            port_of(gateway),
            "/api/proxy/upload",
            cookie,
            method="POST",
            headers=[f"Content-Type: {content_type}", "Transfer-Encoding: chunked"],
        )
        for piece in pieces:
            client.writer.write(chunk(piece))
            await client.writer.drain()
            await asyncio.sleep(0.01)
        client.writer.write(b"0\r\n\r\n")
        await client.writer.drain()

        await asyncio.wait_for(client.read_head(), 3)
        answer = await asyncio.wait_for(client.reader.readexactly(int(client.headers["content-length"])), 2)
        client.close()
    finally:
        await upstream.close()

    assert client.status == 200, answer
    assert json.loads(answer) == {"received": len(body)}
    assert len(upstream.uploads) == 1, upstream.uploads  # no second request, smuggled or not
    upload = upstream.uploads[0]
    assert upload.error is None, upload.error
    if framing == "chunked":
        assert upload.headers.get("transfer-encoding") == "chunked" and "content-length" not in upload.headers
    else:
        assert upload.headers.get("content-length") == str(len(body)) and "transfer-encoding" not in upload.headers
    assert upload.body == body
    assert upload.after == b""
