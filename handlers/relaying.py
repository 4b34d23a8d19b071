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
body that stops arriving for ``STREAM_IDLE_TIMEOUT`` is a 408 (``handlers/base.py``).

Every relayed request carries the browser's W3C trace context (``traceparent``,
``tracestate``), unchanged, whatever the target's own header policy. While it relays, the
handler is `interruptible <ops.lifecycle.Lifecycle.interruptible>`: at the drain's deadline
`shut_down` ends its answer (``upstream/relay.py``: an SSE stream with a ``shutting_down``
error event, another answer cut off, one not begun a 503). A relay whose connection the drain's
last step closes is ended the same way, not abandoned as for a browser that left.

With metrics on, each relay is reported as the `upstream` it went to (the time to its headers,
its failure), and an SSE answer is an active stream of the route from its head to its end, its
first event timed from the request's arrival.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import logging
from collections.abc import Awaitable
from typing import Any, ClassVar

from tornado.httputil import HTTPHeaders
from tornado.iostream import StreamClosedError

from handlers.base import BaseHandler
from handlers.errors import ApiError, too_large
from handlers.json_body import parse_json
from upstream.body import BodyPipe
from upstream.headers import trace_context
from upstream.relay import BodyProducer, HeldResponse, Relay, RelayError, RelayObserver

__all__ = ["RelayingHandler", "Target"]

log = logging.getLogger("gatehouse")
_BODY_METHODS = frozenset(("POST", "PUT", "PATCH"))


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


class RelayingHandler(BaseHandler):
    """Subclasses implement `target` and may override the other hooks."""

    json_only: ClassVar[bool] = False  # every body is JSON, whatever its Content-Type says
    upstream: ClassVar[str]  # which upstream requests go to, for the metrics: ``backend``, ``dify``

    _target: Target | None = None
    _relay: Relay | None = None
    _pipe: BodyPipe | None = None
    _streamed: asyncio.Task[None] | None = None
    _json = False
    _received = 0
    _streaming = False  # an SSE answer is being relayed (counted in the active streams)
    _answered_direct = False  # the head is written: `send` writes to the connection itself

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
        self._json = self.json_only or is_json(self.request.headers.get("Content-Type", ""))
        limit = self.body_limit()
        length = self.admit_body(limit)
        body = self._plan_body(length)
        self._target = target
        if body is _Body.BUFFERED:
            self.buffer_body(limit)
        elif body is _Body.STREAMED:
            prefix = self.stream_prefix()
            if length is not None:
                target.headers["Content-Length"] = str(length + len(prefix))
            self._pipe = BodyPipe()
            if prefix:
                self._pipe.feed(prefix)
            self._streamed = asyncio.ensure_future(self._forward(None, self._pipe.produce))
            self._streamed.add_done_callback(_retrieve)

    def _plan_body(self, length: int | None) -> _Body:
        if not self.has_body(length):
            return _Body.NONE
        if self._json:
            return _Body.BUFFERED
        if length is not None or self.request.method in _BODY_METHODS:
            return _Body.STREAMED
        return _Body.BUFFERED  # e.g. a chunked DELETE body: the upstream needs a length

    def data_received(self, chunk: bytes) -> Awaitable[None] | None:
        if self._pipe is None:
            return super().data_received(chunk)
        self._received += len(chunk)
        try:
            if self._received > self.body_limit():
                raise too_large(self.body_limit())
            self.check_chunk(chunk)
        except ApiError as exc:
            self._pipe.abort(exc)  # the relay answers it and drops the upstream request
            return None
        return self._pipe.feed(chunk)

    async def get(self, *_: str) -> None:
        if self._streamed is not None:
            assert self._pipe is not None
            await self._pipe.close()
            await self._streamed
            return
        body = self.body()
        parsed = parse_json(body) if body is not None and self._json else None
        await self._forward(self.upstream_body(body, parsed), None)

    post = put = patch = delete = get

    async def _forward(self, body: bytes | None, producer: BodyProducer | None) -> None:
        """Relay the upstream's answer; failures before its headers are answered as JSON."""
        if self.gone:
            return
        target, self._target = self._target, None  # not held for the life of a stream
        assert target is not None
        if "traceparent" not in target.headers:  # the backend's has it already, Dify's not
            for name, value in trace_context(self.request.headers):
                target.headers.add(name, value)
        first_event = self._first_event if self.meter is not None else None
        self._relay = Relay(self, self.ctx.upstream, self.ctx.relay_limits, self.observer(), first_event)
        try:
            with self.lifecycle.interruptible(self):
                result = await self._relay.run(target.url, self.request.method or "GET", target.headers, body, producer)
        except RelayError as exc:
            if not self.gone:
                self.outcome = "shutting_down" if exc.code == "shutting_down" else "upstream_failed"
                self.fail(exc)
            return
        except ApiError as exc:
            self.outcome = "request_rejected"
            self.fail(exc)
            return
        finally:
            if self._pipe is not None:  # the upstream takes no more: never leave the browser's side waiting
                self._pipe.abort(StreamClosedError())
            self._relayed(self._relay)
        self.outcome, self.upstream_ms = result.outcome, result.upstream_ms
        if result.held is not None and self.outcome == "ok":
            self.answer_held(result.held)

    def _relayed(self, relay: Relay) -> None:
        """The relay is over: report it to the metrics, if they are kept."""
        metrics = self.ctx.metrics
        if metrics is None:
            return
        if self._streaming:
            self._streaming = False
            metrics.route(self.route).stream_ended()
        result = relay.result
        seconds = result.upstream_ms / 1000 if result.upstream_ms is not None else None
        metrics.upstream(self.upstream).relayed(seconds, result.status, result.failure)

    def _first_event(self) -> None:
        """The first event of the upstream's stream (metrics only)."""
        assert self.ctx.metrics is not None
        self.ctx.metrics.route(self.route).first_event(self.request.request_time())

    def on_connection_close(self) -> None:
        super().on_connection_close()
        if self._relay is not None and self._relay.finished:
            return  # the browser hung up after the whole answer: nothing was cut short
        if self.cut_by_drain:  # the gateway ended it (the outcome says so): as at the drain's deadline
            self.shut_down()
        else:
            self.outcome = "client_closed"
            if self._relay is not None:
                self.abandon(self._relay)
        if self._pipe is not None:
            # A closed stream, so the relay takes the producer's failure for the connection
            # ending, not for a rejected request: the upstream sees its request cut off.
            self._pipe.abort(StreamClosedError())

    # -- upstream.relay.Browser: how the relay writes the answer ----------------------------

    def start_answer(self, status: int, headers: list[tuple[str, str]], event_stream: bool) -> Awaitable[None]:
        for default in ("Content-Type", "Server", "Date"):
            self.clear_header(default)
        self.set_status(status)  # custom reason phrases are not relayed (HTTP/2 has none)
        replaced: set[str] = set()
        for name, value in headers:
            if name not in replaced:  # the upstream's value replaces a gateway default of that name
                self.clear_header(name)
                replaced.add(name)
            with contextlib.suppress(ValueError):  # a value Tornado refuses to emit is dropped
                self.add_header(name, value)
        if "Vary" in replaced and self.ctx.cors.enabled:
            self.add_header("Vary", "Origin")  # the upstream's Vary replaced the gateway's own
        if event_stream:
            self.set_header("Cache-Control", "no-cache, no-transform")
            self.set_header("X-Accel-Buffering", "no")
            self.clear_header("Content-Length")
            if self.ctx.metrics is not None:
                self._streaming = True
                self.ctx.metrics.route(self.route).stream_started()
        flushed = self.flush()
        self._answered_direct = not self.application.transforms and self.request.method != "HEAD"
        return flushed

    def send(self, data: bytes) -> Awaitable[None]:
        if self._answered_direct:
            # The head is out: each piece goes straight to the connection. Tornado's ``write``
            # and ``flush`` would add a buffer and a join per SSE event, for nothing a relayed
            # body needs (the application has no output transforms, a HEAD answer no body).
            self.bytes_out += len(data)
            return self.request.connection.write(data)  # type: ignore[union-attr]
        self.write(data)
        return self.flush()

    def abort(self) -> None:
        self.request.connection.close()  # type: ignore[union-attr]

    def abandon(self, relay: Relay) -> None:
        """The browser went away mid-relay: by default the upstream request is dropped at once."""
        relay.cancel()

    def shut_down(self) -> None:
        """The drain's deadline (``ops/drain.py``): end the relay's answer now."""
        if self._relay is not None:
            self._relay.shut_down()


def _retrieve(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("upload relay failed", exc_info=task.exception())
