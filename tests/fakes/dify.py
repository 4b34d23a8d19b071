"""A fake Dify service API on a real socket (127.0.0.1), scriptable per ``/chat-messages`` call.

Without a script it is `demo.dify.DifyFake` (every route of wire-formats.md section 5, its state and
its errors). `FakeDify.url` is the base URL *including* ``/v1``.

Scripts replace the answer of ``POST /v1/chat-messages`` once the API key has been accepted (a wrong
key still gets Dify's 401 and leaves the script queued). `FakeDify.script` = X answers the next call
with X; `FakeDify.scripts` is the FIFO behind it (append several); `FakeDify.default_script` answers
whenever the queue is empty (``None``: the demo behaviour). Scripts:

* `Reply`: an HTTP error before any stream, Dify's ``{"code", "message", "status"}`` (defaults per
  status), optional ``Retry-After`` / other headers, or a raw ``body``.
* `Stream`: ``steps`` written in order: ``bytes``/``str`` are written and flushed as one read, a
  number sleeps that many seconds. Headers go out with the first write (as Dify's WSGI server does)
  unless ``headers_first``. With ``task_id``, a stop for that task (by the request's ``user``) ends the
  stream at once with a ``message_end``.
* `SlowStream`: after ``hold`` seconds, a ``message`` event for ``task_id`` every ``interval``
  seconds, ``count`` of them, then ``message_end``; a stop ends it early with ``message_end``.
* `Hang`: never answers (``headers=True``: sends 200 SSE headers, then nothing) until the client goes
  away or the fake closes; then it drops the connection.
* `Reset`: optional ``steps`` (as `Stream`), then a TCP reset (SO_LINGER 0).

Event builders: `event` (``data: {json}\\n\\n`` with ``event``, ``conversation_id``, ``message_id``,
``created_at`` and, except for ``error``, ``task_id``; ``sse_id`` prefixes an ``id: <n>`` line, ``crlf``
uses CRLF line ends, ``compact`` raw-UTF-8 compact JSON), `message`, `message_end`, `error_event`,
`ping`. Their ids default to `CONVERSATION_ID`, `MESSAGE_ID`, `TASK_ID`.

Inspection: `FakeDify.requests` (`demo.dify.Recorded`: method, path, query dict, lower-case headers,
JSON body or None, body size, arrival time), `FakeDify.stops` (`demo.dify.Stop`: task id, user,
``time.monotonic()`` of arrival), `FakeDify.disconnects` (monotonic times a client went away while a
response was streaming), plus the demo state (`conversations`, `messages`, `files`).
Close with ``await fake.aclose()`` (or `close` from synchronous code).
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from tornado.httpserver import HTTPServer
from tornado.iostream import StreamClosedError
from tornado.testing import bind_unused_port
from tornado.web import Application

from demo.dify import (
    ChatMessages,
    Conversation,
    DifyError,
    DifyFake,
    Message,
    Recorded,
    Stop,
    Task,
    UploadedFile,
    sse_data,
    usage,
)

__all__ = [
    "CONVERSATION_ID",
    "MESSAGE_ID",
    "TASK_ID",
    "FakeDify",
    "Hang",
    "Reply",
    "Reset",
    "Script",
    "SlowStream",
    "Stream",
    "error_event",
    "event",
    "message",
    "message_end",
    "ping",
]

CONVERSATION_ID = "9d6f2c1e-4b3a-4e8f-a1c2-3b4d5e6f7a80"
MESSAGE_ID = "4a7b9c2d-1e3f-4a5b-8c6d-7e8f9a0b1c2d"
TASK_ID = "c3d2e1f0-a9b8-4c7d-9e6f-5a4b3c2d1e0f"
SSE_HEADERS = {"Content-Type": "text/event-stream; charset=utf-8"}

_DEFAULT_ERRORS = {
    400: ("invalid_param", "Invalid parameter."),
    401: ("unauthorized", "Access token is invalid"),
    403: ("forbidden", "The app's API service has been disabled."),
    404: ("not_found", "Conversation Not Exists."),
    413: ("file_too_large", "File size exceeded."),
    429: ("too_many_requests", "Too many requests. Please try again later."),
    500: ("internal_server_error", "The server encountered an internal error and was unable to complete your request."),
    503: ("service_unavailable", "Service Unavailable"),
}


# --------------------------------------------------------------------------------------------------
# Event builders
# --------------------------------------------------------------------------------------------------
def event(
    name: str,
    *,
    sse_id: int | str | None = None,
    crlf: bool = False,
    compact: bool = False,
    omit: Iterable[str] = (),
    **fields: Any,
) -> bytes:
    """``data: {json}\\n\\n`` for a Dify event ``name``; ``fields`` override the standard ones, ``omit`` drops."""
    payload: dict[str, Any] = {
        "event": name,
        "conversation_id": CONVERSATION_ID,
        "message_id": MESSAGE_ID,
        "created_at": int(time.time()),
    }
    if name != "error":
        payload["task_id"] = TASK_ID
    payload.update(fields)
    for field in omit:
        payload.pop(field, None)
    data = sse_data(payload, compact=compact)
    if sse_id is not None:
        data = f"id: {sse_id}\n".encode() + data
    return data.replace(b"\n", b"\r\n") if crlf else data


def message(answer: str, **fields: Any) -> bytes:
    """A ``message`` event carrying the ``answer`` delta."""
    return event("message", **{"id": fields.get("message_id", MESSAGE_ID), "answer": answer, **fields})


def message_end(**fields: Any) -> bytes:
    """A ``message_end`` event with ``metadata.usage`` and ``metadata.retriever_resources``."""
    metadata = {"usage": usage(12, 8, 0.4), "retriever_resources": []}
    return event("message_end", **{"id": fields.get("message_id", MESSAGE_ID), "metadata": metadata, **fields})


def error_event(
    code: str = "completion_request_error", message: str = "Model error.", status: int = 400, **fields: Any
) -> bytes:
    """A mid-stream ``error`` event (no ``task_id``; no ``message_end`` follows it in real Dify)."""
    return event("error", **{"code": code, "status": status, "message": message, **fields})


def ping(*, crlf: bool = False) -> bytes:
    """Dify's keep-alive: ``event: ping`` and no data line."""
    return b"event: ping\r\n\r\n" if crlf else b"event: ping\n\n"


# --------------------------------------------------------------------------------------------------
# Scripts
# --------------------------------------------------------------------------------------------------
Step = bytes | str | float


@dataclasses.dataclass
class Reply:
    """An HTTP error before the stream (defaults: Dify's code and message for ``status``)."""

    status: int
    code: str | None = None
    message: str | None = None
    retry_after: int | None = None
    headers: Mapping[str, str] = dataclasses.field(default_factory=dict)
    body: bytes | None = None  # sent verbatim instead of the JSON error

    async def run(self, handler: _ScriptedChat) -> None:
        headers = dict(self.headers)
        if self.retry_after is not None:
            headers["Retry-After"] = str(self.retry_after)
        if self.body is not None:
            handler.set_status(self.status)
            for name, value in headers.items():
                handler.set_header(name, value)
            handler.finish(self.body)
            return
        code, text = _DEFAULT_ERRORS.get(self.status, ("unknown", "Unknown error."))
        raise DifyError(self.status, self.code or code, self.message or text, headers)


@dataclasses.dataclass
class Stream:
    """Raw chunks (bytes/str, one flush each) and pauses (seconds) in order."""

    steps: Sequence[Step]
    task_id: str | None = None  # a stop for it ends the stream with message_end
    status: int = 200
    headers: Mapping[str, str] = dataclasses.field(default_factory=lambda: dict(SSE_HEADERS))
    headers_first: bool = False

    async def run(self, handler: _ScriptedChat) -> None:
        task = handler.start_task(self.task_id)
        handler.set_status(self.status)
        for name, value in self.headers.items():
            handler.set_header(name, value)
        try:
            await handler.play(self.steps, task, self.headers_first)
        finally:
            handler.end_task(task)
        handler.done()


@dataclasses.dataclass
class SlowStream:
    """``message`` events every ``interval`` s after ``hold`` s, until stopped or ``count`` sent."""

    task_id: str = dataclasses.field(default_factory=lambda: str(uuid.uuid4()))
    interval: float = 0.1
    count: int = 100_000
    hold: float = 0.0
    answer: str = "tick "
    headers_first: bool = False

    def steps(self) -> Iterator[Step]:
        if self.hold:
            yield self.hold
        for _ in range(self.count):
            yield message(self.answer, task_id=self.task_id)
            yield self.interval
        yield message_end(task_id=self.task_id)

    async def run(self, handler: _ScriptedChat) -> None:
        task = handler.start_task(self.task_id)
        handler.set_header("Content-Type", SSE_HEADERS["Content-Type"])
        try:
            await handler.play(self.steps(), task, self.headers_first)
        finally:
            handler.end_task(task)
        handler.done()


@dataclasses.dataclass
class Hang:
    """No answer (or, with ``headers``, 200 SSE headers and then nothing) until the client leaves."""

    headers: bool = False

    async def run(self, handler: _ScriptedChat) -> None:
        if self.headers:
            handler.set_header("Content-Type", SSE_HEADERS["Content-Type"])
            with contextlib.suppress(StreamClosedError):
                await handler.flush()
        await handler.dify.pause(None, handler.gone)
        if handler.gone.is_set():
            handler.dify.disconnects.append(time.monotonic())
        handler.abandon()


@dataclasses.dataclass
class Reset:
    """Optional ``steps`` (as in `Stream`, headers go out with the first), then a TCP reset."""

    steps: Sequence[Step] = ()
    headers: Mapping[str, str] = dataclasses.field(default_factory=lambda: dict(SSE_HEADERS))

    async def run(self, handler: _ScriptedChat) -> None:
        if self.steps:
            for name, value in self.headers.items():
                handler.set_header(name, value)
            await handler.play(self.steps, None, False)
        handler.abandon(reset=True)


Script = Reply | Stream | SlowStream | Hang | Reset


class _ScriptedChat(ChatMessages):
    def initialize(self, dify: DifyFake, fake: FakeDify | None = None) -> None:
        super().initialize(dify)
        assert fake is not None
        self.fake = fake

    async def post(self) -> None:
        script = self.fake.next_script()
        if script is None:
            await super().post()
        else:
            await script.run(self)

    def request_user(self) -> str:
        try:
            return str(self.body().get("user") or "")
        except DifyError:
            return ""

    def start_task(self, task_id: str | None) -> Task | None:
        if task_id is None:
            return None
        task = Task(task_id, self.request_user())
        self.dify.tasks[task_id] = task
        return task

    def end_task(self, task: Task | None) -> None:
        if task is not None and self.dify.tasks.get(task.task_id) is task:
            del self.dify.tasks[task.task_id]

    async def play(self, steps: Iterable[Step], task: Task | None, headers_first: bool) -> None:
        """Write ``steps``; a stop of ``task`` ends with ``message_end``; a gone client ends it quietly."""
        events = [self.gone] if task is None else [self.gone, task.stopped]
        try:
            if headers_first:
                await self.flush()
            for step in steps:
                if isinstance(step, int | float):
                    woken = await self.dify.pause(float(step), *events)
                else:
                    self.write(step.encode() if isinstance(step, str) else step)
                    await self.flush()
                    woken = await self.dify.pause(0, *events)
                if woken:
                    break
            if self.gone.is_set():
                raise StreamClosedError()
            if task is not None and task.stopped.is_set():
                self.write(message_end(task_id=task.task_id))
                await self.flush()
        except StreamClosedError:
            self.dify.disconnects.append(time.monotonic())

    def done(self) -> None:
        """After a stream: let Tornado finish it, or drop a connection the client or the fake closed."""
        if self.gone.is_set() or self.dify.closing:
            self.abandon()


# --------------------------------------------------------------------------------------------------
# The server
# --------------------------------------------------------------------------------------------------
class FakeDify:
    """Serve a scriptable fake Dify on 127.0.0.1 in the current IOLoop; ``await aclose()`` when done."""

    def __init__(
        self, api_key: str = "app-gatehouse-test-key", *, word_delay: float = 0.0, ping_every: int = 8
    ) -> None:
        self.dify = DifyFake(api_key, word_delay=word_delay, ping_every=ping_every)
        self.scripts: collections.deque[Script] = collections.deque()
        self.default_script: Script | None = None
        sock, self.port = bind_unused_port()
        routes: list[Any] = [(r"/v1/chat-messages", _ScriptedChat, {"dify": self.dify, "fake": self})]
        app = Application([*routes, *self.dify.routes()], log_function=lambda _: None)
        self.server = HTTPServer(app, max_body_size=2**40)
        self.server.add_sockets([sock])

    # ---- scripting ---------------------------------------------------------------------------
    @property
    def script(self) -> Script | None:
        """The answer of the next ``/chat-messages`` call (setting replaces the whole queue)."""
        return self.scripts[0] if self.scripts else self.default_script

    @script.setter
    def script(self, value: Script | None) -> None:
        self.scripts.clear()
        if value is not None:
            self.scripts.append(value)

    def next_script(self) -> Script | None:
        return self.scripts.popleft() if self.scripts else self.default_script

    # ---- inspection --------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def api_key(self) -> str:
        return self.dify.api_key

    @property
    def requests(self) -> list[Recorded]:
        return list(self.dify.requests)

    @property
    def stops(self) -> list[Stop]:
        return list(self.dify.stops)

    @property
    def disconnects(self) -> list[float]:
        return list(self.dify.disconnects)

    @property
    def conversations(self) -> dict[str, Conversation]:
        return self.dify.conversations

    @property
    def messages(self) -> dict[str, Message]:
        return self.dify.messages

    @property
    def files(self) -> dict[str, UploadedFile]:
        return self.dify.files

    def calls(self, path: str) -> list[Recorded]:
        """Requests to ``path``, given with or without the ``/v1`` prefix."""
        full = path if path.startswith("/v1/") else "/v1" + path
        return [r for r in self.requests if r.path == full]

    # ---- lifecycle ---------------------------------------------------------------------------
    def close(self) -> None:
        """Stop listening and wake every waiting handler (they end on the next loop iterations)."""
        self.dify.shutdown()
        self.server.stop()

    async def aclose(self) -> None:
        """`close`, then drop every open connection and wait for it."""
        self.close()
        await self.server.close_all_connections()
