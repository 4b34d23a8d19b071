"""A fake private backend on a real socket, recording every request it receives.

Routes (any method unless said otherwise):

* ``/echo/...``: JSON of what arrived: method, raw path, raw query, headers, body size and
  SHA-256 (the body is read streamed, so 20 MB uploads cost nothing).
* ``/bytes/<n>``: ``n`` deterministic bytes (`payload`); ``?chunked=1`` omits Content-Length.
* ``/gzip``: a gzip-encoded JSON body with ``Content-Encoding: gzip`` and its Content-Length.
* ``/status/<code>``: that status with a JSON body (and a ``Retry-After`` on 429/503).
* ``/headers``: a response with ``Set-Cookie``, hop-by-hop and ``Connection``-named headers,
  and a CORS grant of its own (``Access-Control-Allow-Origin: *``) with ``Vary``.
* ``/sse?events=N&interval=S``: N SSE events, each ``data: {"n": i, "sent": <time>}``;
  ``&wait=W``: the head sent alone first, then W seconds before the first event.
* ``/slow?delay=S``: waits S seconds before answering.
* ``/auth/password-reset...``, ``/auth/forgot-password...``: same as ``/echo``.
* ``POST /auth/login`` ``{"username": "ada", "password": "correct horse"}``: ``at-login`` /
  ``rt-login`` and a ``user`` (which carries an ``api_token`` the browser must never see).
* ``POST /auth/refresh`` ``{"refresh_token"}``: rotates: each refresh token in
  `FakeBackend.refresh_tokens` works once, for ``at-<n>`` / ``rt-<n>`` (``expires_in`` 3600);
  reuse or an unknown token is a 401. `refresh_delay` slows it down; `refresh_status` forces
  an answer (e.g. 500).

`FakeBackend.requests` is the list of `Recorded` requests, in arrival order.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gzip
import hashlib
import json
import random
import time
from typing import Any

from tornado.httpserver import HTTPServer
from tornado.testing import bind_unused_port
from tornado.web import Application, RequestHandler, stream_request_body

__all__ = ["FakeBackend", "Recorded", "payload"]


def payload(size: int, seed: int = 7) -> bytes:
    """``size`` deterministic, incompressible bytes."""
    return random.Random(seed).randbytes(size)


@dataclasses.dataclass
class Recorded:
    method: str
    path: str  # raw, as on the request line
    query: str
    headers: dict[str, list[str]]
    body_size: int = 0
    body_sha256: str = ""
    body: bytes = b""  # kept only when small

    def header(self, name: str) -> str | None:
        values = self.headers.get(name.lower())
        return values[0] if values else None


@stream_request_body
class _Handler(RequestHandler):
    SUPPORTED_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS")

    def initialize(self, backend: FakeBackend) -> None:
        self.backend = backend

    def prepare(self) -> None:
        self.request.connection.set_max_body_size(2**40)  # type: ignore[union-attr]
        headers: dict[str, list[str]] = {}
        for name, value in self.request.headers.get_all():
            headers.setdefault(name.lower(), []).append(value)
        self.record = Recorded(self.request.method or "", self.request.path, self.request.query, headers)
        self.digest = hashlib.sha256()
        self.small = bytearray()
        self.backend.requests.append(self.record)

    def data_received(self, chunk: bytes) -> None:
        self.record.body_size += len(chunk)
        self.digest.update(chunk)
        if len(self.small) < 1_000_000:
            self.small += chunk

    def json(self, value: Any, status: int = 200) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(value))

    async def get(self) -> None:
        self.record.body_sha256 = self.digest.hexdigest()
        self.record.body = bytes(self.small)
        path = self.request.path
        if path.startswith("/bytes/"):
            await self.send_bytes(int(path.split("/")[2]))
        elif path == "/gzip":
            self.set_header("Content-Encoding", "gzip")
            self.set_header("Content-Type", "application/json")
            self.finish(gzip.compress(json.dumps({"compressed": True, "pad": "x" * 2000}).encode()))
        elif path.startswith("/status/"):
            code = int(path.split("/")[2])
            if code in (429, 503):
                self.set_header("Retry-After", "7")
            self.json({"detail": f"backend says {code}"}, code)
        elif path == "/headers":
            self.set_header("Set-Cookie", "backend_session=leak; Path=/")
            self.set_header("Connection", "X-Hop-Secret")
            self.set_header("X-Hop-Secret", "hop")
            self.set_header("Keep-Alive", "timeout=5")
            self.set_header("Proxy-Authenticate", "Basic")
            self.set_header("X-Backend", "kept")
            # A backend's own CORS grant: gatehouse, not the backend, decides who may read.
            self.set_header("Access-Control-Allow-Origin", "*")
            self.set_header("Access-Control-Allow-Credentials", "true")
            self.set_header("Vary", "Accept-Encoding")
            self.json({"ok": True})
        elif path == "/sse":
            await self.send_events(
                int(self.get_query_argument("events", "5")),
                float(self.get_query_argument("interval", "0.05")),
                float(self.get_query_argument("wait", "0")),
            )
        elif path == "/auth/refresh" and self.request.method == "POST":
            await self.refresh()
        elif path == "/auth/login" and self.request.method == "POST":
            self.login()
        elif path == "/slow":
            await asyncio.sleep(float(self.get_query_argument("delay", "1")))
            self.json({"slow": True})
        else:
            self.json(self.echo())

    post = put = patch = delete = options = get

    def login(self) -> None:
        credentials = json.loads(self.record.body or b"{}")
        if credentials != {"username": "ada", "password": "correct horse"}:
            self.json({"detail": "invalid credentials"}, 401)
            return
        self.backend.refresh_tokens.add("rt-login")
        user = {"id": "u-ada", "name": "Ada Lovelace", "email": "ada@example.com", "api_token": "leak-me-not"}
        self.json({"access_token": "at-login", "refresh_token": "rt-login", "expires_in": 900, "user": user})

    async def refresh(self) -> None:
        backend = self.backend
        await asyncio.sleep(backend.refresh_delay)
        if backend.refresh_status is not None:
            self.json({"detail": "forced"}, backend.refresh_status)
            return
        token = json.loads(self.record.body or b"{}").get("refresh_token")
        if token not in backend.refresh_tokens:
            self.json({"detail": "invalid or reused refresh token"}, 401)
            return
        backend.refresh_tokens.discard(token)
        backend.issued += 1
        fresh = f"rt-{backend.issued}"
        backend.refresh_tokens.add(fresh)
        self.json({"access_token": f"at-{backend.issued}", "refresh_token": fresh, "expires_in": 3600})

    def echo(self) -> dict[str, Any]:
        r = self.record
        return {
            "method": r.method,
            "path": r.path,
            "query": r.query,
            "headers": r.headers,
            "body_size": r.body_size,
            "body_sha256": r.body_sha256,
        }

    async def send_bytes(self, size: int) -> None:
        data = payload(size)
        self.set_header("Content-Type", "application/octet-stream")
        if self.get_query_argument("chunked", None) is None:
            self.set_header("Content-Length", str(size))
        for start in range(0, size, 256 * 1024):
            self.write(data[start : start + 256 * 1024])
            await self.flush()

    async def send_events(self, count: int, interval: float, wait: float = 0.0) -> None:
        self.set_header("Content-Type", "text/event-stream; charset=utf-8")
        if wait:
            await self.flush()  # the head alone
            await asyncio.sleep(wait)
        for n in range(count):
            self.write(f"data: {json.dumps({'n': n, 'sent': time.time()})}\n\n")
            await self.flush()
            await asyncio.sleep(interval)


class FakeBackend:
    """Serve the fake backend on 127.0.0.1 in the current IOLoop; `close` when done."""

    def __init__(self) -> None:
        self.requests: list[Recorded] = []
        self.refresh_tokens: set[str] = {"rt-0"}
        self.issued = 0
        self.refresh_delay = 0.0
        self.refresh_status: int | None = None
        sock, self.port = bind_unused_port()
        # The fake logs nothing: the log scans in tests judge only gatehouse's own lines.
        app = Application([(r"/.*", _Handler, {"backend": self})], log_function=lambda _: None)
        self.server = HTTPServer(app, max_body_size=2**40)
        self.server.add_sockets([sock])

    def calls(self, path: str) -> list[Recorded]:
        return [r for r in self.requests if r.path == path]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        self.server.stop()
