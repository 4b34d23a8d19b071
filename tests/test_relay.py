"""The relay end to end: a real gatehouse between a raw-socket browser and a scripted upstream.

Every test runs the gateway in-process on a real socket, in front of a `RawUpstream` (or the
`FakeBackend`) on a real socket, and looks at what the browser side actually receives and
when (`RawClient` timestamps every piece with the loop clock `RawUpstream` also uses).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from tests.conftest import RunningGateway, closed_port, wait_until
from tests.fakes.backend import FakeBackend, payload
from tests.fakes.raw import reset
from tests.fakes.sse_scripts import RawClient, chunk, octet_head, sse_head

Reader = asyncio.StreamReader
Writer = asyncio.StreamWriter
StartGateway = Callable[..., RunningGateway]

KEEP_ALIVE = b": keep-alive\n\n"
MIB = 1 << 20


# -- fixtures and helpers ------------------------------------------------------------------


@pytest.fixture
def cookie(session_cookie: Callable[..., str]) -> str:
    return session_cookie()


def port_of(gateway: RunningGateway) -> int:
    return int(gateway.url.rsplit(":", 1)[1])


def now() -> float:
    return asyncio.get_running_loop().time()


async def send(writer: Writer, data: bytes) -> float:
    """Write ``data`` upstream-side and return the loop time it was handed to the socket."""
    writer.write(data)
    await writer.drain()
    return now()


def parse_error_event(data: bytes) -> dict[str, Any]:
    """The JSON of a gateway ``event: error`` SSE event (asserting its exact framing: it follows
    the last whole event directly, a held-back partial event being dropped, not ended)."""
    assert data.startswith(b"event: error\ndata: "), data
    assert data.endswith(b"\n\n") and data.count(b"\n") == 3, data
    parsed: dict[str, Any] = json.loads(data[len(b"event: error\ndata: ") : -2])
    return parsed


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


async def open_stream(gateway: RunningGateway, cookie: str, path: str = "/api/proxy/stream", **kw: Any) -> RawClient:
    client = await RawClient.open(port_of(gateway), path, cookie, **kw)
    await asyncio.wait_for(client.read_head(), 5)
    return client


# -- 1. event by event -----------------------------------------------------------------------


@pytest.mark.gen_test(timeout=10)
async def test_sse_events_arrive_one_by_one_and_headers_arrive_before_the_first(
    start_gateway: StartGateway, upstreams: Any, cookie: str
) -> None:
    events = [f'data: {{"n": {n}}}\n\n'.encode() for n in range(5)]
    sent: dict[str, float] = {}

    async def script(reader: Reader, writer: Writer) -> None:
        sent["head"] = await send(writer, sse_head())
        await asyncio.sleep(0.5)
        for n, event in enumerate(events):
            sent[f"event{n}"] = await send(writer, event)
            await asyncio.sleep(0.2)
        writer.close()

    upstream = await upstreams(script)
    gateway = start_gateway(upstream.url)
    client = await open_stream(gateway, cookie)

    assert client.status == 200
    assert client.headers["content-type"] == "text/event-stream"
    assert client.headers["cache-control"] == "no-cache, no-transform"
    assert client.headers["x-accel-buffering"] == "no"
    assert "content-encoding" not in client.headers
    await client.read_to_end()

    # The head reached the browser while the upstream was still silent, promptly.
    assert client.head_at - sent["head"] < 0.2
    assert client.head_at < sent["event0"]
    # One piece per event, each on arrival: a burst at the end would be ~1 s late for event 0.
    assert [data for _, data in client.pieces] == events
    delays = [round(at - sent[f"event{n}"], 3) for n, (at, _) in enumerate(client.pieces)]
    assert all(delay < 0.15 for delay in delays), delays
    assert client.ended_cleanly


# -- 2. framing ---------------------------------------------------------------------------------

FRAMING_WRITES = [
    b'event: message\ndata: {"answer": "Hel"}\n\n',  # a multi-field event (Dify)
    b'data: {"a"',  # an event split mid-line ...
    b": 1}\n\n",  # ... completed 300 ms later
    b'event: ping\n\nid: 7\ndata: {"n": 7}\n\nevent: message\ndata: {"answer": "lo"}\n\n',  # coalesced, bare ping
    b'id: 8\r\ndata: {"crlf": true}\r\n\r',  # CRLF endings, split inside the blank line ...
    b"\n",  # ... completed 100 ms later
    b"event: message_end\r\ndata: {}\r\n\r\n",
]


@pytest.mark.gen_test(timeout=10)
async def test_sse_bytes_are_relayed_unaltered_and_partial_events_are_held_back(
    start_gateway: StartGateway, upstreams: Any, cookie: str
) -> None:
    sent: list[float] = []

    async def script(reader: Reader, writer: Writer) -> None:
        await send(writer, sse_head(chunked=True))
        for n, data in enumerate(FRAMING_WRITES):
            sent.append(await send(writer, chunk(data)))
            await asyncio.sleep(0.3 if n == 1 else 0.1)
        await send(writer, b"0\r\n\r\n")

    upstream = await upstreams(script)
    gateway = start_gateway(upstream.url)
    client = await open_stream(gateway, cookie)
    await client.read_to_end()

    assert client.body == b"".join(FRAMING_WRITES)
    assert client.ended_cleanly

    def received_before(moment: float) -> bytes:
        return b"".join(data for at, data in client.pieces if at < moment)

    # Positive control: the first event arrived before the half event was even sent ...
    assert received_before(sent[1]) == FRAMING_WRITES[0]
    # ... yet during the 300 ms the half event waited upstream, not a byte of it arrived.
    assert received_before(sent[2]) == FRAMING_WRITES[0]
    # It arrived whole, as soon as it was complete.
    completed_at, completed = client.pieces[1]
    assert completed == FRAMING_WRITES[1] + FRAMING_WRITES[2]
    assert completed_at - sent[2] < 0.15
    # Same for the event whose CRLF blank line was split across writes.
    assert received_before(sent[5]) == b"".join(FRAMING_WRITES[:4])


# -- 3. backpressure -----------------------------------------------------------------------------


@pytest.mark.gen_test(timeout=20)
async def test_slow_reader_throttles_the_upstream_without_buffering(
    start_gateway: StartGateway, upstreams: Any, cookie: str
) -> None:
    total = 50 * MIB
    block = bytes(64 * 1024)
    written = [0]

    async def script(reader: Reader, writer: Writer) -> None:
        await send(writer, octet_head(total))
        while written[0] < total:
            writer.write(block)
            await writer.drain()
            written[0] += len(block)

    upstream = await upstreams(script)
    gateway = start_gateway(upstream.url)
    rss_before = rss_bytes()
    peak = [rss_before]

    async def sample_rss() -> None:
        while True:
            peak[0] = max(peak[0], rss_bytes())
            await asyncio.sleep(0.02)

    sampler = asyncio.ensure_future(sample_rss())
    try:
        client = await open_stream(gateway, cookie, rcvbuf=16 * 1024, reader_limit=16 * 1024)
        assert client.status == 200 and client.headers["content-length"] == str(total)
        read = 0
        deadline = now() + 2.0
        while now() < deadline:  # 16 KB every 100 ms
            data = await asyncio.wait_for(client.reader.read(16 * 1024), 2)
            assert data, "the gateway closed the connection mid-body"
            read += len(data)
            await asyncio.sleep(0.1)
        written_slow = written[0]

        # Positive control: once the browser reads fast, the same upstream sends fast.
        fast_started = now()
        while read < 25 * MIB:
            data = await asyncio.wait_for(client.reader.read(MIB), 2)
            assert data, "the gateway closed the connection mid-body"
            read += len(data)
        fast_seconds = now() - fast_started
        written_fast = written[0]
    finally:
        sampler.cancel()

    assert written_slow < 16 * MIB, f"upstream wrote {written_slow / MIB:.1f} MiB to a reader taking 160 KB/s"
    assert fast_seconds < 1.5 and written_fast >= 25 * MIB, (fast_seconds, written_fast)
    assert peak[0] - rss_before < 16 * MIB, f"RSS grew by {(peak[0] - rss_before) / MIB:.1f} MiB"

    assert not upstream.closed.is_set()
    hung_up = client.close()
    await asyncio.wait_for(upstream.closed.wait(), 2)
    assert upstream.closed_at[0] - hung_up < 0.5
    assert written[0] < total  # the upstream was cut off, not done


# -- 4. cancellation -------------------------------------------------------------------------------


async def _streaming_events(reader: Reader, writer: Writer) -> None:
    await send(writer, sse_head())
    for n in range(200):
        await send(writer, f"data: {n}\n\n".encode())
        await asyncio.sleep(0.05)


async def _silent_before_headers(reader: Reader, writer: Writer) -> None:
    await asyncio.sleep(30)


async def _idle_after_one_event(reader: Reader, writer: Writer) -> None:
    await send(writer, sse_head() + b"data: 0\n\n")
    await asyncio.sleep(30)


@pytest.mark.parametrize(
    "phase",
    ["after_first_byte", "before_upstream_answered", "upstream_idle_mid_stream"],
)
@pytest.mark.gen_test(timeout=10)
async def test_client_disconnect_closes_the_upstream_within_100ms(
    start_gateway: StartGateway, upstreams: Any, cookie: str, phase: str
) -> None:
    script = {
        "after_first_byte": _streaming_events,
        "before_upstream_answered": _silent_before_headers,
        "upstream_idle_mid_stream": _idle_after_one_event,
    }[phase]
    upstream = await upstreams(script)
    gateway = start_gateway(upstream.url)
    client = await RawClient.open(port_of(gateway), "/api/proxy/stream", cookie)
    if phase == "before_upstream_answered":
        await wait_until(lambda: bool(upstream.heads), 2)
        assert upstream.heads  # the upstream has read the request and now sits on it
        await asyncio.sleep(0.2)
    else:
        await asyncio.wait_for(client.read_head(), 2)
        assert await asyncio.wait_for(client.read_piece(), 2) == b"data: 0\n\n"
        if phase == "upstream_idle_mid_stream":
            await asyncio.sleep(0.3)

    assert not upstream.closed.is_set()  # control: the upstream request was still open
    hung_up = client.close()
    await asyncio.wait_for(upstream.closed.wait(), 2)
    assert upstream.closed_at[0] - hung_up < 0.1
    await asyncio.sleep(0.05)
    assert gateway.ctx.upstream.active_fetches == 0


# -- 5. leak check ---------------------------------------------------------------------------------


@pytest.mark.gen_test(timeout=30)
async def test_1000_aborted_streams_leave_no_fetch_socket_or_task_behind(
    start_gateway: StartGateway, upstreams: Any, cookie: str
) -> None:
    streams = 1000
    upstream = await upstreams(_streaming_events)
    gateway = start_gateway(upstream.url)
    await asyncio.sleep(0.05)
    tasks_before = len(asyncio.all_tasks())
    all_streaming = asyncio.Barrier(streams + 1)
    during: dict[str, int] = {}

    async def one() -> None:
        client = await open_stream(gateway, cookie)
        # The first read may hold more than one event when the loop is busy with 1,000 streams.
        first = await asyncio.wait_for(client.read_piece(), 5)
        assert first is not None and first.startswith(b"data: 0\n\n")
        await all_streaming.wait()
        await all_streaming.wait()  # the main task looks, then everyone hangs up
        client.close()

    clients = asyncio.gather(*(one() for _ in range(streams)))
    filled: asyncio.Future[Any] = asyncio.ensure_future(all_streaming.wait())
    await asyncio.wait([filled, clients], timeout=20, return_when=asyncio.FIRST_COMPLETED)
    if clients.done():
        clients.result()  # a client failed before the barrier: show why
    assert filled.done(), f"{all_streaming.n_waiting} of {streams} streams under way after 20 s"
    during["fetches"] = gateway.ctx.upstream.active_fetches
    during["tasks"] = len(asyncio.all_tasks())
    await all_streaming.wait()
    await asyncio.wait_for(clients, 10)

    # Positive control: the measures do see every live stream.
    assert during["fetches"] == streams
    assert during["tasks"] > tasks_before + streams

    await wait_until(
        lambda: len(upstream.closed_at) == streams and len(asyncio.all_tasks()) <= tasks_before, 3
    )  # prompt when idle; slack for a loaded CI box
    assert gateway.ctx.upstream.active_fetches == 0
    assert upstream.connections == streams
    assert len(upstream.closed_at) == streams
    assert len(asyncio.all_tasks()) == tasks_before, [repr(t) for t in asyncio.all_tasks()][:5]


# -- 6. time limits ----------------------------------------------------------------------------------


@pytest.mark.gen_test(timeout=15)
async def test_a_stream_longer_than_every_timeout_is_not_cut(
    start_gateway: StartGateway, upstreams: Any, cookie: str
) -> None:
    events = [f"data: {n}\n\n".encode() for n in range(13)]

    async def script(reader: Reader, writer: Writer) -> None:
        await send(writer, sse_head(chunked=True))
        for event in events:  # 13 x 0.2 s = 2.6 s
            await send(writer, chunk(event))
            await asyncio.sleep(0.2)
        await send(writer, b"0\r\n\r\n")

    upstream = await upstreams(script)
    gateway = start_gateway(upstream.url, upstream_response_timeout=0.3, stream_idle_timeout=1)
    started = now()
    client = await open_stream(gateway, cookie)
    await client.read_to_end()

    assert now() - started > 2.5  # longer than the response timeout and the idle timeout
    assert client.body == b"".join(events)
    assert client.ended_cleanly and not client.cut


@pytest.mark.gen_test(timeout=10)
async def test_sse_idle_timeout_ends_the_stream_with_an_error_event(
    start_gateway: StartGateway, upstreams: Any, cookie: str
) -> None:
    async def script(reader: Reader, writer: Writer) -> None:
        await send(writer, sse_head(chunked=True) + chunk(b"data: only\n\n"))
        await asyncio.sleep(30)

    upstream = await upstreams(script)
    gateway = start_gateway(upstream.url, stream_idle_timeout=0.5)
    client = await open_stream(gateway, cookie)
    await asyncio.wait_for(client.read_to_end(), 5)

    assert len(client.pieces) == 2, client.pieces
    (event_at, event), (error_at, error) = client.pieces
    assert event == b"data: only\n\n"
    assert parse_error_event(error)["error"] == "upstream_failed"
    assert 0.4 < error_at - event_at < 1.5
    assert client.cut and not client.ended_cleanly  # closed, not a clean end of the body
    await asyncio.wait_for(upstream.closed.wait(), 1)
    assert upstream.closed_at[0] - event_at > 0.4


@pytest.mark.gen_test(timeout=10)
async def test_idle_timeout_cuts_a_non_sse_body_short(start_gateway: StartGateway, upstreams: Any, cookie: str) -> None:
    async def script(reader: Reader, writer: Writer) -> None:
        await send(writer, octet_head(1000) + b"x" * 400)
        await asyncio.sleep(30)

    upstream = await upstreams(script)
    gateway = start_gateway(upstream.url, stream_idle_timeout=0.5)
    client = await open_stream(gateway, cookie)
    started = now()
    assert client.headers["content-length"] == "1000"
    received = await asyncio.wait_for(client.count_body(), 5)

    assert received == 400
    assert client.cut and not client.ended_cleanly
    assert 0.3 < now() - started < 2
    await asyncio.wait_for(upstream.closed.wait(), 1)


# -- 7. heartbeats -----------------------------------------------------------------------------------


async def stream_with_a_silence(
    start_gateway: StartGateway, upstreams: Any, cookie: str, head: bytes, rest: bytes
) -> tuple[RawClient, dict[str, float]]:
    """An SSE stream whose upstream sends ``head``, is silent for 1 s, then sends ``rest`` and
    ends, relayed with a 0.2 s heartbeat interval. ``sent["rest"]``: when ``rest`` was sent."""
    sent: dict[str, float] = {}

    async def script(reader: Reader, writer: Writer) -> None:
        await send(writer, head)
        await asyncio.sleep(1.0)
        sent["rest"] = await send(writer, rest)
        await asyncio.sleep(0.1)
        await send(writer, b"0\r\n\r\n")

    upstream = await upstreams(script)
    gateway = start_gateway(upstream.url, sse_heartbeat_interval=0.2)
    client = await open_stream(gateway, cookie)
    await asyncio.wait_for(client.read_to_end(), 5)
    return client, sent


@pytest.mark.gen_test(timeout=10)
async def test_heartbeats_fill_the_silence_between_events(
    start_gateway: StartGateway, upstreams: Any, cookie: str
) -> None:
    event = b'event: message\ndata: {"answer": "late"}\n\n'
    client, sent = await stream_with_a_silence(start_gateway, upstreams, cookie, sse_head(chunked=True), chunk(event))

    # Counted in bytes, not reads: on a loaded machine two heartbeats may arrive in one read,
    # and one more may go out between the upstream sending the event and its relay.
    during_silence = b"".join(data for at, data in client.pieces if at < sent["rest"])
    assert during_silence.count(KEEP_ALIVE) >= 2, client.pieces  # about 4 expected in 1 s at 0.2 s
    assert client.body.endswith(event)
    before_event = client.body[: -len(event)]
    assert before_event == KEEP_ALIVE * before_event.count(KEEP_ALIVE)
    assert client.ended_cleanly


@pytest.mark.parametrize("size", ["small", "over_1MiB"])
@pytest.mark.gen_test(timeout=10)
async def test_heartbeats_never_land_inside_a_partial_event(
    start_gateway: StartGateway, upstreams: Any, cookie: str, size: str
) -> None:
    # A small partial event is held back until it completes; one over 1 MiB is let through
    # as it comes (upstream/sse.py), so the browser really is inside an event meanwhile.
    filler = b"x" * (3 * MIB // 2 if size == "over_1MiB" else 3)
    first, second = b'event: message\ndata: {"answer": "' + filler, b'"}\n\n'
    client, sent = await stream_with_a_silence(
        start_gateway, upstreams, cookie, sse_head(chunked=True) + chunk(first), chunk(second)
    )

    assert first + second in client.body  # intact and contiguous
    assert client.body.replace(KEEP_ALIVE, b"") == first + second
    assert client.ended_cleanly
    if size == "small":
        assert all(at >= sent["rest"] for at, data in client.pieces if data != KEEP_ALIVE)


# -- 8. failures mid-stream ------------------------------------------------------------------------

EV1, EV2 = b"data: one\n\n", b"event: message\ndata: two\n\n"


@pytest.mark.parametrize("framing", ["chunked", "close_delimited"])
@pytest.mark.gen_test(timeout=10)
async def test_sse_upstream_reset_mid_stream_ends_with_an_error_event(
    start_gateway: StartGateway, upstreams: Any, cookie: str, framing: str
) -> None:
    chunked = framing == "chunked"

    async def script(reader: Reader, writer: Writer) -> None:
        wrap = chunk if chunked else (lambda data: data)
        await send(writer, sse_head(chunked=chunked) + wrap(EV1))
        await asyncio.sleep(0.05)
        await send(writer, wrap(EV2))
        await asyncio.sleep(0.1)
        reset(writer)

    upstream = await upstreams(script)
    gateway = start_gateway(upstream.url)  # the default 300 s idle timeout: no watchdog rescue
    client = await open_stream(gateway, cookie)
    started = now()
    await asyncio.wait_for(client.read_to_end(), 5)

    assert client.body.startswith(EV1 + EV2), client.pieces
    assert parse_error_event(client.body[len(EV1 + EV2) :])["error"] == "upstream_failed"
    assert client.cut and not client.ended_cleanly  # no terminating 0-size chunk
    assert now() - started < 1.0  # the reset itself ends the stream, at once


@pytest.mark.gen_test(timeout=10)
async def test_sse_upstream_closing_mid_chunk_ends_with_an_error_event(
    start_gateway: StartGateway, upstreams: Any, cookie: str
) -> None:
    async def script(reader: Reader, writer: Writer) -> None:
        await send(writer, sse_head(chunked=True) + chunk(EV1))
        await asyncio.sleep(0.05)
        await send(writer, b"40\r\ndata: trunc")  # a 64-byte chunk, cut after 11 bytes
        await asyncio.sleep(0.05)
        writer.close()  # FIN

    upstream = await upstreams(script)
    gateway = start_gateway(upstream.url, stream_idle_timeout=1)
    client = await open_stream(gateway, cookie)
    await asyncio.wait_for(client.read_to_end(), 5)

    assert client.body.startswith(EV1), client.pieces
    assert parse_error_event(client.body[len(EV1) :])["error"] == "upstream_failed"  # no "data: trunc"
    assert client.cut and not client.ended_cleanly


@pytest.mark.parametrize("ending", ["reset", "fin"])
@pytest.mark.gen_test(timeout=10)
async def test_non_sse_body_cut_mid_way_is_cut_for_the_client(
    start_gateway: StartGateway, upstreams: Any, cookie: str, ending: str
) -> None:
    size, sent = 100_000, 30_000

    async def script(reader: Reader, writer: Writer) -> None:
        await send(writer, octet_head(size) + payload(sent))
        await asyncio.sleep(0.1)
        if ending == "reset":
            reset(writer)
        else:
            writer.close()

    upstream = await upstreams(script)
    gateway = start_gateway(upstream.url, stream_idle_timeout=1)
    client = await open_stream(gateway, cookie)
    started = now()
    assert client.headers["content-length"] == str(size)
    received = await asyncio.wait_for(client.count_body(), 5)

    assert received == sent
    assert client.cut and not client.ended_cleanly
    assert now() - started < 2.5


@pytest.mark.gen_test(timeout=10)
async def test_non_sse_close_delimited_body_reset_mid_way_is_cut_for_the_client(
    start_gateway: StartGateway, upstreams: Any, cookie: str
) -> None:
    # No Content-Length: the body ends when the upstream closes. A FIN is that end; a reset is not.
    sent = 30_000

    async def script(reader: Reader, writer: Writer) -> None:
        head = b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nConnection: close\r\n\r\n"
        await send(writer, head + payload(sent))
        await asyncio.sleep(0.1)
        reset(writer)

    upstream = await upstreams(script)
    gateway = start_gateway(upstream.url, stream_idle_timeout=1)
    client = await open_stream(gateway, cookie)
    assert client.chunked  # the gateway frames it for the browser
    await asyncio.wait_for(client.read_to_end(), 5)

    assert client.body == payload(sent)
    assert client.cut and not client.ended_cleanly  # no terminating 0-size chunk: visibly incomplete


# -- 9. failures before the headers ----------------------------------------------------------------


async def _close_without_answer(reader: Reader, writer: Writer) -> None:
    writer.close()


async def _answer_garbage(reader: Reader, writer: Writer) -> None:
    await send(writer, b"HELLO\r\n\r\n")
    await asyncio.sleep(30)


@pytest.mark.parametrize(
    ("case", "status", "code"),
    [
        ("refused", 502, "bad_gateway"),
        ("closed_without_answer", 502, "bad_gateway"),
        ("garbage", 502, "bad_gateway"),
        ("no_headers_in_time", 504, "gateway_timeout"),
    ],
)
@pytest.mark.gen_test(timeout=10)
async def test_failures_before_headers_are_json_errors(
    start_gateway: StartGateway,
    upstreams: Any,
    fetch: Any,
    cookie: str,
    case: str,
    status: int,
    code: str,
) -> None:
    if case == "refused":
        url = f"http://127.0.0.1:{closed_port()}"
    else:
        script = {
            "closed_without_answer": _close_without_answer,
            "garbage": _answer_garbage,
            "no_headers_in_time": _silent_before_headers,
        }[case]
        url = (await upstreams(script)).url
    gateway = start_gateway(url, upstream_response_timeout=0.3)
    started = now()
    response = await fetch(f"{gateway.url}/api/proxy/thing", headers={"Cookie": cookie})
    elapsed = now() - started

    body = response.body.decode()
    assert response.code == status, body
    assert response.headers["Content-Type"].startswith("application/json")
    assert json.loads(body)["error"] == code
    assert "Traceback" not in body
    assert elapsed < 1.0
    if case == "no_headers_in_time":
        assert elapsed >= 0.3


# -- 10. large downloads --------------------------------------------------------------------------------


@pytest.mark.gen_test(timeout=30)
async def test_download_larger_than_100_mb_streams_through(
    start_gateway: StartGateway, upstreams: Any, cookie: str
) -> None:
    size = 110 * MIB
    block = bytes(MIB)

    async def script(reader: Reader, writer: Writer) -> None:
        writer.write(octet_head(size))
        for _ in range(size // MIB):
            writer.write(block)
            await writer.drain()
        writer.close()

    upstream = await upstreams(script)
    gateway = start_gateway(upstream.url)
    client = await open_stream(gateway, cookie)
    assert client.status == 200
    assert client.headers["content-length"] == str(size)
    received = await asyncio.wait_for(client.count_body(), 25)

    assert received == size
    assert client.ended_cleanly


# -- 11. uploads ------------------------------------------------------------------------------------------


@pytest.mark.gen_test(timeout=30)
async def test_upload_is_streamed_to_the_upstream_as_it_arrives(
    backend: FakeBackend, start_gateway: StartGateway, fetch: Any, cookie: str
) -> None:
    piece, pieces = payload(64 * 1024), 1024  # 64 MiB
    gateway = start_gateway(backend.url, max_body_bytes=128 * MIB)
    upstream_had: list[int] = []

    async def producer(write: Callable[[bytes], Awaitable[None]]) -> None:
        for n in range(pieces):
            await write(piece)
            if n in (pieces // 4, pieces // 2):
                upstream_had.append(backend.requests[-1].body_size if backend.requests else 0)

    response = await fetch(
        f"{gateway.url}/api/proxy/echo",
        method="POST",
        headers={"Cookie": cookie, "Content-Type": "application/octet-stream"},
        body_producer=producer,
    )

    assert response.code == 200, response.body
    echo = json.loads(response.body)
    assert echo["headers"].get("transfer-encoding") == ["chunked"]
    # The upstream was receiving while the browser was still sending ...
    assert upstream_had[0] > 0 and upstream_had[1] > upstream_had[0], upstream_had
    # ... and got every byte.
    digest = hashlib.sha256()
    for _ in range(pieces):
        digest.update(piece)
    assert echo["body_size"] == pieces * len(piece)
    assert echo["body_sha256"] == digest.hexdigest()


@pytest.mark.gen_test(timeout=10)
async def test_client_disconnect_mid_upload_closes_the_upstream(
    start_gateway: StartGateway, upstreams: Any, cookie: str
) -> None:
    upstream = await upstreams(_silent_before_headers)
    gateway = start_gateway(upstream.url)
    client = await RawClient.open(
        port_of(gateway),
        "/api/proxy/upload",
        cookie,
        method="POST",
        headers=["Content-Type: application/octet-stream", "Transfer-Encoding: chunked"],
    )
    piece = chunk(payload(64 * 1024))
    for _ in range(200):
        client.writer.write(piece)
        await client.writer.drain()
        if upstream.bytes_after_head > 0:
            break
        await asyncio.sleep(0.01)
    assert upstream.bytes_after_head > 0  # the upload was reaching the upstream
    await asyncio.sleep(0.1)
    assert not upstream.closed.is_set()

    hung_up = client.close()
    await asyncio.wait_for(upstream.closed.wait(), 2)
    assert upstream.closed_at[0] - hung_up < 0.1
    await asyncio.sleep(0.05)
    assert gateway.ctx.upstream.active_fetches == 0
