"""Shared fixtures: a real gatehouse on a real socket, in front of fakes on real sockets.

Tests are coroutines run by pytest-tornado (``@pytest.mark.gen_test``) on a fresh IOLoop.

* ``backend``: a `FakeBackend` (tests/fakes/backend.py), recording every request.
* ``gateway``: gatehouse in front of ``backend`` with test settings; ``start_gateway`` makes
  one with other settings or another upstream.
* ``session_cookie(**claims)``: a next-auth v4 ``Cookie`` header for the test secret.
* ``upstreams``: ``await upstreams(script)`` starts a scripted `RawUpstream` (tests/fakes/raw.py).
* ``dify`` / ``supabase``: a `FakeDify` (tests/fakes/dify.py) and a `FakeSupabase`
  (tests/fakes/supabase.py); ``chat_gateway`` is gatehouse with only the chat feature, in front
  of both; ``start_chat_gateway(**settings)`` makes one with other settings, and
  ``supabase_settings(**fields)`` the `SupabaseSettings` for the fake.
* ``fetch``: an HTTP client that never raises on status and never times a stream out.
* ``logs``: every log line gatehouse writes during the test, as formatted JSON text.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import resource
import socket
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import pytest
from tornado.httpclient import AsyncHTTPClient, HTTPResponse
from tornado.netutil import bind_sockets

from auth.nextauth import NextAuthV4Codec
from handlers.context import Context
from server import LISTEN_BACKLOG, configure_logging, make_app, make_server
from server import Server as GatewayServer
from settings import Settings, SupabaseSettings, _parse_backend_url
from tests.fakes.backend import FakeBackend
from tests.fakes.dify import FakeDify
from tests.fakes.keepalive import Answer, KeepAliveUpstream, Seen
from tests.fakes.raw import RawUpstream, Script
from tests.fakes.sse_scripts import finish_leftover_tasks
from tests.fakes.supabase import FakeSupabase

if TYPE_CHECKING:  # imports prometheus_client, which only tests with metrics on need
    from ops.metrics import GatewayMetrics

if os.environ.get("GATEHOUSE_TEST_LOOP") == "uvloop":
    # Production runs on uvloop (server.py); `make test` runs the streaming tests on it too,
    # since transports differ (pause_reading, EOF, resets) between uvloop and asyncio.
    import uvloop

    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())

# Like server.main(): each proxied stream holds two sockets, and tests hold thousands.
_, _HARD_FD_LIMIT = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (_HARD_FD_LIMIT, _HARD_FD_LIMIT))

INTEROP = json.loads((Path(__file__).parent / "fixtures" / "interop" / "fixtures.json").read_text())
SECRET: str = INTEROP["nextauth_v4"]["secret"]
ACCESS_TOKEN = "at-test-4f1d2c3b5a6e7d8c"
REFRESH_TOKEN = "rt-test-9a8b7c6d5e4f3a2b"


@dataclasses.dataclass
class RunningGateway:
    url: str
    settings: Settings
    ctx: Context
    server: GatewayServer

    async def close(self) -> None:
        self.server.stop()
        await self.ctx.close()


def test_settings(backend_url: str | None, **overrides: Any) -> Settings:
    backend = _parse_backend_url(backend_url) if backend_url is not None else None
    base = Settings(backend=backend, session_secret=SECRET, production=False)
    return dataclasses.replace(base, **overrides)


test_settings.__test__ = False  # type: ignore[attr-defined]  # a helper, not a test


def closed_port() -> int:
    """A local port with nothing listening on it."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port: int = sock.getsockname()[1]
    sock.close()
    return port


async def wait_until(condition: Callable[[], bool], seconds: float) -> bool:
    """Poll ``condition`` (state the fakes expose without an event) until true, for ``seconds``
    at most; whether it became true."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(0.01)
    return True


@pytest.fixture
def start_gateway(io_loop: Any) -> Iterator[Callable[..., RunningGateway]]:
    started: list[RunningGateway] = []

    def start(backend_url: str | None, metrics: GatewayMetrics | None = None, **overrides: Any) -> RunningGateway:
        settings = test_settings(backend_url, **overrides)
        ctx = Context.build(settings, metrics)
        server = make_server(make_app(settings, ctx), settings)
        # The production backlog: tests open a thousand streams at once, as browsers can.
        [sock] = bind_sockets(0, "127.0.0.1", family=socket.AF_INET, backlog=LISTEN_BACKLOG)
        port = sock.getsockname()[1]
        server.add_sockets([sock])
        running = RunningGateway(f"http://127.0.0.1:{port}", settings, ctx, server)
        started.append(running)
        return running

    yield start
    for running in started:
        io_loop.run_sync(running.close)


@pytest.fixture
def upstreams(io_loop: Any) -> Iterator[Callable[[Script], Awaitable[RawUpstream]]]:
    """``await upstreams(script)``: a started `RawUpstream`, closed after the test, and any task
    the test left on its loop finished (see `finish_leftover_tasks`)."""
    yield from _started_for_the_test(io_loop, RawUpstream)
    finish_leftover_tasks(io_loop)


@pytest.fixture
def keepalive(io_loop: Any) -> Iterator[Callable[[Callable[[Seen], Answer]], Awaitable[KeepAliveUpstream]]]:
    """``await keepalive(answer)``: a started `KeepAliveUpstream`, closed after the test."""
    yield from _started_for_the_test(io_loop, KeepAliveUpstream)


class _Fake(Protocol):
    async def start(self) -> Any: ...
    async def close(self) -> None: ...


Arg = TypeVar("Arg")
Server = TypeVar("Server", bound=_Fake)


def _started_for_the_test(io_loop: Any, fake: Callable[[Arg], Server]) -> Iterator[Callable[[Arg], Awaitable[Server]]]:
    """A fixture's body: yields a function that builds and starts ``fake(arg)``, and closes
    every one it started after the test."""
    started: list[Server] = []

    async def start_and_remember(arg: Arg) -> Server:
        server = fake(arg)
        await server.start()
        started.append(server)
        return server

    yield start_and_remember
    for server in started:
        io_loop.run_sync(server.close)


@pytest.fixture
def backend(io_loop: Any) -> Iterator[FakeBackend]:
    fake = FakeBackend()
    yield fake
    fake.close()


@pytest.fixture
def gateway(backend: FakeBackend, start_gateway: Callable[..., RunningGateway]) -> RunningGateway:
    return start_gateway(backend.url)


@pytest.fixture
def dify(io_loop: Any) -> Iterator[FakeDify]:
    fake = FakeDify()
    yield fake
    io_loop.run_sync(fake.aclose)


@pytest.fixture
def supabase(io_loop: Any) -> Iterator[FakeSupabase]:
    fake = FakeSupabase()
    yield fake
    io_loop.run_sync(fake.aclose)


@pytest.fixture
def supabase_settings(supabase: FakeSupabase) -> Callable[..., SupabaseSettings]:
    """`SupabaseSettings` for the fake (local mode, with its HS256 secret), ``fields`` replaced."""

    def make(**fields: Any) -> SupabaseSettings:
        base = SupabaseSettings(url=supabase.url, anon_key=supabase.anon_key, jwt_secret=supabase.jwt_secret)
        return dataclasses.replace(base, **fields)

    return make


@pytest.fixture
def start_chat_gateway(
    start_gateway: Callable[..., RunningGateway],
    dify: FakeDify,
    supabase_settings: Callable[..., SupabaseSettings],
) -> Callable[..., RunningGateway]:
    """``start_chat_gateway(supabase=..., **settings)``: gatehouse serving only ``/api/chat``."""

    def start(**overrides: Any) -> RunningGateway:
        overrides.setdefault("supabase", supabase_settings())
        overrides.setdefault("dify_api_url", dify.url)
        overrides.setdefault("dify_api_key", dify.api_key)
        return start_gateway(None, **overrides)

    return start


@pytest.fixture
def chat_gateway(start_chat_gateway: Callable[..., RunningGateway]) -> RunningGateway:
    return start_chat_gateway()


@pytest.fixture
def codec() -> NextAuthV4Codec:
    return NextAuthV4Codec(SECRET)


@pytest.fixture
def session_cookie(codec: NextAuthV4Codec) -> Callable[..., str]:
    def make(cookie_name: str = "next-auth.session-token", **claims: Any) -> str:
        claims = {"sub": "user-1", "access_token": ACCESS_TOKEN, "refresh_token": REFRESH_TOKEN, **claims}
        return f"{cookie_name}={codec.encode(claims)}"

    return make


@pytest.fixture
def fetch(io_loop: Any) -> Iterator[Callable[..., Any]]:
    client = AsyncHTTPClient(force_instance=True, max_body_size=2**40)

    async def do(url: str, **kwargs: Any) -> HTTPResponse:
        kwargs.setdefault("request_timeout", 60)
        kwargs.setdefault("follow_redirects", False)
        kwargs.setdefault("decompress_response", False)
        kwargs.setdefault("allow_nonstandard_methods", True)
        return await client.fetch(url, raise_error=False, **kwargs)

    yield do
    client.close()


class LogCapture(logging.Handler):
    """Keeps every record as the JSON line production would print."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))

    def records(self, logger: str | None = None) -> list[dict[str, Any]]:
        parsed = [json.loads(line) for line in self.lines]
        return [r for r in parsed if logger is None or r.get("logger") == logger]

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


@pytest.fixture
def logs() -> Iterator[LogCapture]:
    configure_logging("DEBUG")
    root = logging.getLogger()
    stdout_handler = root.handlers[0]
    capture = LogCapture()
    capture.setFormatter(stdout_handler.formatter)
    root.addHandler(capture)
    yield capture
    root.removeHandler(capture)
