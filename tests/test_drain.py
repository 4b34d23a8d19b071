"""The graceful drain (``ops/drain.py``), on ``python server.py`` run as production runs it.

SIGTERM, then: /readyz 503 ``draining`` at once while everything else is served for
SHUTDOWN_DELAY; then the listener closes (a new connection is refused) and idle keep-alive
connections close; what is in flight runs to its end, up to DRAIN_TIMEOUT; at the deadline an SSE
stream ends with a ``shutting_down`` error event (a Dify chat also gets Dify's stop call), any
other answer is cut off, one not begun is a 503; the process exits 0. A second signal exits at
once. The same through the supervisor with two workers.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from tornado.netutil import bind_sockets

from handlers.context import Context
from ops.lifecycle import Lifecycle
from server import make_app, make_server
from tests.conftest import SECRET, test_settings, wait_until
from tests.fakes.backend import FakeBackend
from tests.fakes.dify import FakeDify, SlowStream, Stream
from tests.fakes.sse_scripts import RawClient
from tests.fakes.supabase import FakeSupabase
from tests.gateway_process import Connection, GatewayProcess, ask, spread_until

USER = "2b1f6a0e-7c3d-4e5f-8a9b-0c1d2e3f4a5b"
SHUTTING_DOWN = b'event: error\ndata: {"error": "shutting_down", "message": '  # the last event, when cut
SHORT = "/api/proxy/sse?events=10&interval=0.1"  # ends on its own after about 1 s
LONG = "/api/proxy/sse?events=600&interval=0.1"  # a 60-second stream


@pytest.fixture
def env(backend: FakeBackend, dify: FakeDify, supabase: FakeSupabase) -> dict[str, str]:
    """Gatehouse in front of the fake backend, Dify and Supabase."""
    assert supabase.jwt_secret is not None
    return {
        "BACKEND_URL": backend.url,
        "SESSION_SECRET": SECRET,
        "DIFY_API_KEY": dify.api_key,
        "DIFY_API_URL": dify.url,
        "SUPABASE_URL": supabase.url,
        "SUPABASE_JWT_SECRET": supabase.jwt_secret,
    }


@pytest.fixture
def gateways(io_loop: Any) -> Iterator[Callable[..., Any]]:
    """``await gateways(env, serving=1)``: a started `GatewayProcess`, killed after the test if
    it still runs."""
    started: list[GatewayProcess] = []

    async def start(env: dict[str, str], serving: int = 1) -> GatewayProcess:
        gateway = await GatewayProcess.start(env, serving)
        started.append(gateway)
        return gateway

    yield start
    for gateway in started:
        io_loop.run_sync(gateway.close)


async def stream(port: int, path: str, cookie: str) -> RawClient:
    """A browser's GET of ``path``, its answer's head read."""
    client = await RawClient.open(port, path, cookie)
    await asyncio.wait_for(client.read_head(), 10)
    return client


async def stream_on(conn: Connection, path: str, cookie: str) -> RawClient:
    """As `stream`, on a connection already open (so the test knows which worker holds it)."""
    client = RawClient(*conn)
    client.writer.write(f"GET {path} HTTP/1.1\r\nHost: g\r\nCookie: {cookie}\r\n\r\n".encode())
    await asyncio.wait_for(client.read_head(), 10)
    return client


async def chat(port: int, token: str, body: dict[str, Any]) -> RawClient:
    """A browser's ``POST /api/chat``, its answer's head read."""
    data = json.dumps(body).encode()
    headers = [f"Authorization: Bearer {token}", "Content-Type: application/json", f"Content-Length: {len(data)}"]
    client = await RawClient.open(port, "/api/chat", "", method="POST", headers=headers)
    client.writer.write(data)
    await asyncio.wait_for(client.read_head(), 10)
    return client


async def read_all(clients: list[RawClient], within: float) -> None:
    await asyncio.wait_for(asyncio.gather(*(client.read_to_end() for client in clients)), within)


def last_event(client: RawClient) -> bytes:
    body = client.body
    assert body.endswith(b"\n\n")
    return body[:-2].rsplit(b"\n\n", 1)[-1]


def refused(port: int) -> Any:
    return asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 2)


@pytest.mark.gen_test(timeout=40)
async def test_200_streams_that_end_within_the_drain_complete_with_every_event_and_it_exits_0(
    env: dict[str, str], gateways: Callable[..., Any], session_cookie: Callable[..., str]
) -> None:
    gate = await gateways({**env, "DRAIN_TIMEOUT": "3"})
    cookie = session_cookie()
    clients = await asyncio.gather(*(stream(gate.port, SHORT, cookie) for _ in range(200)))
    sent = gate.signal(signal.SIGTERM)
    await read_all(clients, 10)
    assert await gate.exited(4) == 0
    assert time.monotonic() - sent < 3 + 1
    for client in clients:
        assert client.status == 200 and client.ended_cleanly and not client.cut
        assert [json.loads(line[6:])["n"] for line in client.body.split(b"\n") if line.startswith(b"data: ")] == list(
            range(10)
        )
    assert [line["clean"] for line in gate.records("drained")] == [True]
    assert {line["outcome"] for line in gate.access(route="proxy")} == {"ok"}


@pytest.mark.gen_test(timeout=40)
@pytest.mark.parametrize("server_impl", ["gatehouse", "tornado"])
async def test_streams_open_at_the_deadline_end_with_shutting_down_and_dify_is_told_to_stop(
    env: dict[str, str],
    gateways: Callable[..., Any],
    session_cookie: Callable[..., str],
    dify: FakeDify,
    supabase: FakeSupabase,
    server_impl: str,
) -> None:
    gate = await gateways({**env, "DRAIN_TIMEOUT": "2", "SERVER_IMPL": server_impl})
    cookie, token = session_cookie(), supabase.mint(USER)
    tasks = [f"7c1d2e3f-4a5b-4c6d-8e7f-00000000000{n}" for n in range(3)]
    dify.scripts.extend(SlowStream(task_id=task, interval=0.2) for task in tasks)
    dify.scripts.append(Stream([b'{"event": "message", "answer": "part', 60.0], headers={"Content-Type": "text/plain"}))
    proxied = [await stream(gate.port, LONG, cookie) for _ in range(3)]
    chats = [await chat(gate.port, token, {"message": "hello"}) for _ in tasks]
    plain = await chat(gate.port, token, {"message": "hello", "stream": False})
    waiting = await RawClient.open(gate.port, "/api/proxy/slow?delay=60", cookie)  # no answer yet
    await gate.wait_for(lambda: len(dify.requests) == 4, 5)
    await asyncio.sleep(0.3)  # every chat has had events, and so its task id

    sent = gate.signal(signal.SIGTERM)
    await read_all([*proxied, *chats, plain], 5)
    await asyncio.wait_for(waiting.read_head(), 5)
    waiting_body = await asyncio.wait_for(waiting.reader.read(), 5)
    assert await gate.exited(5) == 0
    assert time.monotonic() - sent < 3

    for client in [*proxied, *chats]:
        assert client.status == 200 and client.cut and not client.ended_cleanly
        assert client.body.count(b"data: ") > 5  # served until the deadline
        assert last_event(client).startswith(SHUTTING_DOWN)
    assert plain.cut and not plain.ended_cleanly and plain.body == b'{"event": "message", "answer": "part'
    assert waiting.status == 503
    assert (
        json.loads(waiting_body.split(b"\r\n", 1)[1] if waiting.chunked else waiting_body)["error"] == "shutting_down"
    )
    assert sorted((stop.task_id, stop.user) for stop in dify.stops) == [(task, USER) for task in tasks]
    assert [line["clean"] for line in gate.records("drained")] == [False]
    outcomes = sorted(line["outcome"] for line in gate.access() if line["route"] in ("proxy", "chat"))
    assert outcomes == ["shutting_down"] * 8


# The timings of the drain's steps, long beside the margins a loaded 2-core machine needs: a
# check that something happened "after SHUTDOWN_DELAY" or "before the drain ended" keeps seconds
# between the two.
DELAY = 3.0  # SHUTDOWN_DELAY


@pytest.mark.gen_test(timeout=60)
async def test_readiness_flips_at_once_then_the_listener_closes_and_idle_connections_with_it(
    env: dict[str, str], gateways: Callable[..., Any], session_cookie: Callable[..., str]
) -> None:
    gate = await gateways({**env, "SHUTDOWN_DELAY": str(DELAY), "DRAIN_TIMEOUT": "20"})
    cookie = session_cookie()
    idle = await asyncio.open_connection("127.0.0.1", gate.port)
    assert await ask(idle, "before") == 200
    events = int((DELAY + 4) / 0.1)  # in flight for 4 s after the listener closes
    running = await stream(gate.port, f"/api/proxy/sse?events={events}&interval=0.1", cookie)

    sent = gate.signal(signal.SIGTERM)
    await gate.wait_for(lambda: gate.records("draining"), DELAY)
    ready = await RawClient.open(gate.port, "/readyz", "")
    await ready.read_head()
    assert ready.status == 503
    assert json.loads(await ready.reader.readexactly(int(ready.headers["content-length"])))["status"] == "draining"
    assert await ask(idle, "during-delay") == 200  # kept alive and served during SHUTDOWN_DELAY
    healthy = await asyncio.open_connection("127.0.0.1", gate.port)
    assert await ask(healthy, "healthz-during-delay") == 200
    echo = await RawClient.open(gate.port, "/api/proxy/echo", cookie)
    await echo.read_head()
    assert echo.status == 200
    assert time.monotonic() - sent < DELAY  # all of that before the listener closed
    assert not gate.records("drained")

    assert await asyncio.wait_for(idle[0].read(), DELAY + 5) == b""  # step 3 closed the idle connection
    closed_after = time.monotonic() - sent
    # Not before SHUTDOWN_DELAY; at step 3, not at the end of the drain (4 s later, with the stream).
    assert DELAY - 0.1 < closed_after < DELAY + 2.5
    assert gate.proc.returncode is None  # the drain goes on: the stream still runs
    with pytest.raises(ConnectionRefusedError):
        await refused(gate.port)
    await read_all([running], 15)
    assert running.ended_cleanly and running.body.count(b"data: ") == events  # in flight: ran to its end
    assert await gate.exited(5) == 0
    assert [line["clean"] for line in gate.records("drained")] == [True]
    for conn in (idle, healthy):
        conn[1].close()


@pytest.mark.gen_test(timeout=60)
async def test_the_supervisor_drains_both_workers_and_a_worker_takes_a_duplicate_sigterm_in_its_stride(
    env: dict[str, str], gateways: Callable[..., Any], session_cookie: Callable[..., str]
) -> None:
    gate = await gateways({**env, "WORKERS": "2", "SHUTDOWN_DELAY": "1", "DRAIN_TIMEOUT": "3"}, serving=2)
    cookie = session_cookie()
    held: dict[int, list[Connection]] = {0: [], 1: []}
    try:
        await spread_until(gate, held, lambda held, _: min(len(conns) for conns in held.values()) >= 2, "spread")
        short = [await stream_on(held[worker][0], SHORT, cookie) for worker in (0, 1)]
        long = [await stream_on(held[worker][1], LONG, cookie) for worker in (0, 1)]

        sent = gate.signal(signal.SIGTERM)
        for line in gate.records("worker started"):
            os.kill(line["pid"], signal.SIGTERM)  # as systemd's default KillMode=control-group does too
        await gate.wait_for(lambda: len(gate.records("draining")) == 2, 5)
        ready = await RawClient.open(gate.port, "/readyz", "")
        await ready.read_head()
        assert ready.status == 503  # whichever worker answers
        await gate.wait_for(lambda: len(gate.records("drain deadline: ending what is still open")) == 2, 10)
        with pytest.raises(ConnectionRefusedError):
            await refused(gate.port)
        await read_all([*short, *long], 10)
        assert await gate.exited(10) == 0
        # SHUTDOWN_DELAY + DRAIN_TIMEOUT + the deadline's 0.5 s, and two exits: not the 60 s stream.
        assert time.monotonic() - sent < 1 + 3 + 0.5 + 2.5
    finally:
        for conns in held.values():
            for _, writer in conns:
                writer.close()

    for client in short:
        assert client.ended_cleanly and client.body.count(b"data: ") == 10
    for client in long:
        assert client.cut and last_event(client).startswith(SHUTTING_DOWN)
    streams = [line for line in gate.access(route="proxy")]
    assert sorted((line["worker"], line["outcome"]) for line in streams) == [
        (0, "ok"),
        (0, "shutting_down"),
        (1, "ok"),
        (1, "shutting_down"),
    ]
    assert sorted((line["worker"], line["exit_code"]) for line in gate.records("worker stopped")) == [(0, 0), (1, 0)]


@pytest.mark.gen_test(timeout=40)
@pytest.mark.parametrize("workers", [1, 2])
async def test_a_second_signal_exits_at_once(
    env: dict[str, str], gateways: Callable[..., Any], session_cookie: Callable[..., str], workers: int
) -> None:
    gate = await gateways({**env, "WORKERS": str(workers), "DRAIN_TIMEOUT": "30"}, serving=workers)
    running = await stream(gate.port, LONG, session_cookie())
    gate.signal(signal.SIGTERM)
    await gate.wait_for(lambda: len(gate.records("draining")) == workers, 5)
    second = gate.signal(signal.SIGTERM)
    assert await gate.exited(5) == 1
    assert time.monotonic() - second < 3  # at once: not after the drain's 30 s
    await read_all([running], 5)
    assert running.cut and not running.ended_cleanly
    if workers > 1:
        assert gate.records("second signal: killing the workers")
    else:
        assert gate.records("second signal: exiting now")


@pytest.mark.gen_test(timeout=20)
@pytest.mark.parametrize("server_impl", ["gatehouse", "tornado"])
async def test_the_requests_in_hand_are_counted_in_and_out_whatever_their_end(
    backend: FakeBackend, fetch: Any, session_cookie: Callable[..., str], server_impl: str
) -> None:
    """Tornado's server cannot say when it is idle: the drain counts the handlers in hand
    (`Lifecycle.requests`). Every way a request ends takes it out of the count."""
    lifecycle = Lifecycle()
    settings = test_settings(backend.url, server_impl=server_impl, max_body_bytes=1000)
    ctx = Context.build(settings)
    server = make_server(make_app(settings, ctx, lifecycle), settings)
    [sock] = bind_sockets(0, "127.0.0.1", family=socket.AF_INET)
    server.add_sockets([sock])
    port, cookie = sock.getsockname()[1], session_cookie()
    url = f"http://127.0.0.1:{port}"
    try:
        assert (await fetch(url + "/api/proxy/echo", headers={"Cookie": cookie})).code == 200
        assert (await fetch(url + "/nowhere")).code == 404
        too_large = await fetch(url + "/api/proxy/upload", method="POST", body=b"x" * 2000, headers={"Cookie": cookie})
        assert too_large.code == 413
        left = await stream(port, LONG, cookie)
        await left.read_piece()
        assert len(lifecycle.requests) == 1  # the stream, in hand
        left.close()
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(f"POST /api/proxy/echo HTTP/1.1\r\nHost: g\r\nCookie: {cookie}\r\n".encode())
        writer.write(b"Content-Type: text/plain\r\nContent-Length: 100\r\n\r\nabc")  # and no more of it
        await asyncio.sleep(0.2)
        writer.close()
        assert await wait_until(lambda: not lifecycle.requests, 3)
    finally:
        server.stop()
        await server.close_all_connections()
        await ctx.close()
