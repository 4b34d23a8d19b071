"""The servers a browser test talks to, run on an asyncio loop in a thread of the test process.

Playwright's sync API drives Chromium from the test's own thread, and it must not share that
thread with a running event loop; gatehouse, its demo upstreams and the other origins' pages
run on `LoopThread` instead. Being in-process, the tests read what reached an upstream (the
demo backend's and the demo Dify's records) directly, on the loop's own thread (`LoopThread.call`).
``time.monotonic()`` is one clock for both threads, so the fakes' send times compare with the
moment the test saw a token on screen.

* `Gatehouse`: gatehouse in demo mode, as ``server.py`` runs it (``launch_demo``, ``make_app``,
  ``make_server``), with the settings from the environment variables a test gives.
* `OtherOrigin`: static HTML pages on another port (another origin), for cross-site requests.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import re
import secrets
import socket
import threading
import time
from collections.abc import Callable, Coroutine, Mapping
from typing import Any, TypeVar

from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets
from tornado.web import Application, RequestHandler

from demo import DemoUpstreams, launch_demo
from demo.backend import Received
from handlers.context import Context
from server import Server, make_app, make_server
from settings import Settings, load_settings
from tests.browser.scan import TEST_PAGE_HEADER

__all__ = [
    "Answered",
    "Gatehouse",
    "LoopThread",
    "OtherOrigin",
    "free_port",
    "start_gatehouse",
    "start_other_origin",
]

T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


@dataclasses.dataclass(frozen=True)
class Answered:
    """One request gatehouse answered, from its access log line."""

    method: str
    path: str
    status: int
    at: float  # time.monotonic() when it was logged


class _AccessLog(logging.Handler):
    """Gatehouse's access log lines (``gatehouse.access``), kept as `Answered`."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.answered: list[Answered] = []

    def emit(self, record: logging.LogRecord) -> None:
        fields = vars(record)
        if {"method", "path", "status"} <= fields.keys():  # an access line, not another message
            self.answered.append(Answered(fields["method"], fields["path"], fields["status"], time.monotonic()))


class LoopThread:
    """An asyncio event loop running in a daemon thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="browser-test-servers", daemon=True)
        self._thread.start()
        self.access_log = _AccessLog()
        access = logging.getLogger("gatehouse.access")
        self._level = access.level
        access.setLevel(logging.INFO)
        access.addHandler(self.access_log)

    def run(self, coroutine: Coroutine[Any, Any, T], timeout: float = 30) -> T:
        """Run ``coroutine`` on the loop; its result."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def call(self, function: Callable[[], T], timeout: float = 10) -> T:
        """``function()`` on the loop's thread, where the servers' state is changed."""

        async def on_loop() -> T:
            return function()

        return self.run(on_loop(), timeout)

    def close(self) -> None:
        access = logging.getLogger("gatehouse.access")
        access.removeHandler(self.access_log)
        access.setLevel(self._level)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


@dataclasses.dataclass
class Gatehouse:
    """Gatehouse in demo mode, and its demo upstreams."""

    url: str
    settings: Settings
    demo: DemoUpstreams
    loop: LoopThread
    _ctx: Context
    _server: Server

    @property
    def secret(self) -> str:
        assert self.settings.session_secret is not None
        return self.settings.session_secret

    def call(self, function: Callable[[], T]) -> T:
        return self.loop.call(function)

    def answered(self, since: float) -> list[Answered]:
        """What gatehouse answered since ``since`` (``time.monotonic()``), oldest first."""
        return self.call(lambda: [a for a in self.loop.access_log.answered if a.at >= since])

    def received(self) -> list[Received]:
        """Every request the demo backend has received, oldest first."""
        return self.call(lambda: list(self.demo.backend.received))

    def secrets(self) -> dict[str, re.Pattern[str]]:
        """What must never reach a browser, by name: every token the demo backend issued, the
        Dify key, the backend's and Dify's addresses, the session secret."""

        def collect() -> dict[str, re.Pattern[str]]:
            found = {
                f"backend token {token[:12]}…": re.compile(re.escape(token))
                for token in self.demo.backend.tokens.issued
            }
            found["the Dify key"] = re.compile(re.escape(self.demo.dify.api_key))
            found["the session secret"] = re.compile(re.escape(self.secret))
            for name, url in (("the backend's URL", self.demo.backend_url), ("Dify's URL", self.demo.dify_url)):
                address = re.sub(r"^https?://", "", url).split("/")[0]  # 127.0.0.1:<port>
                found[name] = re.compile(rf"(?<![\d.]){re.escape(address)}(?!\d)")
            return found

        return self.call(collect)

    async def close(self) -> None:
        self._server.stop()
        await self._server.close_all_connections()
        await self._ctx.close()
        self.demo.stop()


async def _start_gatehouse(loop: LoopThread, port: int, environ: Mapping[str, str]) -> Gatehouse:
    env = {"PORT": str(port), "SESSION_SECRET": secrets.token_urlsafe(32), **environ}
    settings = load_settings(env, dotenv=None)
    assert settings.demo, "a browser test's gatehouse runs in demo mode"
    demo = await launch_demo(settings)
    ctx = Context.build(demo.settings)
    server = make_server(make_app(demo.settings, ctx), demo.settings)
    server.add_sockets(bind_sockets(port, "127.0.0.1"))
    return Gatehouse(f"http://127.0.0.1:{port}", demo.settings, demo, loop, ctx, server)


def start_gatehouse(loop: LoopThread, port: int, environ: Mapping[str, str] | None = None) -> Gatehouse:
    """Gatehouse in demo mode on ``port``, configured by ``environ`` as by the environment."""
    return loop.run(_start_gatehouse(loop, port, environ or {}))


class _Page(RequestHandler):
    def initialize(self, pages: dict[str, str]) -> None:
        self.pages = pages

    def get(self, name: str) -> None:
        if name not in self.pages:
            self.set_status(404)
            return
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.set_header(TEST_PAGE_HEADER, "1")
        self.write(self.pages[name])


@dataclasses.dataclass
class OtherOrigin:
    """HTML pages served from another port: ``url(name, host)`` after ``add(name, html)``."""

    port: int
    pages: dict[str, str]
    _server: HTTPServer

    def add(self, name: str, html: str) -> None:
        self.pages[name] = html

    def url(self, name: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}/{name}"

    def close(self) -> None:
        self._server.stop()


def start_other_origin(loop: LoopThread) -> OtherOrigin:
    async def start() -> OtherOrigin:
        pages: dict[str, str] = {}
        server = HTTPServer(Application([(r"/([A-Za-z0-9_.-]*)", _Page, {"pages": pages})]))
        sockets = bind_sockets(0, "127.0.0.1")
        server.add_sockets(sockets)
        return OtherOrigin(int(sockets[0].getsockname()[1]), pages, server)

    return loop.run(start())
