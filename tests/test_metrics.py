"""The Prometheus metrics (``ops/metrics.py``), as a scraper sees them on the metrics listener.

In-process gatehouses on real sockets, in front of the fake backend, Dify and Supabase and a
real redis-server, all recording into one process's metrics, scraped over HTTP from the metrics
listener and read with ``prometheus_client``'s own parser: every metric is there with the right
labels after real traffic, a thousand users and paths add no series, and nothing secret or
personal is ever a label; one upstream call is one upstream error at most, and a request the
drain cuts is not a client that left. Then ``python server.py``: the metrics are served on their
own host and port only, never on the gateway's, and the drain closes an idle scraper's connection.
"""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest
from tornado.httpclient import HTTPResponse
from tornado.netutil import bind_sockets

from auth.nextauth import NextAuthV4Codec
from frontdoor.server import FrontDoor
from handlers.context import Context
from ops.drain import DrainTimings, drain
from ops.lifecycle import Lifecycle
from server import make_app, make_metrics_server, make_server, open_metrics
from settings import SupabaseSettings
from tests.conftest import SECRET, RunningGateway, closed_port, test_settings, wait_until
from tests.fakes.backend import FakeBackend
from tests.fakes.dify import FakeDify
from tests.fakes.raw import RawUpstream, Script, reset
from tests.fakes.supabase import FakeSupabase
from tests.gateway_process import ROOT, GatewayProcess, free_port
from tests.metrics_scrape import Scrape, scrape
from tests.redis_server import RedisServer, redis_server

__all__ = ["redis_server"]  # a fixture used here

Fetch = Callable[..., Awaitable[HTTPResponse]]
NAME = "next-auth.session-token"
USER = "2b1f6a0e-7c3d-4e5f-8a9b-0c1d2e3f4a5b"
ACCESS = "at-metrics-5d1c0e9b"  # must never be part of a metric
REFRESH = "rt-metrics-7c1f2a4e"
MESSAGE = "the launch code is 7f3a9c"

FAMILIES = {  # every metric issue 13 asks for: its kind and labels
    "gatehouse_requests": ("counter", {"route", "method", "status"}),
    "gatehouse_request_duration_seconds": ("histogram", {"route"}),
    "gatehouse_requests_in_flight": ("gauge", {"route"}),
    "gatehouse_upstream_duration_seconds": ("histogram", {"upstream"}),
    "gatehouse_upstream_errors": ("counter", {"upstream", "reason"}),
    "gatehouse_streams_active": ("gauge", {"route"}),
    "gatehouse_stream_first_event_seconds": ("histogram", {"route"}),
    "gatehouse_session_refreshes": ("counter", {"result"}),
    "gatehouse_rate_limited": ("counter", {"route"}),
    "gatehouse_redis_errors": ("counter", {"op"}),
}


class Metered:
    """In-process gatehouses sharing one process's in-memory metrics and one metrics listener."""

    def __init__(self) -> None:
        self.metrics, exposition = open_metrics(None)
        self.gateways: list[RunningGateway] = []
        self.listener: FrontDoor | None = None
        self._exposition = exposition
        self.port = 0

    def start(self, backend_url: str | None, lifecycle: Lifecycle | None = None, **overrides: Any) -> RunningGateway:
        if self.listener is None:  # here, in the test's event loop
            self.listener = make_metrics_server(self._exposition)
            [sock] = bind_sockets(0, "127.0.0.1", family=socket.AF_INET)
            self.port = sock.getsockname()[1]
            self.listener.add_sockets([sock])
        settings = test_settings(backend_url, **overrides)
        ctx = Context.build(settings, self.metrics)
        server = make_server(make_app(settings, ctx, lifecycle), settings)
        [sock] = bind_sockets(0, "127.0.0.1", family=socket.AF_INET)
        server.add_sockets([sock])
        running = RunningGateway(f"http://127.0.0.1:{sock.getsockname()[1]}", settings, ctx, server)
        self.gateways.append(running)
        return running

    async def scrape(self) -> Scrape:
        result = await scrape("127.0.0.1", self.port)
        assert result.status == 200, result.text
        return result

    async def close(self) -> None:
        for running in self.gateways:
            await running.close()
        if self.listener is not None:
            self.listener.stop()
            await self.listener.close_all_connections()


@pytest.fixture
def metered(io_loop: Any) -> Iterator[Metered]:
    started = Metered()
    yield started
    io_loop.run_sync(started.close)


def cookie(codec: NextAuthV4Codec, **claims: Any) -> str:
    base = {"sub": "user-1", "access_token": ACCESS, "refresh_token": REFRESH, "expires_at": int(time.time()) + 3600}
    return f"{NAME}={codec.encode({**base, **claims})}"


def assert_every_family_has_its_labels(result: Scrape) -> None:
    suffixes = {"counter": ("_total",), "gauge": ("",), "histogram": ("_bucket", "_count", "_sum")}
    for name, (kind, labels) in FAMILIES.items():
        for suffix in suffixes[kind]:
            found = result.labels_of(name + suffix)
            assert found, f"{name}{suffix} is missing"
            expected = labels | {"le"} if suffix == "_bucket" else labels
            assert {frozenset(names) for names in found} == {frozenset(expected)}, (name + suffix, found)


@pytest.mark.gen_test(timeout=30)
async def test_every_metric_after_real_traffic_with_its_labels_and_nothing_secret(
    metered: Metered,
    backend: FakeBackend,
    dify: FakeDify,
    supabase: FakeSupabase,
    supabase_settings: Callable[..., SupabaseSettings],
    redis_server: RedisServer,
    fetch: Fetch,
    codec: NextAuthV4Codec,
) -> None:
    backend.refresh_tokens = {REFRESH}
    gate = metered.start(
        backend.url,
        supabase=supabase_settings(auth_mode="remote"),  # so Supabase is called: upstream="supabase"
        dify_api_url=dify.url,
        dify_api_key=dify.api_key,
        redis_url=redis_server.url,
        chat_rate_per_minute=1,
        upstream_response_timeout=1.0,
    )
    unreachable = metered.start(f"http://127.0.0.1:{closed_port()}")
    fresh = cookie(codec)
    token = supabase.mint(USER)
    chat_headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}

    async def get(path: str, session: str | None = fresh, url: str = gate.url) -> HTTPResponse:
        return await fetch(url + path, headers={"Cookie": session} if session else {})

    async def chat() -> HTTPResponse:
        body = json.dumps({"message": MESSAGE}).encode()
        return await fetch(gate.url + "/api/chat", method="POST", body=body, headers=chat_headers)

    assert (await get("/api/proxy/echo/alpha?secret-query=q1")).code == 200
    assert (await get("/api/proxy/echo/alpha", session=None)).code == 401
    expiring = cookie(codec, sub="user-2", expires_at=int(time.time()) + 5)
    assert (await get("/api/proxy/echo/beta", session=expiring)).code == 200  # refreshed first
    assert len(backend.calls("/auth/refresh")) == 1
    assert (await get("/api/proxy/status/503")).code == 503
    assert (await get("/api/proxy/slow?delay=3")).code == 504  # UPSTREAM_RESPONSE_TIMEOUT=1
    assert (await get("/api/proxy/echo", url=unreachable.url)).code == 502

    # A stream in flight is active, then not; its first event is timed.
    pieces: list[bytes] = []
    streaming = asyncio.ensure_future(
        fetch(
            gate.url + "/api/proxy/sse?events=4&interval=0.25",
            headers={"Cookie": fresh},
            streaming_callback=pieces.append,
        )
    )
    assert await wait_until(lambda: bool(pieces), 5)
    during = await metered.scrape()
    assert during.value("gatehouse_streams_active", route="proxy") == 1
    assert during.value("gatehouse_requests_in_flight", route="proxy") == 1
    assert (await streaming).code == 200

    answer = await chat()
    assert answer.code == 200 and b"message_end" in answer.body
    limited = await chat()  # CHAT_RATE_PER_MINUTE=1, counted in Redis
    assert limited.code == 429
    redis_server.stop()
    assert (await chat()).code == 200  # Redis down: the process's own bucket, which is full

    result = await metered.scrape()
    assert result.content_type.startswith("text/plain; version=0.0.4")
    assert_every_family_has_its_labels(result)
    requests = {
        (dict(labels)["route"], dict(labels)["method"], dict(labels)["status"]): value
        for (name, labels), value in result.samples.items()
        if name == "gatehouse_requests_total"
    }
    assert requests == {
        ("proxy", "GET", "200"): 3,  # the echo, the refreshed echo, the stream
        ("proxy", "GET", "401"): 1,
        ("proxy", "GET", "503"): 1,  # relayed as the backend said
        ("proxy", "GET", "504"): 1,
        ("proxy", "GET", "502"): 1,
        ("chat", "POST", "200"): 2,
        ("chat", "POST", "429"): 1,
    }
    assert result.value("gatehouse_request_duration_seconds_count", route="proxy") == 7
    assert result.value("gatehouse_request_duration_seconds_count", route="chat") == 3
    assert result.value("gatehouse_request_duration_seconds_sum", route="proxy") >= 1.0  # the 504 waited 1 s
    assert result.value("gatehouse_requests_in_flight", route="proxy") == 0
    assert result.value("gatehouse_requests_in_flight", route="chat") == 0
    assert result.value("gatehouse_streams_active", route="proxy") == 0
    assert result.value("gatehouse_streams_active", route="chat") == 0
    assert result.value("gatehouse_stream_first_event_seconds_count", route="proxy") == 1
    assert result.value("gatehouse_stream_first_event_seconds_count", route="chat") == 2
    assert result.value("gatehouse_stream_first_event_seconds_bucket", route="proxy", le="+Inf") == 1
    # Upstream headers: the echoes, the 503, the stream to the backend; the refresh; both chats.
    assert result.value("gatehouse_upstream_duration_seconds_count", upstream="backend") == 4
    assert result.value("gatehouse_upstream_duration_seconds_count", upstream="refresh") == 1
    assert result.value("gatehouse_upstream_duration_seconds_count", upstream="dify") == 2
    assert result.value("gatehouse_upstream_duration_seconds_count", upstream="supabase") == 1  # then cached
    errors = {
        (dict(labels)["upstream"], dict(labels)["reason"]): value
        for (name, labels), value in result.samples.items()
        if name == "gatehouse_upstream_errors_total" and value
    }
    assert errors == {("backend", "status"): 1, ("backend", "timeout"): 1, ("backend", "connect"): 1}
    assert {dict(labels)["upstream"] for (name, labels) in result.series if name.startswith("gatehouse_upstream")} == {
        "backend",
        "refresh",
        "dify",
        "supabase",
    }
    assert result.value("gatehouse_session_refreshes_total", result="ok") == 1
    assert result.value("gatehouse_session_refreshes_total", result="shared") == 0
    assert result.value("gatehouse_rate_limited_total", route="chat") == 1
    assert result.value("gatehouse_redis_errors_total", op="rate_limit") >= 1

    secrets = [ACCESS, REFRESH, "at-1", "rt-1", token, fresh.split("=", 1)[1], expiring.split("=", 1)[1], USER]
    personal = [
        "user-1",
        "user-2",
        "alpha",
        "beta",
        "echo",
        "slow",
        "secret-query",
        "q1",
        "delay",
        MESSAGE,
        dify.api_key,
    ]
    for text in secrets + personal:
        assert text not in result.text, text
    assert redis_server.url not in result.text and backend.url not in result.text


@pytest.mark.gen_test(timeout=40)
async def test_a_thousand_users_and_paths_add_no_series(
    metered: Metered, backend: FakeBackend, fetch: Fetch, codec: NextAuthV4Codec
) -> None:
    gate = metered.start(backend.url)

    async def traffic(n: int) -> None:
        session = cookie(codec, sub=f"user-{n}", access_token=f"at-{n}-secret")
        assert (await fetch(f"{gate.url}/api/proxy/echo/p{n}/x?q={n}", headers={"Cookie": session})).code == 200
        assert (await fetch(f"{gate.url}/nowhere/{n}?q={n}")).code == 404
        method = ("PROPFIND", "MKCOL", "LOCK", "COPY", "MOVE")[n % 5]  # unknown to the route: 405
        response = await fetch(f"{gate.url}/api/proxy/echo/m{n}", method=method, headers={"Cookie": session})
        assert response.code == 405

    await traffic(0)
    before = await metered.scrape()
    for batch in range(1, 1001, 50):
        await asyncio.gather(*(traffic(n) for n in range(batch, batch + 50)))
    after = await metered.scrape()

    assert after.gatehouse().keys() == before.gatehouse().keys()
    assert after.value("gatehouse_requests_total", route="proxy", method="GET", status="200") == 1001
    assert after.value("gatehouse_requests_total", route="other", method="GET", status="404") == 1001
    assert after.value("gatehouse_requests_total", route="proxy", method="other", status="405") == 1001
    for n in (1, 500, 1000):
        for text in (f"user-{n}", f"at-{n}-secret", f"p{n}", f"m{n}", f"q={n}", "nowhere", "PROPFIND"):
            assert text not in after.text


@pytest.mark.gen_test(timeout=20)
async def test_a_request_whose_client_leaves_is_counted_once(
    metered: Metered, backend: FakeBackend, codec: NextAuthV4Codec
) -> None:
    """Before any answer: status 499, not the 200 Tornado would report; mid-stream: the status
    it was answering with. Either way once, and no longer in flight or streaming."""
    gate = metered.start(backend.url)
    port = int(gate.url.rsplit(":", 1)[1])

    async def leave(path: str, after: bytes | None) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(f"GET {path} HTTP/1.1\r\nHost: g\r\nCookie: {cookie(codec)}\r\n\r\n".encode())
        if after is None:
            await asyncio.sleep(0.3)
        else:
            await asyncio.wait_for(reader.readuntil(after), 5)
        writer.close()

    await leave("/api/proxy/slow?delay=2", None)
    await leave("/api/proxy/sse?events=100&interval=0.05", b"data: ")
    assert await wait_until(lambda: backend.calls("/sse") != [], 1)
    await asyncio.sleep(0.3)
    result = await metered.scrape()
    counted = {key: value for key, value in result.samples.items() if key[0] == "gatehouse_requests_total"}
    assert counted == {
        ("gatehouse_requests_total", (("method", "GET"), ("route", "proxy"), ("status", "499"))): 1,
        ("gatehouse_requests_total", (("method", "GET"), ("route", "proxy"), ("status", "200"))): 1,
    }
    assert result.value("gatehouse_request_duration_seconds_count", route="proxy") == 2
    assert result.value("gatehouse_requests_in_flight", route="proxy") == 0
    assert result.value("gatehouse_streams_active", route="proxy") == 0
    assert not any(value for (name, _), value in result.samples.items() if name == "gatehouse_upstream_errors_total")
    await asyncio.sleep(2)  # the slow answer comes, to nobody: still counted once
    assert (await metered.scrape()).gatehouse() == result.gatehouse()


def requests_counted(result: Scrape) -> dict[tuple[str, str, str], float]:
    """``gatehouse_requests_total`` by (route, method, status)."""
    return {
        (dict(labels)["route"], dict(labels)["method"], dict(labels)["status"]): value
        for (name, labels), value in result.samples.items()
        if name == "gatehouse_requests_total"
    }


def upstream_errors(result: Scrape) -> dict[tuple[str, str], float]:
    """The non-zero ``gatehouse_upstream_errors_total`` by (upstream, reason)."""
    return {
        (dict(labels)["upstream"], dict(labels)["reason"]): value
        for (name, labels), value in result.samples.items()
        if name == "gatehouse_upstream_errors_total" and value
    }


@pytest.mark.gen_test(timeout=20)
async def test_a_5xx_head_then_a_reset_is_one_upstream_error(
    metered: Metered, upstreams: Callable[[Script], Awaitable[RawUpstream]], codec: NextAuthV4Codec
) -> None:
    """One upstream call counts one upstream error at most: an answer of 500 or more whose body
    then breaks off is the ``status`` error, not also a ``reset``."""

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 502 Bad Gateway\r\nContent-Type: text/plain\r\nContent-Length: 100\r\n\r\npartial")
        await writer.drain()
        await asyncio.sleep(0.2)
        reset(writer)

    upstream = await upstreams(script)
    gate = metered.start(upstream.url)
    reader, writer = await asyncio.open_connection("127.0.0.1", int(gate.url.rsplit(":", 1)[1]))
    writer.write(f"GET /api/proxy/broken HTTP/1.1\r\nHost: g\r\nCookie: {cookie(codec)}\r\n\r\n".encode())
    answer = await asyncio.wait_for(reader.read(), 5)  # the 502 as it came, then cut off
    writer.close()
    assert answer.startswith(b"HTTP/1.1 502") and answer.endswith(b"partial")
    result = await metered.scrape()
    assert requests_counted(result) == {("proxy", "GET", "502"): 1}
    assert upstream_errors(result) == {("backend", "status"): 1}
    assert result.value("gatehouse_upstream_duration_seconds_count", upstream="backend") == 1


@pytest.mark.gen_test(timeout=20)
async def test_a_request_the_drain_cuts_is_not_counted_as_a_client_that_left(
    metered: Metered, backend: FakeBackend, codec: NextAuthV4Codec
) -> None:
    """The drain's last step closes every connection left: a request cut there, still waiting
    for its session's refresh, is counted 503 (as the deadline answers a relay not begun), and
    relays nothing once the refresh is done; a client that left on its own is still 499."""
    backend.refresh_tokens = {REFRESH}
    backend.refresh_delay = 1.5
    lifecycle = Lifecycle()
    gate = metered.start(backend.url, lifecycle=lifecycle)
    port = int(gate.url.rsplit(":", 1)[1])

    async def send(path: str, session: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(
            f"GET {path} HTTP/1.1\r\nHost: g\r\nX-Request-ID: {path[11:15]}\r\nCookie: {session}\r\n\r\n".encode()
        )
        return reader, writer

    _, leaving = await send("/api/proxy/slow?delay=3", cookie(codec))
    assert await wait_until(lambda: bool(backend.calls("/slow")), 5)
    leaving.close()  # a client that leaves
    reader, writer = await send("/api/proxy/echo", cookie(codec, expires_at=int(time.time()) + 5))
    assert await wait_until(lambda: bool(backend.calls("/auth/refresh")), 5)  # in target(), refreshing

    assert not await drain(lifecycle, [gate.server], DrainTimings(shutdown_delay=0, drain_timeout=0.2))
    assert await asyncio.wait_for(reader.read(), 5) == b""  # cut, with no answer
    writer.close()
    result = await metered.scrape()
    assert requests_counted(result) == {("proxy", "GET", "499"): 1, ("proxy", "GET", "503"): 1}
    assert result.value("gatehouse_requests_in_flight", route="proxy") == 0
    assert not upstream_errors(result)

    # Its refresh done, the cut request relays nothing.
    assert await wait_until(lambda: bool(backend.refresh_tokens - {REFRESH}), 5)
    await asyncio.sleep(0.2)
    assert backend.calls("/echo") == []


@pytest.fixture
def gateways(io_loop: Any) -> Iterator[Callable[..., Awaitable[GatewayProcess]]]:
    started: list[GatewayProcess] = []

    async def start(env: dict[str, str], serving: int = 1) -> GatewayProcess:
        gate = await GatewayProcess.start(env, serving=serving)
        started.append(gate)
        return gate

    yield start
    for gate in started:
        io_loop.run_sync(gate.close)


async def refused(host: str, port: int) -> bool:
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 2)
    except ConnectionRefusedError:
        return True
    writer.close()
    return False


DELAY = 2.0  # SHUTDOWN_DELAY: long beside the margins a loaded 2-core machine needs


@pytest.mark.gen_test(timeout=60)
async def test_the_metrics_are_served_on_their_own_host_and_port_only_and_drained_like_the_rest(
    gateways: Callable[..., Awaitable[GatewayProcess]], backend: FakeBackend, codec: NextAuthV4Codec
) -> None:
    metrics_port = free_port()
    gate = await gateways(
        {
            "BACKEND_URL": backend.url,
            "SESSION_SECRET": SECRET,
            "METRICS_HOST": "127.0.0.2",  # another loopback address than the gateway's
            "METRICS_PORT": str(metrics_port),
            "SHUTDOWN_DELAY": str(DELAY),
            "DRAIN_TIMEOUT": "20",
        }
    )
    [listening] = gate.records("listening")
    assert listening["metrics"] == f"127.0.0.2:{metrics_port}"

    on_main = await scrape("127.0.0.1", gate.port)  # the gateway's port has no metrics
    assert on_main.status == 404 and json.loads(on_main.text)["error"] == "not_found"
    assert await refused("127.0.0.1", metrics_port)  # METRICS_HOST only
    result = await scrape("127.0.0.2", metrics_port)
    assert result.status == 200 and result.content_type.startswith("text/plain; version=0.0.4")
    assert result.value("gatehouse_requests_total", route="other", method="GET", status="404") == 1
    openmetrics = await scrape("127.0.0.2", metrics_port, accept="application/openmetrics-text; version=1.0.0")
    assert openmetrics.content_type.startswith("application/openmetrics-text")
    assert openmetrics.text.endswith("# EOF\n") and "gatehouse_requests_total" in openmetrics.text
    elsewhere = await scrape("127.0.0.2", metrics_port, path="/")
    assert elsewhere.status == 404 and json.loads(elsewhere.text)["error"] == "not_found"

    # A scraper's kept-alive connection, idle, and a stream in flight to keep the drain going.
    reader, writer = await asyncio.open_connection("127.0.0.2", metrics_port)
    writer.write(b"GET /metrics HTTP/1.1\r\nHost: m\r\n\r\n")
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 200")
    length = int(next(line for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:"))[15:])
    await reader.readexactly(length)
    stream_reader, stream_writer = await asyncio.open_connection("127.0.0.1", gate.port)
    events = int((DELAY + 4) / 0.1)  # it outlasts SHUTDOWN_DELAY by 4 s
    request = f"GET /api/proxy/sse?events={events}&interval=0.1 HTTP/1.1\r\nHost: g\r\nCookie: {cookie(codec)}\r\n\r\n"
    stream_writer.write(request.encode())
    assert (await asyncio.wait_for(stream_reader.readuntil(b"\r\n\r\n"), 5)).startswith(b"HTTP/1.1 200")

    signalled = gate.signal(signal.SIGTERM)
    assert await asyncio.wait_for(reader.read(), DELAY + 5) == b""  # step 3: the idle scraper is let go
    closed_after = time.monotonic() - signalled
    assert DELAY - 0.1 < closed_after < DELAY + 2.5  # at step 3: after SHUTDOWN_DELAY, not at once
    assert gate.proc.returncode is None  # while the stream still runs
    assert await refused("127.0.0.2", metrics_port)
    rest = await asyncio.wait_for(stream_reader.read(), 20)
    assert rest.count(b"data: ") == events  # the stream ran to its end
    assert await gate.exited(10) == 0
    stream_writer.close()
    writer.close()


def test_importing_the_server_does_not_import_prometheus_client() -> None:
    """``prometheus_client`` reads PROMETHEUS_MULTIPROC_DIR once, when first imported: nothing
    may import it before ``server.main`` has set the variable (or cleared it)."""
    code = "import sys, server, handlers.context, handlers.base; print('prometheus_client' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert out.stdout.strip() == "False", out.stderr
