"""``/api/proxy/<path>``: the authenticated catch-all to the private backend.

Top to bottom: validate the raw path -> authenticate (unless the path is public; a cookie
session on an unsafe method must also pass the CSRF rule, ``auth/csrf.py``; an access token
about to expire is refreshed first, ``auth/refresh.py``) -> plan the body -> build the
upstream request -> relay. Bodies take one of three paths:

* none: GET/DELETE without a body (POST/PUT/PATCH without one send an empty body);
* buffered: JSON bodies, so a malformed one gets 400 ``invalid_json`` before the backend
  sees anything (forwarded byte for byte when valid), and bodies of unknown length on
  methods whose upstream framing needs a length;
* streamed: everything else (multipart uploads included), sent upstream as it arrives,
  with flow control both ways (``upstream/body.py``).

Every body is limited to ``MAX_BODY_BYTES``: 413 ``payload_too_large``, before anything is
forwarded when ``Content-Length`` says so, or as soon as a chunked body passes the limit.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import re
from collections.abc import Awaitable

from tornado.iostream import StreamClosedError
from tornado.web import stream_request_body

from auth.session import Unauthenticated
from handlers.base import ApiError, BaseHandler, parse_json
from upstream.body import BodyPipe
from upstream.paths import InvalidPath, parse_backend_path
from upstream.relay import BodyProducer, Relay, RelayError
from upstream.request import upstream_headers, upstream_url

__all__ = ["ProxyHandler"]

log = logging.getLogger("gatehouse")
PREFIX = "/api/proxy/"
_BODY_METHODS = frozenset(("POST", "PUT", "PATCH"))
_UNLIMITED = 2**62  # Tornado's own body limit is lifted; the handler enforces MAX_BODY_BYTES


class _Body(enum.Enum):
    NONE = "none"
    BUFFERED = "buffered"  # held whole: JSON (validated), or unknown length where one is needed
    STREAMED = "streamed"


_DIGITS = re.compile(r"[0-9]{1,19}")  # str.isdigit() also accepts "²"


def _is_json(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


@stream_request_body
class ProxyHandler(BaseHandler):
    SUPPORTED_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")
    route = "proxy"

    _relay: Relay | None = None
    _pipe: BodyPipe | None = None
    _streamed: asyncio.Task[None] | None = None
    _buffer: bytearray | None = None
    _json = False
    _received = 0
    _body_timer: asyncio.TimerHandle | None = None
    _body_progress = 0.0

    async def prepare(self) -> None:
        try:
            path = parse_backend_path(self.request.path[len(PREFIX) :])
        except InvalidPath as exc:
            raise ApiError(400, "invalid_path", str(exc)) from None
        settings = self.ctx.settings
        token: str | None = None
        if not path.is_under(settings.public_paths):
            try:
                session = self.ctx.sessions.authenticate(self.request.headers)
            except Unauthenticated as exc:
                raise ApiError(401, "unauthorized", str(exc)) from None
            self.user = session.user
            if session.source == "cookie":  # an ambient credential: prove the request is ours
                self.check_csrf()
            token = (await self.fresh_session(session)).access_token

        body, length = self._plan_body()
        assert settings.backend is not None
        self._url = upstream_url(settings.backend, path, self.request.query)
        self._upstream_headers = upstream_headers(
            self.request, self.request_id, token, str(length) if body is _Body.STREAMED and length is not None else None
        )
        self.request.connection.set_max_body_size(_UNLIMITED)  # type: ignore[union-attr]
        if body is _Body.BUFFERED:
            self._buffer = bytearray()
            self._watch_body()
        elif body is _Body.STREAMED:
            self._pipe = BodyPipe()
            self._streamed = asyncio.ensure_future(self._forward(None, self._pipe.produce))
            self._streamed.add_done_callback(_retrieve)

    def _plan_body(self) -> tuple[_Body, int | None]:
        headers = self.request.headers
        length: int | None = None
        if "Content-Length" in headers:
            raw = headers["Content-Length"]
            if not _DIGITS.fullmatch(raw):
                raise ApiError(400, "bad_request", "Content-Length is not a number.")
            length = int(raw)
        self._json = _is_json(headers.get("Content-Type", ""))
        limit = self._limit()
        if length is not None and length > limit:
            raise _too_large(limit)
        if "Transfer-Encoding" not in headers and not length:
            return _Body.NONE, length
        if self._json:
            return _Body.BUFFERED, length
        if length is not None or self.request.method in _BODY_METHODS:
            return _Body.STREAMED, length
        return _Body.BUFFERED, length  # e.g. a chunked DELETE body: the upstream needs a length

    def _watch_body(self) -> None:
        """A buffered body has no upstream watchdog yet: end a browser that stops sending it
        for ``STREAM_IDLE_TIMEOUT`` (the same no-progress rule as streams), or it would hold
        this handler and its buffer for as long as it keeps the connection open."""
        loop = asyncio.get_running_loop()
        limit = self.ctx.settings.stream_idle_timeout
        self._body_progress = loop.time()

        def check() -> None:
            if self._buffer is None or self._finished:
                return  # the body arrived (or the request ended): nothing to watch
            due = self._body_progress + limit
            if loop.time() < due:
                self._body_timer = loop.call_at(due, check)
                return
            self._buffer = None
            self.fail(ApiError(408, "request_timeout", "The request body stopped arriving."))

        self._body_timer = loop.call_at(self._body_progress + limit, check)

    def _limit(self) -> int:
        settings = self.ctx.settings
        return settings.max_json_bytes if self._json else settings.max_body_bytes

    def data_received(self, chunk: bytes) -> Awaitable[None] | None:
        self._received += len(chunk)
        limit = self._limit()
        if self._received > limit:
            if self._pipe is not None:
                self._pipe.abort(_too_large(limit))  # the relay answers it and drops the upstream request
            else:
                self._buffer = None
                self.fail(_too_large(limit))
            return None
        if self._pipe is not None:
            return self._pipe.feed(chunk)
        if self._buffer is not None:
            self._buffer += chunk
            self._body_progress = asyncio.get_running_loop().time()
        return None

    async def get(self, *_: str) -> None:
        if self._streamed is not None:
            assert self._pipe is not None
            await self._pipe.close()
            await self._streamed
            return
        body: bytes | None = None
        if self._buffer is not None:
            body = bytes(self._buffer)
            self._buffer = None
            if self._json:
                parse_json(body)
        elif self.request.method in _BODY_METHODS:
            body = b""
        await self._forward(body, None)

    post = put = patch = delete = get

    async def _forward(self, body: bytes | None, producer: BodyProducer | None) -> None:
        """Relay the upstream's answer; failures before its headers are answered as JSON."""
        if self.outcome == "client_closed":
            return
        self._relay = Relay(self, self.ctx.upstream, self.ctx.relay_limits)
        try:
            result = await self._relay.run(
                self._url, self.request.method or "GET", self._upstream_headers, body, producer
            )
        except RelayError as exc:
            if self.outcome != "client_closed":
                self.outcome = "upstream_failed"
                self.fail(ApiError(exc.status, exc.code, exc.message))
            return
        except ApiError as exc:
            self.outcome = "request_rejected"
            self.fail(exc)
            return
        finally:
            if self._pipe is not None:  # the upstream takes no more: never leave the browser's side waiting
                self._pipe.abort(StreamClosedError())
        self.outcome, self.upstream_ms = result.outcome, result.upstream_ms

    def on_finish(self) -> None:
        self._stop_watching_body()

    def _stop_watching_body(self) -> None:
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None

    def on_connection_close(self) -> None:
        super().on_connection_close()  # fails Tornado's body future, so the request ends
        self._stop_watching_body()
        if self._relay is not None and self._relay.finished:
            return  # the browser hung up after the whole answer: nothing was cut short
        self.outcome = "client_closed"
        if self._relay is not None:
            self._relay.cancel()
        if self._pipe is not None:
            # A closed stream, so Tornado's client treats the producer's failure as the
            # connection ending, not as a bug: the upstream sees its request cut off.
            self._pipe.abort(StreamClosedError())


def _too_large(limit: int) -> ApiError:
    return ApiError(413, "payload_too_large", f"The request body is larger than this gateway accepts ({limit} bytes).")


def _retrieve(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("upload relay failed", exc_info=task.exception())
