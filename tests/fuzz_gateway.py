"""One gatehouse, in front of the three fakes, for the property-based suites (tests/test_fuzz_*.py).

Hypothesis's ``@given`` runs a test function many times; pytest-tornado's ``gen_test`` gives each
test a fresh IOLoop. They do not combine, and starting a gateway per example would cost more than
the example. So `gateway()` starts one, once per process, on an asyncio loop in a background
thread (gatehouse with both features, a `FakeBackend` under a base path, a `FakeDify` and a
`FakeSupabase`), and the tests talk to it synchronously over raw sockets: a fuzzed request must
reach gatehouse byte for byte, which ``http.client`` (it validates URLs and headers) would not allow.

`FuzzGateway.exchange` sends one request on its own connection and returns an `Exchange`: the
answer, what the backend and Dify received for it, and every log line written meanwhile.
`assert_sound` checks what must hold for every exchange whatever was sent: no 500, every error
as gatehouse's JSON, no secret in the answer or the logs, nothing but the session's token sent to
the backend, nothing but the Supabase user's id sent to Dify as ``user``.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import dataclasses
import itertools
import json
import logging
import re
import socket
import threading
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, TypeVar

from demo.dify import Recorded as DifyRecorded
from handlers.context import Context
from server import configure_logging, make_app, make_server
from settings import Settings, SupabaseSettings
from tests.conftest import ACCESS_TOKEN, REFRESH_TOKEN, SECRET, test_settings
from tests.fakes.backend import FakeBackend, Recorded
from tests.fakes.dify import FakeDify
from tests.fakes.supabase import FakeSupabase

__all__ = [
    "BACKEND_BASE",
    "SUPABASE_USER_ID",
    "Answer",
    "Exchange",
    "FuzzGateway",
    "assert_sound",
    "gateway",
]

T = TypeVar("T")

BACKEND_BASE = "/base"  # the backend URL has a base path: forwarded paths must stay under it
SUPABASE_USER_ID = "2b7e1c9a-5d3f-4e6a-9b8c-7d6e5f4a3b2c"
UPSTREAM_5XX = frozenset((502, 503, 504))  # what failing fakes may legitimately cause
_SNAKE = re.compile(r"[a-z][a-z0-9]*(?:_[a-z0-9]+)*")
ANSWER_TIMEOUT = 20.0
MAX_LOG_LINES = 10_000


@dataclasses.dataclass(frozen=True)
class Answer:
    status: int
    headers: list[tuple[str, str]]
    body: bytes  # de-chunked
    raw: bytes

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k.lower() == name.lower()), None)

    def error(self) -> dict[str, Any] | None:
        """The body as gatehouse's error object, None when it is not one."""
        try:
            value = json.loads(self.body)
        except ValueError:
            return None
        if isinstance(value, dict) and set(value) == {"error", "message"}:
            return value
        return None

    @property
    def from_http_layer(self) -> bool:
        """Tornado's own refusal of a message it cannot parse (``400 Bad Request`` with no
        headers at all): written before any gatehouse code runs, so it cannot be JSON."""
        return self.status == 400 and not self.headers and not self.body


@dataclasses.dataclass
class Exchange:
    method: str
    request: bytes
    request_id: str
    answer: Answer | None  # None: the connection closed without an answer
    backend: list[Recorded]  # every request the backend received meanwhile
    dify: list[DifyRecorded]
    logs: list[str]

    def proxied(self) -> list[Recorded]:
        """The backend requests that carry this exchange's request id (gatehouse's own calls,
        refresh and login, carry none)."""
        return [r for r in self.backend if r.header("x-request-id") == self.request_id]

    def describe(self) -> str:
        answer = self.answer.raw[:2000] if self.answer is not None else b"(connection closed without an answer)"
        tracebacks = [line for line in self.logs if '"exc_info"' in line]
        return (
            f"\nrequest: {self.request[:3000]!r}\nanswer: {answer!r}\n"
            f"backend saw: {[(r.method, r.path, r.query) for r in self.backend]}\n"
            f"dify saw: {[(r.method, r.path) for r in self.dify]}\n" + "".join(f"log: {t}\n" for t in tracebacks)
        )


class _Capture(logging.Handler):
    """Every record any logger writes, formatted as production prints it (JSON)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self._lines: list[str] = []
        self._lock = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        line = self.format(record)
        with self._lock:
            self._lines.append(line)
            # Other tests in the session log here too, and only exchanges drain it.
            del self._lines[:-MAX_LOG_LINES]

    def take(self) -> list[str]:
        with self._lock:
            lines, self._lines = self._lines, []
        return lines

    def peek(self) -> list[str]:
        with self._lock:
            return list(self._lines)


class FuzzGateway:
    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="fuzz-gateway", daemon=True)
        self._ids = itertools.count()
        self._capture = _Capture()
        self._install_logging()
        self._thread.start()
        self.call(self._start)

    # -- the loop thread ----------------------------------------------------------------

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_forever()

    def call(self, fn: Callable[[], Awaitable[T]]) -> T:
        """Run ``fn()`` on the gateway's loop and wait for its result."""

        async def run() -> T:
            return await fn()

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(ANSWER_TIMEOUT)

    def on_loop(self, fn: Callable[[], T]) -> T:
        """``fn()`` run on the gateway's loop: the fakes' state is only touched there."""

        async def run() -> T:
            return fn()

        return self.call(run)

    async def _start(self) -> None:
        # The fakes bind and listen in their constructors, on the current IOLoop: this one.
        self.backend = FakeBackend()
        self.dify = FakeDify()
        self.supabase = FakeSupabase()
        self.supabase.add_user("fuzz@example.com", id=SUPABASE_USER_ID)
        supabase = SupabaseSettings(
            url=self.supabase.url, anon_key=self.supabase.anon_key, jwt_secret=self.supabase.jwt_secret
        )
        self.settings: Settings = test_settings(
            self.backend.url + BACKEND_BASE,
            supabase=supabase,
            dify_api_url=self.dify.url,
            dify_api_key=self.dify.api_key,
            chat_rate_per_minute=0,  # fuzzing sends thousands of messages as one user
        )
        self.ctx = Context.build(self.settings)
        self.server = make_server(make_app(self.settings, self.ctx), self.settings)
        [sock] = _bind()
        self.port: int = sock.getsockname()[1]
        self.server.add_sockets([sock])
        self.supabase_token = self.supabase.mint(SUPABASE_USER_ID)  # ES256: the gateway fetches the JWKS
        self.supabase_hs256_token = self.supabase.mint(SUPABASE_USER_ID, alg="HS256")

    async def _stop(self) -> None:
        self.server.stop()
        await self.server.close_all_connections()
        await self.ctx.close()
        self.backend.close()
        await self.dify.aclose()
        await self.supabase.aclose()

    def close(self) -> None:
        try:
            self.call(self._stop)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)

    # -- logging ------------------------------------------------------------------------

    def _install_logging(self) -> None:
        # Production's configuration (its JSON formatter, and its filter on Tornado's line for
        # a malformed request), then every record into the capture instead of stdout.
        configure_logging("DEBUG")
        root = logging.getLogger()
        self._capture.setFormatter(root.handlers[0].formatter)
        root.handlers[:] = [self._capture]

    def _ensure_capture(self) -> None:
        # Other tests' fixtures reconfigure the root logger; take it back before each exchange.
        root = logging.getLogger()
        if self._capture not in root.handlers:
            root.addHandler(self._capture)
        root.setLevel(logging.DEBUG)

    # -- secrets ------------------------------------------------------------------------

    @property
    def secrets(self) -> dict[str, str]:
        backend = self.settings.backend
        assert backend is not None
        return {
            "access token": ACCESS_TOKEN,
            "refresh token": REFRESH_TOKEN,
            "session secret": SECRET,
            "Dify API key": self.dify.api_key,
            "backend URL": str(backend),
            "backend address": backend.netloc,
            "Supabase JWT secret": self.supabase.jwt_secret or "",
            "Supabase anon key": self.supabase.anon_key,
        }

    def leaks(self, data: bytes | str) -> list[str]:
        text = data.decode("latin-1") if isinstance(data, bytes) else data
        return [name for name, secret in self.secrets.items() if secret and secret in text]

    # -- requests -----------------------------------------------------------------------

    def exchange(
        self,
        method: str,
        target: bytes | str,
        headers: Sequence[tuple[str, bytes | str]] = (),
        body: bytes = b"",
        *,
        content_length: bool = True,
    ) -> Exchange:
        """Send one request (``Host``, ``Connection: close`` and an ``X-Request-ID`` added; a
        ``Content-Length`` for ``body`` unless told not to) and collect what followed it."""
        self._ensure_capture()
        dify_before = self.on_loop(self._forget_upstream_requests)
        self._capture.take()
        request_id = f"fuzz-{next(self._ids)}"
        lines = [_bytes(method) + b" " + _bytes(target) + b" HTTP/1.1", f"Host: 127.0.0.1:{self.port}".encode()]
        lines += [b"Connection: close", f"X-Request-ID: {request_id}".encode()]
        lines += [_bytes(name) + b": " + _bytes(value) for name, value in headers]
        if content_length and (body or method in ("POST", "PUT", "PATCH")):
            lines.append(f"Content-Length: {len(body)}".encode())
        request = b"\r\n".join(lines) + b"\r\n\r\n" + body
        answer = self._send(request)
        if answer is not None and answer.header("X-Request-ID") is not None:
            self._await_access_line(request_id)
        backend, dify = self.on_loop(lambda: (list(self.backend.requests), self.dify.requests))
        known = {id(r) for r in dify_before}  # the old ones stay referenced: ids are not reused
        dify = [r for r in dify if id(r) not in known]
        return Exchange(method, request, request_id, answer, backend, dify, self._capture.take())

    def _forget_upstream_requests(self) -> list[DifyRecorded]:
        """Drop the backend's record of earlier requests (it keeps bodies up to 1 MB each: a long
        fuzz run would grow without bound); Dify's own history is bounded, so it is returned,
        to tell this exchange's requests from earlier ones."""
        self.backend.requests.clear()
        return self.dify.requests

    def _await_access_line(self, request_id: str) -> None:
        # Logged by Tornado's finish(), before the connection closes; polled only in case a
        # handler finishes later than its answer.
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            if any(request_id in line for line in self._capture.peek()):
                return
            time.sleep(0.0005)

    def _send(self, request: bytes) -> Answer | None:
        with socket.create_connection(("127.0.0.1", self.port), timeout=ANSWER_TIMEOUT) as sock:
            # A gateway that answers early (413) and closes may reset the rest of a long body:
            # the answer is still read.
            with contextlib.suppress(OSError):
                sock.sendall(request)
            return parse_answer(_read_all(sock))

    def send_partial(self, head: bytes, body: bytes, wait: float) -> Answer | None:
        """Send ``head`` and ``body`` without ending the body, and take what is answered
        within ``wait`` seconds (None: nothing), then hang up."""
        self._ensure_capture()
        self._capture.take()
        with socket.create_connection(("127.0.0.1", self.port), timeout=ANSWER_TIMEOUT) as sock:
            with contextlib.suppress(OSError):
                sock.sendall(head + body)
            sock.settimeout(wait)
            data = _read_all(sock)
        return parse_answer(data) if data else None

    def take_logs(self) -> list[str]:
        return self._capture.take()


def _read_all(sock: socket.socket) -> bytes:
    data = bytearray()
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except OSError:  # a timeout, or a reset: what arrived is the answer
        pass
    return bytes(data)


def _bind() -> list[socket.socket]:
    from tornado.netutil import bind_sockets

    return bind_sockets(0, "127.0.0.1", family=socket.AF_INET)


def _bytes(value: bytes | str) -> bytes:
    return value if isinstance(value, bytes) else value.encode("utf-8", "surrogateescape")


def parse_answer(data: bytes) -> Answer | None:
    head, sep, rest = data.partition(b"\r\n\r\n")
    if not sep:
        return None
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ", 2)
    if len(parts) < 2 or not parts[1].isdigit():
        return None
    headers = []
    for line in lines[1:]:
        name, _, value = line.decode("latin-1").partition(":")
        headers.append((name.strip(), value.strip()))
    chunked = any(k.lower() == "transfer-encoding" and "chunked" in v.lower() for k, v in headers)
    return Answer(int(parts[1]), headers, _dechunk(rest) if chunked else rest, data)


def _dechunk(data: bytes) -> bytes:
    out = bytearray()
    pos = 0
    while True:
        end = data.find(b"\r\n", pos)
        if end < 0:
            return bytes(out)
        size = int(data[pos:end].split(b";")[0] or b"0", 16)
        if size == 0:
            return bytes(out)
        out += data[end + 2 : end + 2 + size]
        pos = end + 2 + size + 2


# -- what every exchange must satisfy -------------------------------------------------------


def assert_sound(
    gw: FuzzGateway,
    ex: Exchange,
    *,
    tokens: Iterable[str] = (),
    dify_users: Iterable[str] = (SUPABASE_USER_ID,),
    forwarded: bool | None = None,
) -> None:
    """The properties that hold for every request, whatever it carried.

    ``tokens``: the access tokens the request's sessions carry; the backend may only ever
    receive ``Authorization: Bearer <one of them>`` (or none, on a public path).
    ``dify_users``: the Supabase user ids the request could authenticate as; the only ``user``
    Dify may be told. ``forwarded``: whether the request must (True) or must not (False) have
    reached an upstream; None: either.
    """
    answer = ex.answer
    assert answer is not None, "no answer at all" + ex.describe()
    unhandled = [line for line in ex.logs if "unhandled error" in line or "upload relay failed" in line]
    assert not unhandled, "gatehouse logged an unhandled error" + ex.describe()
    assert answer.status < 500 or answer.status in UPSTREAM_5XX, f"answered {answer.status}" + ex.describe()
    if answer.status >= 400 and not answer.from_http_layer and ex.method != "HEAD":  # HEAD: no body
        error = answer.error()
        assert error is not None, "an error that is not gatehouse's JSON" + ex.describe()
        assert isinstance(error["error"], str) and _SNAKE.fullmatch(error["error"]), ex.describe()
        assert isinstance(error["message"], str) and error["message"], ex.describe()

    proxied = ex.proxied()
    header_text = "\n".join(f"{k}: {v}" for k, v in answer.headers)
    assert not gw.leaks(header_text), f"{gw.leaks(header_text)} in the answer's headers" + ex.describe()
    # The backend's own answer (its echo repeats the Authorization it got) is the backend's
    # business; every answer gatehouse wrote itself is scanned.
    if not proxied or answer.error() is not None:
        assert not gw.leaks(answer.body), f"{gw.leaks(answer.body)} in the answer" + ex.describe()
    for line in ex.logs:
        assert not gw.leaks(line), f"{gw.leaks(line)} in a log line: {line}" + ex.describe()

    allowed = {f"Bearer {t}" for t in tokens}
    for seen in proxied:
        assert seen.path.startswith(BACKEND_BASE + "/"), "forwarded outside the base" + ex.describe()
        assert_safe_backend_path(seen.path[len(BACKEND_BASE) + 1 :], ex)
        auth = seen.headers.get("authorization", [])
        assert len(auth) <= 1 and set(auth) <= allowed, f"the backend got Authorization {auth}" + ex.describe()
        assert "cookie" not in seen.headers, "a cookie reached the backend" + ex.describe()
    users = set(dify_users)
    for call in ex.dify:
        assert call.header("authorization") == f"Bearer {gw.dify.api_key}", ex.describe()
        assert "cookie" not in call.headers, "a cookie reached Dify" + ex.describe()
        seen_user = call.json.get("user") if isinstance(call.json, dict) else call.query.get("user")
        if seen_user is not None or call.method == "GET" or isinstance(call.json, dict):
            assert seen_user in users, f"Dify was told user={seen_user!r}" + ex.describe()
    if forwarded is not None:
        reached = bool(proxied) or bool(ex.dify)
        assert reached == forwarded, ("not forwarded" if forwarded else "forwarded") + ex.describe()


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def assert_safe_backend_path(raw: str, ex: Exchange) -> None:
    """An oracle written apart from upstream/paths.py: however many times a backend decodes the
    path, no segment is a dot segment, holds a separator or a control character, or is empty."""
    segments = raw.split("/")
    if len(segments) > 1 and segments[-1] == "":
        segments.pop()
    for segment in segments:
        assert segment, f"empty segment in {raw!r}" + ex.describe()
        form = segment
        for _ in range(4):
            assert form.split(";")[0] not in (".", ".."), f"dot segment in {raw!r}" + ex.describe()
            assert "/" not in form and "\\" not in form, f"separator in {raw!r}" + ex.describe()
            assert not _CONTROL.search(form), f"control character in {raw!r}" + ex.describe()
            form = urllib.parse.unquote(form, errors="replace")


_GATEWAY: FuzzGateway | None = None
_LOCK = threading.Lock()


def gateway() -> FuzzGateway:
    """The process's fuzz gateway, started on first use and closed at exit."""
    global _GATEWAY
    with _LOCK:
        if _GATEWAY is None:
            _GATEWAY = FuzzGateway()
            atexit.register(_GATEWAY.close)
        return _GATEWAY
