"""`RelayingHandler`: the shape every route that forwards a request upstream shares.

Top to bottom: ``target()`` (the subclass validates the request, authenticates it and says
where it goes) -> plan the body -> relay the upstream's answer (``upstream/relay.py``).
Bodies take one of three paths:

* none: GET/DELETE without a body (POST/PUT/PATCH without one send an empty body);
* buffered: JSON bodies, so a malformed one gets 400 ``invalid_json`` before the upstream
  sees anything (forwarded byte for byte when valid, unless the subclass reshapes it), and
  bodies of unknown length on methods whose upstream framing needs a length;
* streamed: everything else (multipart uploads included), sent upstream as it arrives,
  with flow control both ways (``upstream/body.py``).

Every body has a limit (`body_limit`): 413 ``payload_too_large``, before anything is
forwarded when ``Content-Length`` says so, or as soon as a chunked body passes it. A buffered
body that stops arriving for ``STREAM_IDLE_TIMEOUT`` is a 408.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import logging
import re
from collections.abc import Awaitable
from typing import Any, ClassVar

from tornado.httputil import HTTPHeaders
from tornado.iostream import StreamClosedError
from tornado.web import stream_request_body

from handlers.base import ApiError, BaseHandler, parse_json
from upstream.body import BodyPipe
from upstream.relay import BodyProducer, HeldResponse, Relay, RelayError, RelayObserver

__all__ = ["RelayingHandler", "Target"]

log = logging.getLogger("gatehouse")
_BODY_METHODS = frozenset(("POST", "PUT", "PATCH"))
_UNLIMITED = 2**62  # Tornado's own body limit is lifted; the handler enforces `body_limit`
_DIGITS = re.compile(r"[0-9]{1,19}")  # str.isdigit() also accepts "²"


@dataclasses.dataclass(frozen=True)
class Target:
    """Where a request goes: the full upstream URL and the headers to send (Content-Length
    excepted: the handler sets it from the body it actually sends)."""

    url: str
    headers: HTTPHeaders


class _Body(enum.Enum):
    NONE = "none"
    BUFFERED = "buffered"  # held whole: JSON (validated), or unknown length where one is needed
    STREAMED = "streamed"


def is_json(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


@stream_request_body
class RelayingHandler(BaseHandler):
    """Subclasses implement `target` and may override the other hooks."""

    json_only: ClassVar[bool] = False  # every body is JSON, whatever its Content-Type says

    _target: Target | None = None
    _relay: Relay | None = None
    _pipe: BodyPipe | None = None
    _streamed: asyncio.Task[None] | None = None
    _buffer: bytearray | None = None
    _json = False
    _received = 0
    _body_timer: asyncio.TimerHandle | None = None
    _body_progress = 0.0

    # -- hooks -------------------------------------------------------------------------

    async def target(self) -> Target:
        """Validate and authenticate the request (`ApiError` to refuse it); where it goes."""
        raise NotImplementedError

    def body_limit(self) -> int:
        settings = self.ctx.settings
        return settings.max_json_bytes if self._json else settings.max_body_bytes

    def upstream_body(self, body: bytes | None, parsed: Any) -> bytes | None:
        """What to send for a request that carried ``body`` (``None``: no body; ``parsed``: its
        JSON when it is JSON). By default the body as it came."""
        if body is None and self.request.method in _BODY_METHODS:
            return b""
        return body

    def stream_prefix(self) -> bytes:
        """Bytes sent upstream ahead of a streamed body."""
        return b""

    def check_chunk(self, chunk: bytes) -> None:
        """Look at each piece of a streamed body as it passes; `ApiError` to refuse the request."""

    def observer(self) -> RelayObserver | None:
        return None

    def answer_held(self, held: HeldResponse) -> None:
        """Answer an upstream response the observer held back."""
        raise NotImplementedError

    # -- the request -------------------------------------------------------------------

    async def prepare(self) -> None:
        target = await self.target()
        body, length = self._plan_body()
        prefix = self.stream_prefix() if body is _Body.STREAMED else b""
        if body is _Body.STREAMED and length is not None:
            target.headers["Content-Length"] = str(length + len(prefix))
        self._target = target
        self.request.connection.set_max_body_size(_UNLIMITED)  # type: ignore[union-attr]
        if body is _Body.BUFFERED:
            self._buffer = bytearray()
            self._watch_body()
        elif body is _Body.STREAMED:
            self._pipe = BodyPipe()
            if prefix:
                self._pipe.feed(prefix)
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
        self._json = self.json_only or is_json(headers.get("Content-Type", ""))
        limit = self.body_limit()
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

    def data_received(self, chunk: bytes) -> Awaitable[None] | None:
        self._received += len(chunk)
        limit = self.body_limit()
        if self._received > limit:
            if self._pipe is not None:
                self._pipe.abort(_too_large(limit))  # the relay answers it and drops the upstream request
            else:
                self._buffer = None
                self.fail(_too_large(limit))
            return None
        if self._pipe is not None:
            try:
                self.check_chunk(chunk)
            except ApiError as exc:
                self._pipe.abort(exc)  # answered by the relay, like a 413
                return None
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
        parsed: Any = None
        if self._buffer is not None:
            body = bytes(self._buffer)
            self._buffer = None
            if self._json:
                parsed = parse_json(body)
        await self._forward(self.upstream_body(body, parsed), None)

    post = put = patch = delete = get

    async def _forward(self, body: bytes | None, producer: BodyProducer | None) -> None:
        """Relay the upstream's answer; failures before its headers are answered as JSON."""
        if self.outcome == "client_closed":
            return
        target, self._target = self._target, None  # not held for the life of a stream
        assert target is not None
        self._relay = Relay(self, self.ctx.upstream, self.ctx.relay_limits, self.observer())
        try:
            result = await self._relay.run(target.url, self.request.method or "GET", target.headers, body, producer)
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
        if result.held is not None and self.outcome == "ok":
            self.answer_held(result.held)

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
            self.abandon(self._relay)
        if self._pipe is not None:
            # A closed stream, so the relay takes the producer's failure for the connection
            # ending, not for a rejected request: the upstream sees its request cut off.
            self._pipe.abort(StreamClosedError())

    def abandon(self, relay: Relay) -> None:
        """The browser went away mid-relay: by default the upstream request is dropped at once."""
        relay.cancel()


def _too_large(limit: int) -> ApiError:
    return ApiError(413, "payload_too_large", f"The request body is larger than this gateway accepts ({limit} bytes).")


def _retrieve(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("upload relay failed", exc_info=task.exception())
