"""A small private backend for demo mode: what gatehouse sits in front of.

Endpoints (all JSON unless noted; those marked * need ``Authorization: Bearer <access token>``):

* ``GET /me`` *: the signed-in user
* ``GET /items`` *, ``POST /items`` * (JSON): a tiny per-process list; an item's ``data`` is the
  body as it came (not parsed and serialised again), and the list keeps the newest 100 items within
  1 MiB (`ITEMS_KEPT`, `ITEMS_BYTES`); a body that is not JSON in UTF-8 is 400 ``invalid_json``
* ``DELETE /items/{id}`` *: 204, or 404 when no such item is kept
* ``POST /upload`` * (multipart/form-data): name, size and SHA-256 of each uploaded file
* ``GET /completion?prompt=`` *: a Server-Sent Events "completion", one word per event
* ``POST /auth/login`` ``{"username", "password"}``: tokens for the demo user (``demo``/``demo``)
* ``POST /auth/refresh`` ``{"refresh_token"}``: new, rotated tokens
* ``GET /auth/password-reset`` (public): pretends to send a reset mail

Access tokens are short-lived HS256 JWTs under a key private to this process.

`DemoBackend` holds what tests inspect: `DemoBackend.received` (every request's method, path,
bearer token and arrival time), `DemoBackend.completions` (when each completion event was
sent), and `TokenIssuer.issued` (every token handed out); each keeps only the newest entries.
Times are ``time.monotonic()``, which on Linux one machine's processes share.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import itertools
import json
import secrets
import sys
import time
from collections import deque
from typing import Any

import jwt
from tornado.web import Application

from demo.common import History, PathOnlyLogging

__all__ = ["DEMO_USER", "Completion", "DemoBackend", "Received", "TokenIssuer", "make_backend_app"]

DEMO_USER = {"id": "demo-user", "name": "Demo User", "email": "demo@example.com"}
ACCESS_TOKEN_SECONDS = 15 * 60
ITEMS_KEPT = 100
ITEMS_BYTES = 1024 * 1024  # GET /items sends them all, on every call
JSON_WHITESPACE = b" \t\r\n"
KEPT = 1000  # received requests, completions and issued tokens remembered, the newest
RECEIVED_BYTES = 1024 * 1024
COMPLETION_DELAY = 0.15  # seconds between two words of a completion


class TokenIssuer:
    def __init__(self) -> None:
        self._key = secrets.token_bytes(32)
        self._refresh: dict[str, str] = {}  # live refresh token -> user id
        self.issued: deque[str] = deque(maxlen=2 * KEPT)  # access and refresh tokens, the newest

    def issue(self, user_id: str) -> tuple[str, str]:
        now = int(time.time())
        claims = {"sub": user_id, "iat": now, "exp": now + ACCESS_TOKEN_SECONDS, "jti": secrets.token_hex(8)}
        access = jwt.encode(claims, self._key, "HS256")
        refresh = secrets.token_urlsafe(24)
        self._refresh[refresh] = user_id
        self.issued.extend((access, refresh))
        return access, refresh

    def expires_at(self, access: str) -> int:
        return int(jwt.decode(access, self._key, algorithms=["HS256"])["exp"])

    def user_of(self, access: str) -> str | None:
        try:
            return str(jwt.decode(access, self._key, algorithms=["HS256"])["sub"])
        except jwt.PyJWTError:
            return None

    def rotate(self, refresh: str) -> tuple[str, str] | None:
        user_id = self._refresh.pop(refresh, None)
        return None if user_id is None else self.issue(user_id)


@dataclasses.dataclass(frozen=True)
class Received:
    """A request as it reached the backend (never its body), with the headers that say where
    the browser's request came from (gatehouse passes ``Origin`` and ``Sec-Fetch-Site`` on, and
    sets ``X-Forwarded-Host`` to the ``Host`` it was sent)."""

    method: str
    path: str
    bearer: str | None  # the access token it carried
    origin: str | None
    fetch_site: str | None
    forwarded_host: str | None
    at: float  # time.monotonic() on arrival

    def footprint(self) -> int:
        return sum(map(sys.getsizeof, (self, *dataclasses.astuple(self))))


@dataclasses.dataclass
class Completion:
    """One ``GET /completion`` stream: when each event was written and flushed."""

    prompt: str
    sent: list[float] = dataclasses.field(default_factory=list)  # time.monotonic(), one per word
    finished: float | None = None  # when ``done`` went out; None if it never did


class DemoBackend:
    """The demo backend's state and its `Application`."""

    def __init__(self, completion_delay: float = COMPLETION_DELAY) -> None:
        self.tokens = TokenIssuer()
        self.items = History[bytes](ITEMS_BYTES, ITEMS_KEPT)
        self.ids = itertools.count(1)
        self.received = History[Received](RECEIVED_BYTES, KEPT)
        self.completions: deque[Completion] = deque(maxlen=KEPT)
        self.completion_delay = completion_delay
        args = {"backend": self}
        self.app = Application(
            [
                (r"/me", Me, args),
                (r"/items", Items, args),
                (r"/items/([0-9]+)", Item, args),
                (r"/upload", Upload, args),
                (r"/completion", CompletionStream, args),
                (r"/auth/login", Login, args),
                (r"/auth/refresh", Refresh, args),
                (r"/auth/password-reset", PasswordReset, args),
            ],
            default_handler_class=NotFound,
            default_handler_args=args,
            log_function=lambda handler: None,
        )


class _Handler(PathOnlyLogging):
    def initialize(self, backend: DemoBackend) -> None:
        self.backend = backend
        self.tokens, self.items, self.ids = backend.tokens, backend.items, backend.ids

    def prepare(self) -> None:
        headers = self.request.headers
        scheme, _, token = headers.get("Authorization", "").partition(" ")
        seen = Received(
            self.request.method or "",
            self.request.path,
            token if scheme == "Bearer" else None,
            headers.get("Origin"),
            headers.get("Sec-Fetch-Site"),
            headers.get("X-Forwarded-Host"),
            time.monotonic(),
        )
        self.backend.received.append(seen, seen.footprint())

    def reply(self, payload: Any, status: int = 200) -> None:
        self.reply_json_text(json.dumps(payload).encode(), status)

    def reply_json_text(self, text: bytes, status: int = 200) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(text)

    def user(self) -> str | None:
        scheme, _, token = self.request.headers.get("Authorization", "").partition(" ")
        user = self.tokens.user_of(token) if scheme == "Bearer" else None
        if user is None:
            self.reply({"detail": "invalid or missing access token"}, 401)
        return user

    def body_json(self) -> Any:
        try:
            return json.loads(self.request.body or b"null")
        except (ValueError, RecursionError):
            return None


class Me(_Handler):
    def get(self) -> None:
        if self.user():
            self.reply({"user": DEMO_USER})


class Items(_Handler):
    """Items are kept as JSON text: parsed, a body can take many times its size in memory, and
    one nested a few hundred levels deep parses but then fails to serialise again, which would
    break every later ``GET /items``."""

    def get(self) -> None:
        if self.user():
            self.reply_json_text(b'{"items": [' + b", ".join(self.items) + b"]}")

    def post(self) -> None:
        if not self.user():
            return
        data = self.request.body.strip(JSON_WHITESPACE) or b"null"
        try:
            json.loads(data.decode("utf-8"))  # bytes would be guessed UTF-16 or -32, and spliced as such
        except (ValueError, RecursionError):
            self.reply({"error": "invalid_json", "message": "The request body is not JSON in UTF-8."}, 400)
            return
        item = b'{"id": %d, "data": %s}' % (next(self.ids), data)
        self.items.append(item, sys.getsizeof(item))
        self.reply_json_text(item, 201)


class Item(_Handler):
    def delete(self, item_id: str) -> None:
        if not self.user():
            return
        prefix = b'{"id": %d, ' % int(item_id)
        if not self.items.remove(lambda item: item.startswith(prefix)):
            self.reply({"detail": "no such item"}, 404)
            return
        self.set_status(204)
        self.finish()


class Upload(_Handler):
    def post(self) -> None:
        if not self.user():
            return
        self.reply(
            {
                "files": [
                    {
                        "field": field,
                        "filename": f.filename,
                        "size": len(f.body),
                        "sha256": hashlib.sha256(f.body).hexdigest(),
                    }
                    for field, items in self.request.files.items()
                    for f in items
                ]
            }
        )


class CompletionStream(_Handler):
    async def get(self) -> None:
        if not self.user():
            return
        prompt = self.get_query_argument("prompt", "hello")
        record = Completion(prompt[:100])
        self.backend.completions.append(record)
        self.set_header("Content-Type", "text/event-stream; charset=utf-8")
        words = f"You said: {prompt}. This answer streams from the demo backend one word at a time.".split()
        for word in words:
            self.write(f"event: delta\ndata: {json.dumps({'text': word + ' '})}\n\n")
            await self.flush()
            record.sent.append(time.monotonic())
            await asyncio.sleep(self.backend.completion_delay)
        self.write('event: done\ndata: {"finish_reason": "stop"}\n\n')
        await self.flush()
        record.finished = time.monotonic()


class Login(_Handler):
    def post(self) -> None:
        body = self.body_json() or {}
        if body.get("username") != "demo" or body.get("password") != "demo":
            self.reply({"detail": "invalid credentials"}, 401)
            return
        access, refresh = self.tokens.issue(DEMO_USER["id"])
        self.reply(
            {"access_token": access, "refresh_token": refresh, "expires_in": ACCESS_TOKEN_SECONDS, "user": DEMO_USER}
        )


class Refresh(_Handler):
    def post(self) -> None:
        rotated = self.tokens.rotate((self.body_json() or {}).get("refresh_token", ""))
        if rotated is None:
            self.reply({"detail": "invalid refresh token"}, 401)
            return
        self.reply({"access_token": rotated[0], "refresh_token": rotated[1], "expires_in": ACCESS_TOKEN_SECONDS})


class PasswordReset(_Handler):
    def get(self) -> None:
        self.reply({"sent": True, "note": "demo: no mail is sent"})


class NotFound(_Handler):
    """Every other path (Tornado's own 404 handler would log the query string)."""

    def prepare(self) -> None:
        super().prepare()
        self.reply({"detail": "Not Found"}, 404)


def make_backend_app() -> tuple[Application, TokenIssuer]:
    """A new demo backend's application and its token issuer."""
    backend = DemoBackend()
    return backend.app, backend.tokens
