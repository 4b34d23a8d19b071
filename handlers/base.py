"""The shared `RequestHandler`: JSON errors, request ids, request bodies, and what the access
log reads.

Every error a client sees is ``{"error": "<snake_case_code>", "message": "<sentence>"}``,
raised anywhere as `ApiError`. Tornado's own errors (405, malformed bodies) are mapped to the
same shape; nothing ever answers with a traceback, and exception logs carry neither the query
string nor any header.

Every route reads its body itself (``stream_request_body``), so each has its own limit
(`body_limit`): a route that takes no body accepts at most `NO_BODY_LIMIT` bytes. A body over
the limit is 413 before a byte of it is read when ``Content-Length`` says so, or as soon as a
chunked body passes it; a buffered body that stops arriving for ``STREAM_IDLE_TIMEOUT`` is 408.
Without this, Tornado would buffer up to the server-wide limit for any route before answering.

With metrics on (``ops/metrics.py``), every request is metered by its route's `RouteMeter`: in
flight from `initialize`, and counted once, with its status and duration, when it finishes or
its connection closes: status 499 when the client left before any answer began, 503 when the
gateway cut it before any answer began (the drain's last step, ``ops/drain.py`` step 6, which
closes every connection left: the status the deadline answers a relay not begun with; its
outcome, for the access line, is then ``shutting_down``, never ``client_closed``).
"""

from __future__ import annotations

import functools
import json
import logging
import random
import re
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any, ClassVar

from tornado.web import HTTPError, stream_request_body

from auth.session import Unauthenticated
from auth.supabase import AuthUnavailable, SupabaseUser
from handlers.context import BackendFeature, ChatFeature, Context
from handlers.cors import CorsPolicy
from handlers.errors import ApiError, stalled, too_large
from handlers.request_body import BufferedBody
from handlers.session_writeback import SessionWriteBack
from ops.lifecycle import Lifecycle
from upstream.errors import GatewayError

if TYPE_CHECKING:  # only with metrics on is it imported (server.serve): it imports prometheus_client
    from ops.metrics import RouteMeter

__all__ = ["NO_BODY_LIMIT", "BaseHandler", "NotFoundHandler"]

log = logging.getLogger("gatehouse")
_SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_DIGITS = re.compile(r"[0-9]{1,19}")  # str.isdigit() also accepts "²"
_UNLIMITED = 2**62  # Tornado's own body limit is lifted; each route enforces `body_limit`
NO_BODY_LIMIT = 64 * 1024  # what a route that takes no body still reads before refusing one
_VERBS = ("get", "head", "post", "put", "patch", "delete", "options")
CLIENT_CLOSED = 499  # the metrics' status of a request whose client left before any answer (nginx's)
CUT_BY_DRAIN = 503  # ... of a request the drain's last step cut before any answer (as the deadline answers)

_DEFAULT_ERRORS: dict[int, tuple[str, str]] = {
    400: ("bad_request", "The request is malformed."),
    401: ("unauthorized", "Sign in to continue."),
    403: ("forbidden", "This request is not allowed."),
    404: ("not_found", "No such route."),
    405: ("method_not_allowed", "This method is not allowed on this route."),
    408: ("request_timeout", "The request body stopped arriving."),
    411: ("length_required", "This request needs a Content-Length."),
    413: ("payload_too_large", "The request body is too large."),
    502: ("bad_gateway", "The backend could not be reached or failed to answer."),
    504: ("gateway_timeout", "The backend did not answer in time."),
}


def _marking_body_read(method: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(method)
    def verb(self: BaseHandler, *args: Any, **kwargs: Any) -> Any:
        self.body_read()
        return method(self, *args, **kwargs)

    verb._marks_body_read = True  # type: ignore[attr-defined]
    return verb


@stream_request_body
class BaseHandler(SessionWriteBack):
    route: ClassVar[str] = "other"

    # Read by the access log (handlers/access_log.py).
    user: str | None = None
    outcome: str = "ok"
    upstream_ms: float | None = None
    bytes_out: int = 0

    _body: BufferedBody | None = None
    _body_read = False  # the whole request has been read: the verb method is only called then
    meter: RouteMeter | None = None  # the route's metrics until the request is counted
    gone = False  # the connection closed before the answer was done: the client left, or the drain cut it

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # The verb method is the one place that knows the body has arrived whole, whether or not
        # the handler then reads it: wrap each, once, to say so (Tornado's own 405 ones too).
        for verb in _VERBS:
            method = getattr(cls, verb)
            if method is not None and not getattr(method, "_marks_body_read", False):
                setattr(cls, verb, _marking_body_read(method))

    def initialize(self, ctx: Context) -> None:
        self.ctx = ctx
        self.lifecycle.requests.add(self)  # in hand until finished or its connection is gone
        if ctx.metrics is not None:
            self.meter = ctx.metrics.route(self.route)
            self.meter.started()

    @property
    def lifecycle(self) -> Lifecycle:
        """The process's drain state (``ops/lifecycle.py``), from ``server.make_app``."""
        lifecycle: Lifecycle = self.application.settings["lifecycle"]
        return lifecycle

    # -- the request body --------------------------------------------------------------

    def body_limit(self) -> int:
        """The most this route reads of a request body (413 beyond)."""
        return NO_BODY_LIMIT

    def prepare(self) -> Awaitable[None] | None:
        self.expect_body(self.body_limit())
        return None

    def admit_body(self, limit: int) -> int | None:
        """The declared ``Content-Length`` (None without one), once it is a plain number (else
        400) within ``limit`` (else 413, before a byte of the body is read). Tornado's own limit
        is lifted: the route enforces ``limit`` as the body arrives."""
        raw = self.request.headers.get("Content-Length")
        length = None
        if raw is not None:
            if not _DIGITS.fullmatch(raw):
                raise ApiError(400, "bad_request", "Content-Length is not a number.")
            length = int(raw)
            if length > limit:
                raise too_large(limit)
        self.request.connection.set_max_body_size(_UNLIMITED)  # type: ignore[union-attr]
        return length

    def has_body(self, length: int | None) -> bool:
        """Whether a body follows the head: a non-zero length, or a chunked one (whose length
        Tornado has already refused to take alongside ``Content-Length``)."""
        return bool(length) or "Transfer-Encoding" in self.request.headers

    def expect_body(self, limit: int) -> None:
        """Read the body whole, up to ``limit`` bytes (`body` hands it over)."""
        if self.has_body(self.admit_body(limit)):
            self.buffer_body(limit)

    def buffer_body(self, limit: int) -> None:
        self._body = BufferedBody(limit, self.ctx.settings.stream_idle_timeout, self._body_stalled)

    def data_received(self, chunk: bytes) -> Awaitable[None] | None:
        if self._body is not None and not self._body.add(chunk):
            limit, self._body = self._body.limit, None
            self.fail(too_large(limit))
        return None

    def body(self) -> bytes | None:
        """The request body once it has arrived whole; None when none was sent."""
        if self._body is None:
            return None
        body, self._body = self._body.take(), None
        return body

    def body_read(self) -> None:
        """Called as the verb method starts: the body has arrived whole and is watched no more."""
        self._body_read = True
        if self._body is not None:
            self._body.arrived()

    def _body_stalled(self) -> None:
        self._body = None
        self.fail(stalled())

    def on_finish(self) -> None:
        self.forget_body()
        self.lifecycle.requests.discard(self)
        self.count_request()

    def on_connection_close(self) -> None:
        super().on_connection_close()  # fails Tornado's body future, so the request ends
        self.forget_body()
        self.lifecycle.requests.discard(self)
        self.gone = True
        if self.cut_by_drain:
            self.outcome = "shutting_down"
        self.count_request()

    @property
    def cut_by_drain(self) -> bool:
        """The drain is closing every connection left (its last step): a connection that closes
        now was closed by the gateway, not by its client."""
        return self.lifecycle.cutting

    def count_request(self) -> None:
        """Count the request in the metrics, once: as it finishes, or as its connection closes."""
        meter, self.meter = self.meter, None
        if meter is not None:
            if self._headers_written or self._finished:
                status = self.get_status()
            else:  # closed before any answer began: by the drain's last step, or by the client
                status = CUT_BY_DRAIN if self.cut_by_drain else CLIENT_CLOSED
            meter.finished(
                self.request.method or "", status, self.request.request_time(), self.outcome == "rate_limited"
            )

    def forget_body(self) -> None:
        if self._body is not None:
            self._body.close()
            self._body = None

    # -- features and sessions ---------------------------------------------------------

    @property
    def backend(self) -> BackendFeature:
        """The backend's sessions; its routes exist only when it is configured."""
        assert self.ctx.backend is not None
        return self.ctx.backend

    @property
    def chat(self) -> ChatFeature:
        """Dify and the rate limiter; the chat routes exist only when they are configured."""
        assert self.ctx.chat is not None
        return self.ctx.chat

    async def supabase_user(self) -> SupabaseUser:
        """The request's Supabase session (auth/supabase.py): 401 ``unauthorized`` when it has
        none that is valid, 503 ``auth_unavailable`` when Supabase cannot say. A cookie session
        must also pass the CSRF rule."""
        assert self.ctx.supabase is not None
        try:
            user = await self.ctx.supabase.authenticate(self.request.headers)
        except Unauthenticated as exc:
            raise ApiError(401, "unauthorized", str(exc)) from None
        except AuthUnavailable as exc:
            log.warning("supabase unavailable", extra={"request_id": self.request_id, "reason": str(exc)})
            raise ApiError(
                503, "auth_unavailable", "Sign-in could not be checked right now; try again shortly."
            ) from None
        self.user = user.id
        if user.source == "cookie":  # an ambient credential: prove the request is ours
            self.check_csrf()
        return user

    @property
    def request_id(self) -> str:
        """The client's ``X-Request-ID`` when it is a sane token, else a fresh one."""
        rid: str | None = self.__dict__.get("_request_id")
        if rid is None:
            offered = self.request.headers.get("X-Request-ID", "")
            # An id names a request in logs; it guards nothing, so it needs to be unique, not
            # unguessable: 128 bits of the process's Mersenne Twister (reseeded in each forked
            # worker by `random` itself) instead of a getrandom() system call per request.
            rid = offered if _SANE_REQUEST_ID.fullmatch(offered) else f"{random.getrandbits(128):032x}"
            self.__dict__["_request_id"] = rid
        return rid

    def set_default_headers(self) -> None:
        self.clear_header("Server")
        self.set_header("X-Request-ID", self.request_id)
        self.set_header("X-Content-Type-Options", "nosniff")
        # From the application, not `ctx`: Tornado sets the default headers before `initialize`.
        cors: CorsPolicy | None = self.application.settings.get("cors")
        if cors is not None and cors.enabled:
            self.set_header("Vary", "Origin")  # the same URL answers each origin differently
            origin = cors.listed_origin(self.request.headers)
            if origin is not None:
                for name, value in cors.answer_headers(origin):
                    self.set_header(name, value)
        if self.lifecycle.closing:
            # The drain has closed the listener: the client must not reuse this connection
            # (gatehouse's own server says so itself; Tornado's needs the header to say it).
            self.set_header("Connection", "close")

    def compute_etag(self) -> str | None:
        return None  # bodies are relayed in pieces; an ETag over one piece would be wrong

    def write(self, chunk: str | bytes | dict[str, Any]) -> None:
        if isinstance(chunk, (bytes, str)):
            self.bytes_out += len(chunk)
        super().write(chunk)

    def check_csrf(self) -> None:
        """403 ``csrf_rejected`` unless this request may act on a session (auth/csrf.py)."""
        reason = self.ctx.csrf.violation(self.request.method or "", self.request.headers, self.request.host)
        if reason is not None:
            raise ApiError(403, "csrf_rejected", reason)

    def send_json(self, payload: Any, status: int = 200) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.write(json.dumps(payload, separators=(",", ":")).encode())

    def fail(self, error: GatewayError) -> None:
        """Answer ``error`` now, if nothing was answered yet."""
        if not self._finished and not self._headers_written:
            self.send_error(error.status, exc_info=(type(error), error, None))

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, GatewayError):
            code, message = exc.code, exc.message
            for name, value in exc.headers.items():
                self.set_header(name, value)
        else:
            code, message = _DEFAULT_ERRORS.get(status_code, ("internal_error", "Something went wrong on our side."))
            if status_code >= 500 and status_code not in _DEFAULT_ERRORS:
                status_code = 500
                self.set_status(500)
        if status_code == 405:
            self.set_header("Allow", ", ".join(self.SUPPORTED_METHODS))
        if not self._body_read:
            # Answered before the request was read whole (a 405, a refusal in prepare, a 408 or
            # 413): the server closes the connection after it, so say so.
            self.set_header("Connection", "close")
        self.send_json({"error": code, "message": message}, status_code)
        self.finish()

    def log_exception(
        self, typ: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None
    ) -> None:
        if isinstance(value, HTTPError):
            return  # an answer, not a fault; the access log records it
        log.error(
            "unhandled error",
            exc_info=(typ, value, tb),  # type: ignore[arg-type]
            extra={"request_id": self.request_id, "route": self.route, "path": self.request.path},
        )


class NotFoundHandler(BaseHandler):
    """Every path no route claims: 404 once a body (up to `NO_BODY_LIMIT`) is read, so the
    connection stays open for the next request."""

    def get(self, *_: str) -> None:
        raise ApiError(404, "not_found", "No such route.")

    head = post = put = patch = delete = options = get
