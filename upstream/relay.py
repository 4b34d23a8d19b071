"""Relaying one upstream response to one browser, chunk by chunk, with backpressure.

This is the only place that moves bytes from an upstream to a browser. The contract:

* Status and headers go to the browser as soon as the upstream's headers arrive, filtered by
  ``upstream/headers.py``; ``text/event-stream`` responses also get
  ``Cache-Control: no-cache, no-transform`` and ``X-Accel-Buffering: no``.
* Each body chunk is written and its flush awaited inside the fetch's ``streaming_callback``,
  which the client (``upstream/client.py``) awaits before reading more: a slow browser slows
  the upstream read instead of growing memory. Flushes are strictly one at a time (an unawaited flush future may
  never resolve once a later write replaces it).
* SSE bytes are never altered; a partial trailing event is held back until it completes, so
  heartbeats (``: keep-alive``) and the final ``error`` event always fall between events.
* One watchdog timer per relay enforces the time limits, because the fetch's own outcome is
  not enough (a fetch has no time limits of its own on streams): no headers within
  ``response_timeout`` of the last request-body byte sent -> 504; no progress (upstream bytes
  or a completed browser write) for ``idle_timeout`` -> the stream ends. There is no total
  time limit.
* A failure before the headers is raised as a `RelayError` for the handler to answer as JSON.
  A failure after them ends an SSE response with an ``error`` event and cuts any other
  response off (connection closed), so a truncated body never looks complete.
* `cancel` (the browser went away) aborts the upstream at once, in any phase; `detach` instead
  keeps reading, unseen, for a bounded time, for an upstream whose stream carries what is
  needed to stop it properly (Dify's ``task_id``).
* `shut_down` (the gateway's drain deadline) aborts the upstream and ends the answer as a
  failure does, in the gateway's words: an SSE stream with an ``error`` event
  ``shutting_down``, any other answer cut off; before the headers, a 503 ``shutting_down``.
* An optional `RelayObserver` may `hold <RelayObserver.hold>` an answer (the handler gets its
  status, headers and first ``HELD_BODY_LIMIT`` bytes in `RelayResult.held` to answer in its
  own words, nothing is relayed), and sees each batch of complete SSE events as it is relayed.
* For the metrics: `RelayResult` says how the upstream failed, if it did (``failure``), and an
  optional ``on_first_event`` is called as the first complete SSE event comes from the upstream.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import Awaitable, Callable
from typing import Protocol

from tornado.httputil import HTTPHeaders, ResponseStartLine
from tornado.iostream import StreamClosedError
from tornado.simple_httpclient import HTTPTimeoutError

from upstream.client import AbortableRequest, UpstreamAborted, UpstreamClient, UpstreamFailure, failure_reason
from upstream.errors import GatewayError
from upstream.headers import response_headers_to_relay
from upstream.sse import EventBuffer, comment, error_event, is_event_stream

__all__ = [
    "BodyProducer",
    "Browser",
    "HeldResponse",
    "Relay",
    "RelayError",
    "RelayLimits",
    "RelayObserver",
    "RelayResult",
]

STALLED_FLUSH_GRACE = 1.0  # seconds a failed stream waits for the browser to take a pending write
HELD_BODY_LIMIT = 64 * 1024  # a held answer is read for its error code and message, not relayed
BodyProducer = Callable[[Callable[[bytes], Awaitable[None]]], Awaitable[None]]


@dataclasses.dataclass(frozen=True, slots=True)
class RelayLimits:
    response_timeout: float
    idle_timeout: float
    heartbeat_interval: float


@dataclasses.dataclass(slots=True)
class HeldResponse:
    """An upstream answer the relay kept back for the handler (see `RelayObserver.hold`)."""

    status: int
    headers: HTTPHeaders
    body: bytearray  # at most HELD_BODY_LIMIT bytes of it


@dataclasses.dataclass(slots=True)
class RelayResult:
    """What happened, for the access log and the metrics."""

    outcome: str = "ok"  # ok | client_closed | upstream_failed | idle_timeout | request_rejected | shutting_down
    upstream_ms: float | None = None  # time to the upstream's response headers
    status: int | None = None  # the upstream's final status
    held: HeldResponse | None = None
    # The upstream's own failure, before or after its headers (a time limit counts as a
    # timeout); None when it did not fail, or the gateway or the browser ended the relay.
    failure: UpstreamFailure | None = None


class RelayObserver(Protocol):
    def hold(self, status: int) -> bool:
        """True to keep an answer with this status from the browser, for the handler to answer."""

    def on_events(self, data: bytes) -> None:
        """Complete SSE events, as relayed (or, once detached, as read)."""


class RelayError(GatewayError):
    """The upstream failed before any response reached the browser."""


class _PassThrough(Exception):
    """Wraps an exception raised by the request's own body producer (e.g. a 413)."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.error = error


class Browser(Protocol):
    """The browser's side of the answer, as the relay writes it; the handler implements it."""

    def start_answer(self, status: int, headers: list[tuple[str, str]], event_stream: bool) -> Awaitable[None]:
        """Answer ``status`` with the upstream's ``headers`` (already filtered by the relay's
        policy), marked as an event stream when it is one, and send the head now."""

    def send(self, data: bytes) -> Awaitable[None]:
        """Write ``data``; the awaitable resolves once the connection has taken it (flow control)."""

    def abort(self) -> None:
        """Close the connection: an answer that broke off must never look complete."""


class _NoBrowser:
    """Where a relay that has run writes: nowhere."""

    def start_answer(self, status: int, headers: list[tuple[str, str]], event_stream: bool) -> Awaitable[None]:
        return _closed_answer()

    def send(self, data: bytes) -> Awaitable[None]:
        return _closed_answer()

    def abort(self) -> None:
        pass


def _closed_answer() -> asyncio.Future[None]:
    future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    future.set_exception(StreamClosedError())
    future.exception()  # nobody need retrieve it
    return future


_NO_BROWSER = _NoBrowser()


class Relay:
    """One relay per proxied request: `run` it once; when the browser goes away, `cancel` it,
    or `detach` it to keep reading the upstream unseen for a while."""

    # One per relayed request, held for a whole stream: slots, not a dict per instance.
    __slots__ = (
        "_browser",
        "_client",
        "_cut",
        "_detached_until",
        "_failure",
        "_headers_sent",
        "_held",
        "_last_progress",
        "_last_write",
        "_limits",
        "_loop",
        "_observer",
        "_on_first_event",
        "_request",
        "_sse",
        "_started",
        "_watchdog",
        "_writing",
        "finished",
        "result",
    )

    def __init__(
        self,
        browser: Browser,
        client: UpstreamClient,
        limits: RelayLimits,
        observer: RelayObserver | None = None,
        on_first_event: Callable[[], None] | None = None,
    ) -> None:
        self._browser = browser
        self._client = client
        self._limits = limits
        self._observer = observer
        self._on_first_event = on_first_event  # called once, then dropped
        self._loop = asyncio.get_running_loop()
        self._request: AbortableRequest | None = None
        self._headers_sent = False
        self._sse: EventBuffer | None = None
        self._writing: asyncio.Future[None] | None = None
        self._last_progress = 0.0
        self._last_write = 0.0
        self._watchdog: asyncio.TimerHandle | None = None
        self._started = 0.0
        self._cut = False  # the relay closed the browser's connection itself
        self._failure: str | None = None  # why the gateway aborted: outcome name
        self._held: HeldResponse | None = None
        self._detached_until: float | None = None  # the browser is gone; read on until then
        self.result = RelayResult()
        self.finished = False  # the whole upstream response reached the browser's socket

    # -- lifecycle ---------------------------------------------------------------------

    async def run(
        self, url: str, method: str, headers: HTTPHeaders, body: bytes | None, body_producer: BodyProducer | None
    ) -> RelayResult:
        try:
            if self._failure is not None:  # cancelled before it started
                self.result.outcome = self._failure
                return self.result
            self._request = AbortableRequest(
                url,
                method=method,
                headers=headers,
                body=body,
                body_producer=self._guard(body_producer) if body_producer else None,
                head_callback=self._on_head,
                streaming_callback=self._on_chunk,
            )
            self._started = self._last_progress = self._loop.time()
            self._arm(self._started + self._limits.response_timeout)
            try:
                await self._client.fetch(self._request)
            except _PassThrough as wrapped:
                self._failure = self._failure or "request_rejected"
                if not self._headers_sent:
                    raise wrapped.error from None
            except Exception as exc:  # aborted by us, or refused, reset, timed out connecting
                # The request keeps the error it was aborted with; its traceback's frames hold the
                # request and this relay: a reference cycle. Nothing here reads the traceback.
                exc.__traceback__ = None
                if not isinstance(exc, UpstreamAborted):
                    self._failure = self._failure or "upstream_failed"
                self.result.failure = _upstream_failure(self._failure, exc, self._request)
                if not self._headers_sent and self._failure != "client_closed":
                    raise _error_before_headers(exc, self._failure) from None
            finally:
                self._disarm()
            await self._finish()
            self.finished = self._failure is None
            self.result.held = self._held
            return self.result
        finally:
            # The relay writes and reports nothing more. Dropping what it no longer needs ends
            # the handler <-> relay <-> request reference cycles now: a finished stream is freed
            # by reference counting, not left for the cyclic collector (whose full passes walk
            # every live stream's objects; see ops/gc_tuning.py).
            self._browser = _NO_BROWSER
            self._observer = None
            self._on_first_event = None  # a handler's method, when the stream had no event
            self._request = None  # its callbacks are this relay's methods

    def cancel(self) -> None:
        """The browser disconnected: drop the upstream request now, whatever its phase."""
        self._abort("client_closed")

    def shut_down(self) -> None:
        """The gateway is shutting down: end the answer now (see the module's contract)."""
        self._abort("shutting_down")

    def detach(self, grace: float) -> None:
        """The browser disconnected, but keep reading the upstream (nothing is written) for up
        to ``grace`` seconds, until it ends or `cancel` is called; the observer still sees its
        events. For upstreams that must be told to stop, with an id only their stream carries."""
        if self._request is None or self._failure is not None:
            self.cancel()
            return
        self._detached_until = self._loop.time() + grace
        if self._writing is not None and not self._writing.done():
            self._writing.set_result(None)  # Tornado drops it unresolved on close (see _cut_off)
        if self._watchdog is not None:
            self._arm(self._watchdog.when())

    # -- upstream events -----------------------------------------------------------------

    def _on_head(self, start: ResponseStartLine, headers: HTTPHeaders) -> None:
        """The final answer's head (the client skips interim 1xx ones)."""
        now = self._loop.time()
        self.result.upstream_ms = round((now - self._started) * 1000, 1)
        self.result.status = start.code
        if self._observer is not None and self._observer.hold(start.code):
            self._held = HeldResponse(start.code, headers, bytearray())
            return
        self._last_progress = self._last_write = now
        event_stream = is_event_stream(headers.get("Content-Type"))
        if event_stream:
            self._sse = EventBuffer()
        self._headers_sent = True
        # The browser sees the status before the first byte.
        self._writing = asyncio.ensure_future(
            self._browser.start_answer(start.code, list(response_headers_to_relay(headers)), event_stream)
        )
        self._arm(now + self._tick_interval())

    def _on_chunk(self, chunk: bytes) -> asyncio.Future[None] | None:
        """A piece of the upstream's body. Returns a future only when the upstream must wait
        for the browser: a chunk that the browser's socket takes at once costs no task."""
        now = self._last_progress = self._loop.time()
        if self._failure is not None:
            return None
        if self._held is not None:
            self._held.body += chunk[: HELD_BODY_LIMIT - len(self._held.body)]
            return None
        data = self._sse.feed(chunk) if self._sse is not None else chunk
        if not data:
            return None
        if self._sse is not None and self._on_first_event is not None:
            first, self._on_first_event = self._on_first_event, None
            first()
        if self._sse is not None and self._observer is not None:
            self._observer.on_events(data)
        if self._detached_until is not None:
            return None
        if self._writing is not None and not self._writing.done():
            return asyncio.ensure_future(self._send(data))  # one flush at a time: wait for the last
        if self._cut:
            return None
        writing = self._writing = self._write_now(data, now)
        if not writing.done():
            return asyncio.ensure_future(self._flushed(writing))
        self._check_written(writing)
        return None

    # -- writing to the browser ----------------------------------------------------------

    def _write_now(self, data: bytes, now: float | None = None) -> asyncio.Future[None]:
        """Hand ``data`` to the browser's connection; the caller owns the flush it returns."""
        self._last_write = self._loop.time() if now is None else now
        return asyncio.ensure_future(self._browser.send(data))

    async def _send(self, data: bytes) -> None:
        """Write and flush ``data`` after any flush in progress; one flush at a time."""
        while self._writing is not None and not self._writing.done():
            try:
                await self._writing
            except StreamClosedError:
                break
        if self._cut or self._detached_until is not None:
            return  # the browser's connection was closed while this waited its turn
        self._writing = self._write_now(data)
        await self._flushed(self._writing)

    async def _flushed(self, writing: asyncio.Future[None]) -> None:
        with contextlib.suppress(StreamClosedError):
            await writing
        self._check_written(writing)

    def _check_written(self, writing: asyncio.Future[None]) -> None:
        """After a flush: progress, or the browser is gone."""
        if writing.cancelled() or writing.exception() is not None:
            if self._detached_until is None:
                self._abort("client_closed")
            return
        self._last_progress = self._loop.time()

    async def _finish(self) -> None:
        if self._detached_until is not None:
            self._failure = self._failure or "client_closed"
        if self._failure is not None and self._writing is not None and not self._writing.done():
            # A browser that stopped reading would hold this flush, and the stream, forever.
            await asyncio.wait({self._writing}, timeout=min(STALLED_FLUSH_GRACE, self._limits.idle_timeout))
            if not self._writing.done():
                self._cut_off()
                return
        if self._writing is not None:
            try:
                await self._writing
            except StreamClosedError:
                self._failure = self._failure or "client_closed"
        if self._failure is None:
            if self._sse is not None:
                rest = self._sse.drain()
                if rest:
                    if self._observer is not None:
                        self._observer.on_events(rest)
                    await self._send(rest)
            return
        self.result.outcome = self._failure
        if self._failure == "client_closed" or not self._headers_sent:
            return
        if self._sse is not None:
            # A held-back partial event is dropped, never delivered; only a partial event the
            # client already has (one past the 1 MiB hold-back) needs ending first.
            prefix = b"" if self._sse.at_boundary else b"\n\n"
            await self._send(prefix + error_event(*_failure_event(self._failure)))
        # Never complete a body that is not whole: close instead of writing the last chunk.
        self._cut_off()

    def _cut_off(self) -> None:
        """Close the browser's connection. Tornado's server drops a flush future still pending
        then without resolving it (``HTTP1Connection._clear_callbacks``); release its waiters
        here, or they, and the upstream fetch task awaiting them, would wait forever."""
        self._cut = True
        self._browser.abort()
        if self._writing is not None and not self._writing.done():
            self._writing.set_result(None)

    # -- time limits ---------------------------------------------------------------------

    def _tick_interval(self) -> float:
        if self._sse is not None:
            return min(self._limits.heartbeat_interval, self._limits.idle_timeout)
        return self._limits.idle_timeout

    def _arm(self, when: float) -> None:
        self._disarm()
        if self._detached_until is not None:
            when = min(when, self._detached_until)
        self._watchdog = self._loop.call_at(when, self._on_watchdog)

    def _disarm(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None

    def _on_watchdog(self) -> None:
        self._watchdog = None
        now = self._loop.time()
        if self._detached_until is not None and now >= self._detached_until:
            self._abort("client_closed")
            return
        if not self._headers_sent:
            # The clock runs from the last request-body byte sent: a slow upload is not late.
            due = self._last_progress + self._limits.response_timeout
            if now >= due:
                self._abort("response_timeout")
            else:
                self._arm(due)
            return
        if now - self._last_progress >= self._limits.idle_timeout:
            self._abort("idle_timeout")
            return
        heartbeat_due = self._last_write + self._limits.heartbeat_interval
        if now >= heartbeat_due:
            writer_idle = self._writing is None or self._writing.done()
            if self._sse is not None and self._detached_until is None and self._sse.at_boundary and writer_idle:
                self._writing = self._write_now(comment("keep-alive"))
            # Written or not (mid-event, a write pending, nobody listening), the next beat is a
            # full interval away: a due time left in the past would re-arm the timer at once.
            heartbeat_due = now + self._limits.heartbeat_interval
        idle_due = self._last_progress + self._limits.idle_timeout
        self._arm(min(idle_due, heartbeat_due) if self._sse is not None else idle_due)

    def _guard(self, producer: BodyProducer) -> BodyProducer:
        """The request's body producer, with each upstream write counted as progress and the
        producer's own errors (e.g. a 413 mid-upload) marked, so they are not taken for a bad
        upstream."""

        async def guarded(upstream_write: Callable[[bytes], Awaitable[None]]) -> None:
            async def write(chunk: bytes) -> None:
                await upstream_write(chunk)
                self._last_progress = self._loop.time()

            try:
                await producer(write)
            except (StreamClosedError, OSError):
                raise
            except Exception as exc:
                raise _PassThrough(exc) from exc

        return guarded

    def _abort(self, reason: str) -> None:
        if self._failure is None:
            self._failure = reason
        if self._request is not None:
            self._request.abort(UpstreamAborted(reason))


def _failure_event(reason: str) -> tuple[str, str]:
    """The code and message of the ``error`` event that ends a stream that failed for ``reason``."""
    if reason == "shutting_down":
        return "shutting_down", "The gateway is shutting down; reconnect to continue."
    if reason == "idle_timeout":
        return "upstream_failed", "The upstream sent nothing for too long; the stream was ended."
    return "upstream_failed", "The upstream failed before the response was complete."


def _upstream_failure(failure: str | None, exc: Exception, request: AbortableRequest) -> UpstreamFailure | None:
    """The upstream's part in a relay that ended with ``exc`` for ``failure`` (see `RelayResult`)."""
    if failure in ("response_timeout", "idle_timeout"):
        return "timeout"
    if failure == "upstream_failed":
        return failure_reason(exc, request.connected)
    return None  # the browser left, the gateway shut down, the request was refused


def _error_before_headers(exc: Exception, failure: str | None) -> RelayError:
    if failure == "shutting_down":
        return RelayError(503, "shutting_down", "The gateway is shutting down; try again.")
    if failure == "response_timeout" or isinstance(exc, HTTPTimeoutError):
        return RelayError(504, "gateway_timeout", "The backend did not answer in time.")
    return RelayError(502, "bad_gateway", "The backend could not be reached or failed to answer.")
