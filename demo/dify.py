"""An in-process fake of Dify's service API (a "chat" app), for demo mode and for tests.

It follows ``/work/shared/reference/wire-formats.md`` section 5 and Dify's own ``service_api/wraps.py``.
Every route is under ``/v1`` and needs ``Authorization: Bearer <api_key>``; otherwise 401
``{"code": "unauthorized", "message": ..., "status": 401}`` with Dify's messages ("Authorization header
must be provided and start with 'Bearer'", "Authorization scheme must be 'Bearer'", "Access token is
invalid"). Every error is ``{"code", "message", "status"}``. ``user`` (the end-user id that scopes
conversations, messages and files) is required wherever Dify requires it (400 ``invalid_param``, "Arg
user must be provided."); a resource of another user is 404 ``not_found``.

* ``POST /v1/chat-messages`` ``{query, inputs, user, response_mode, conversation_id, files,
  auto_generate_name}``: ``response_mode`` "streaming" answers 200 ``text/event-stream; charset=utf-8``,
  chunked, no ``Cache-Control`` / ``X-Accel-Buffering`` (Dify sends none): ``data: <json>\\n\\n`` ``message``
  events (one word of the canned answer each, flushed one by one, `DifyFake.word_delay` apart), a bare
  ``event: ping\\n\\n`` every `DifyFake.ping_every` words, then ``message_end`` (``metadata.usage``,
  ``metadata.retriever_resources``). A stop for the task ends the stream early with ``message_end``.
  A query that mentions "long" gets a longer answer (`LONG_ANSWER_REPEATS` paragraphs). Two queries
  show a front end Dify's failures: `RATE_LIMIT_QUERY` is answered 429 ``too_many_requests`` (Dify's
  app concurrency cap), `STREAM_ERROR_QUERY` a few words and then an ``error`` event.
  "blocking" (Dify's default) answers the JSON message. Empty ``conversation_id`` starts a conversation;
  an unknown one (or another user's) is 404 "Conversation Not Exists."; a missing/empty ``query`` is 400.
* ``POST /v1/chat-messages/{task_id}/stop`` ``{user}``: always 200 ``{"result": "success"}``; recorded in
  `DifyFake.stops`; stops the task only when ``user`` started it (as Dify does).
* ``GET /v1/conversations?user=&last_id=&limit=&sort_by=``, ``DELETE /v1/conversations/{id}`` ``{user}``
  (204), ``POST /v1/conversations/{id}/name`` ``{name?, auto_generate?, user}``,
  ``GET /v1/messages?conversation_id=&user=&first_id=&limit=`` (oldest first, paging backwards),
  ``POST /v1/messages/{id}/feedbacks`` ``{rating, user, content}``, ``GET /v1/messages/{id}/suggested?user=``.
* ``POST /v1/files/upload`` (multipart ``file`` + ``user``): 201 with the file record; 400
  ``no_file_uploaded`` / ``too_many_files``; 413 ``file_too_large`` over `DifyFake.upload_limit`.
  ``POST /v1/audio-to-text`` (multipart ``file`` + ``user``): ``{"text": ...}``.
* ``GET /v1/parameters``, ``/v1/info``, ``/v1/meta``: app configuration (no ``user`` needed, as in Dify).

`DifyFake` holds the state tests inspect: `requests` (every request, `Recorded`; the newest within
`HISTORY_BYTES`), `conversations`, `messages`, `files`, `stops` (`Stop`: task id, user,
``time.monotonic()`` of arrival), live `tasks`, `streams` (every streamed task, live or ended, with
the time each ``message`` event was flushed and the time the stream ended), and `disconnects`
(times a client went away mid-stream).
`make_dify_app` returns the `Application` with its `DifyFake` in ``app.settings["dify"]``. Waits wake
early on `DifyFake.shutdown`.

A JSON body nested deeper than `MAX_JSON_DEPTH` (64) is 400 ``invalid_param``: what is stored is sent
back later (``inputs`` in conversations and messages), and serialising it again must not hit Python's
recursion limit.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import http
import json
import re
import socket
import struct
import sys
import time
import uuid
from collections import deque
from collections.abc import Mapping, MutableMapping
from typing import Any, NamedTuple, TypeVar

from tornado.iostream import StreamClosedError
from tornado.web import Application, HTTPError, RequestHandler

from demo.common import History, PathOnlyLogging

__all__ = [
    "Conversation",
    "DifyError",
    "DifyFake",
    "DifyHandler",
    "Message",
    "Recorded",
    "Stop",
    "Task",
    "UploadedFile",
    "make_dify_app",
    "sse_data",
]

Json = dict[str, Any]
PING = b"event: ping\n\n"
HISTORY = 1000  # requests, conversations, messages, files and stops kept, the newest first
HISTORY_BYTES = 4 * 1024 * 1024  # and the requests within this many bytes
MAX_JSON_DEPTH = 64
RATE_LIMIT_QUERY = "/rate-limit"
STREAM_ERROR_QUERY = "/stream-error"
LONG_ANSWER_REPEATS = 4
_REASONS = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "file_too_large",
    415: "unsupported_media_type",
    429: "too_many_requests",
    500: "internal_server_error",
}


K = TypeVar("K")
V = TypeVar("V")


def remember(store: MutableMapping[K, V], key: K, value: V, limit: int = HISTORY) -> None:
    """``store[key] = value``, forgetting the oldest entries beyond ``limit``."""
    store[key] = value
    while len(store) > limit:
        del store[next(iter(store))]


def nesting_depth(value: Any) -> int:
    """How deeply ``value``'s lists and dicts nest (a scalar: 0; ``[]`` and ``{"a": 1}``: 1), without
    recursion, since the value may nest as deep as Python's recursion limit allows."""
    depth, level = 0, [value]
    while containers := [v for v in level if isinstance(v, dict | list)]:
        depth += 1
        level = [child for c in containers for child in (c.values() if isinstance(c, dict) else c)]
    return depth


def _phrase(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


def sse_data(payload: Mapping[str, Any], *, compact: bool = False) -> bytes:
    """One SSE data event, ``data: <json>\\n\\n``: spaced with ``\\uXXXX`` escapes, or compact raw UTF-8."""
    text = json.dumps(payload, ensure_ascii=False, separators=(",", ":")) if compact else json.dumps(payload)
    return b"data: " + text.encode() + b"\n\n"


def usage(prompt_tokens: int, completion_tokens: int, latency: float) -> Json:
    """Dify's ``metadata.usage`` object."""
    prompt_price, completion_price = prompt_tokens * 0.000001, completion_tokens * 0.000002
    return {
        "prompt_tokens": prompt_tokens,
        "prompt_unit_price": "0.001",
        "prompt_price_unit": "0.001",
        "prompt_price": f"{prompt_price:.7f}",
        "completion_tokens": completion_tokens,
        "completion_unit_price": "0.002",
        "completion_price_unit": "0.001",
        "completion_price": f"{completion_price:.7f}",
        "total_tokens": prompt_tokens + completion_tokens,
        "total_price": f"{prompt_price + completion_price:.7f}",
        "currency": "USD",
        "latency": round(latency, 3),
    }


RETRIEVER_RESOURCES: list[Json] = [
    {
        "position": 1,
        "dataset_id": "0c9a4b7e-3f52-4d1e-9b7a-2e6f8d1c5a30",
        "dataset_name": "gatehouse demo notes",
        "document_id": "6d2e9f10-8a4b-4c3d-b5e6-7f809a1b2c3d",
        "document_name": "README.md",
        "segment_id": "f1e2d3c4-b5a6-4978-8a9b-0c1d2e3f4a5b",
        "score": 0.87,
        "content": "gatehouse is a backend-for-frontend: the browser never sees the Dify API key.",
    }
]


@dataclasses.dataclass
class Recorded:
    method: str
    path: str
    query: dict[str, str]  # first value of each argument
    headers: dict[str, str]  # lower-case names
    body: bytes  # a JSON body, kept as text (parsed, it takes many times the memory); else b""
    body_size: int
    at: float  # time.monotonic() on arrival

    @property
    def json(self) -> Any:
        """The parsed JSON body, or None (no body, not JSON, multipart)."""
        try:
            return json.loads(self.body) if self.body else None
        except (ValueError, RecursionError):
            return None

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())

    def footprint(self) -> int:
        """The bytes this record holds, as ``sys.getsizeof`` counts its objects."""
        strings = (*self.query, *self.query.values(), *self.headers, *self.headers.values())
        held = (self, vars(self), self.method, self.path, self.query, self.headers, self.body, self.body_size, self.at)
        return sum(map(sys.getsizeof, (*held, *strings)))


class Stop(NamedTuple):
    task_id: str
    user: str
    at: float  # time.monotonic() on arrival


@dataclasses.dataclass
class Conversation:
    id: str
    user: str
    name: str
    inputs: Json
    created_at: int
    updated_at: int
    seq: int  # creation order, to break ties between equal timestamps
    introduction: str = ""

    def to_json(self) -> Json:
        return {
            "id": self.id,
            "name": self.name,
            "inputs": self.inputs,
            "status": "normal",
            "introduction": self.introduction,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
        }


@dataclasses.dataclass
class Message:
    id: str
    conversation_id: str
    user: str
    query: str
    inputs: Json
    created_at: int
    answer: str = ""
    message_files: list[Json] = dataclasses.field(default_factory=list)
    feedback: Json | None = None
    feedback_content: str | None = None

    def to_json(self) -> Json:
        return {
            "id": self.id,
            "conversation_id": self.conversation_id,
            "parent_message_id": None,
            "inputs": self.inputs,
            "query": self.query,
            "answer": self.answer,
            "message_files": self.message_files,
            "feedback": self.feedback,
            "retriever_resources": RETRIEVER_RESOURCES,
            "agent_thoughts": [],
            "created_at": self.created_at,
            "status": "normal",
            "error": None,
        }


@dataclasses.dataclass
class UploadedFile:
    id: str
    name: str
    size: int
    extension: str
    mime_type: str
    created_by: str  # the end user's uuid, as Dify reports it
    created_at: int
    user: str  # the ``user`` string that uploaded it
    sha256: str

    def to_json(self) -> Json:
        return {
            "id": self.id,
            "name": self.name,
            "size": self.size,
            "extension": self.extension,
            "mime_type": self.mime_type,
            "created_by": self.created_by,
            "created_at": self.created_at,
        }


@dataclasses.dataclass
class Task:
    task_id: str
    user: str
    stopped: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)
    sent: list[float] = dataclasses.field(default_factory=list)  # time.monotonic() of each flushed event
    ended: float | None = None  # when the stream ended: finished, stopped, or the client gone


class DifyError(HTTPError):
    """An error Dify reports as ``{"code", "message", "status"}`` (never logged)."""

    def __init__(self, status: int, code: str, message: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(status)
        self.code, self.message, self.headers = code, message, dict(headers or {})


def _not_found(what: str) -> DifyError:
    return DifyError(404, "not_found", f"{what} Not Exists.")


class DifyFake:
    """The state and routes of one fake Dify chat app."""

    def __init__(
        self,
        api_key: str,
        *,
        word_delay: float = 0.05,
        ping_every: int = 8,
        upload_limit: int = 15 * 1024 * 1024,
    ) -> None:
        self.api_key = api_key
        self.word_delay = word_delay
        self.ping_every = ping_every
        self.upload_limit = upload_limit
        # What it keeps is bounded (the newest HISTORY of each, the requests also in bytes), so a
        # long-running demo or load test does not grow without end.
        self.requests = History[Recorded](HISTORY_BYTES, HISTORY)
        self.conversations: dict[str, Conversation] = {}
        self.messages: dict[str, Message] = {}
        self.files: dict[str, UploadedFile] = {}
        self.stops: deque[Stop] = deque(maxlen=HISTORY)
        self.tasks: dict[str, Task] = {}
        self.streams: dict[str, Task] = {}
        self.disconnects: deque[float] = deque(maxlen=HISTORY)
        self._seq = 0
        self._closing = asyncio.Event()
        self.app = Application(self.routes(), log_function=lambda _: None, dify=self)

    def routes(self) -> list[tuple[str, type[RequestHandler], dict[str, Any]]]:
        args = {"dify": self}
        return [
            (r"/v1/chat-messages", ChatMessages, args),
            (r"/v1/chat-messages/([^/]+)/stop", StopTask, args),
            (r"/v1/conversations", Conversations, args),
            (r"/v1/conversations/([^/]+)", ConversationItem, args),
            (r"/v1/conversations/([^/]+)/name", ConversationName, args),
            (r"/v1/messages", Messages, args),
            (r"/v1/messages/([^/]+)/feedbacks", Feedbacks, args),
            (r"/v1/messages/([^/]+)/suggested", Suggested, args),
            (r"/v1/files/upload", FileUpload, args),
            (r"/v1/audio-to-text", AudioToText, args),
            (r"/v1/parameters", Parameters, args),
            (r"/v1/info", Info, args),
            (r"/v1/meta", Meta, args),
            (r"/.*", NotFound, args),
        ]

    # ---- state helpers ----------------------------------------------------------------------
    @staticmethod
    def end_user_id(user: str) -> str:
        """The stable uuid Dify's EndUser row would have for ``user``."""
        return str(uuid.uuid5(uuid.NAMESPACE_URL, f"dify-end-user:{user}"))

    def answer_for(self, query: str, files: int = 0) -> str:
        attached = f" with {files} file{'s' if files != 1 else ''} attached" if files else ""
        answer = (
            f"You said: {query}{attached}. This is gatehouse's demo Dify, streaming its answer word by word "
            "through the gateway; no model is involved and your API key never reaches the browser."
        )
        if "long" in query.lower():
            more = (
                " Every word is a Server-Sent Event that gatehouse relays as it arrives, so the page shows"
                " it at once; press Stop and gatehouse tells Dify to stop this task."
            )
            answer += more * LONG_ANSWER_REPEATS
        return answer

    def conversation(self, user: str, conversation_id: str) -> Conversation:
        conv = self.conversations.get(conversation_id)
        if conv is None or conv.user != user:
            raise _not_found("Conversation")
        return conv

    def message(self, user: str, message_id: str) -> Message:
        msg = self.messages.get(message_id)
        if msg is None or msg.user != user:
            raise _not_found("Message")
        return msg

    def new_conversation(self, user: str, inputs: Json, name: str) -> Conversation:
        now = int(time.time())
        self._seq += 1
        conv = Conversation(str(uuid.uuid4()), user, name, inputs, now, now, self._seq)
        remember(self.conversations, conv.id, conv)
        return conv

    def history(self, conversation_id: str) -> list[Message]:
        return [m for m in self.messages.values() if m.conversation_id == conversation_id]

    def stop(self, task_id: str, user: str) -> None:
        self.stops.append(Stop(task_id, user, time.monotonic()))
        task = self.tasks.get(task_id)
        if task is not None and task.user == user:
            task.stopped.set()

    # ---- lifecycle --------------------------------------------------------------------------
    async def pause(self, seconds: float | None, *events: asyncio.Event) -> bool:
        """Wait ``seconds`` (None: forever); True when one of ``events`` or `shutdown` cut it short."""
        watched = (*events, self._closing)
        if any(event.is_set() for event in watched):
            return True
        if seconds is not None and seconds <= 0:
            return False
        waiters = [asyncio.ensure_future(event.wait()) for event in watched]
        try:
            done, _ = await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()
        return bool(done)

    @property
    def closing(self) -> bool:
        return self._closing.is_set()

    def shutdown(self) -> None:
        """Wake every waiting handler so it ends its response now."""
        self._closing.set()


class DifyHandler(PathOnlyLogging):
    """Records the request, checks the API key, turns `DifyError` into Dify's error body."""

    SUPPORTED_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS")

    def initialize(self, dify: DifyFake) -> None:
        self.dify = dify
        self.gone = asyncio.Event()  # set when the client closes the connection

    def prepare(self) -> None:
        self.record_request()
        self.check_key()

    def record_request(self) -> None:
        body = self.request.body or b""
        is_json = self.request.headers.get("Content-Type", "").split(";")[0].strip().endswith("json")
        self.record = Recorded(
            self.request.method or "",
            self.request.path,
            {name: self.get_query_argument(name) for name in self.request.query_arguments},
            {name.lower(): value for name, value in self.request.headers.items()},
            body if is_json else b"",
            len(body),
            time.monotonic(),
        )
        self.dify.requests.append(self.record, self.record.footprint())

    def check_key(self) -> None:
        auth = self.request.headers.get("Authorization")
        if auth is None or " " not in auth:
            raise DifyError(401, "unauthorized", "Authorization header must be provided and start with 'Bearer'")
        scheme, token = auth.split(None, 1)
        if scheme.lower() != "bearer":
            raise DifyError(401, "unauthorized", "Authorization scheme must be 'Bearer'")
        if token != self.dify.api_key:
            raise DifyError(401, "unauthorized", "Access token is invalid")

    def on_connection_close(self) -> None:
        self.gone.set()

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        error = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(error, DifyError):
            code, message = error.code, error.message
            for name, value in error.headers.items():
                self.set_header(name, value)
        elif status_code == 500:
            code = "internal_server_error"
            message = "The server encountered an internal error and was unable to complete your request."
        else:
            code, message = _REASONS.get(status_code, "unknown"), _phrase(status_code)
        self.send_json({"code": code, "message": message, "status": status_code}, status_code)

    def send_json(self, payload: Any, status: int = 200) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(payload))

    # ---- request parsing --------------------------------------------------------------------
    def body(self) -> Json:
        if not self.request.body:
            return {}
        try:
            value = json.loads(self.request.body)
        except (ValueError, RecursionError):
            raise DifyError(
                400, "bad_request", "The browser (or proxy) sent a request that this server could not understand."
            ) from None
        if not isinstance(value, dict):
            raise DifyError(400, "invalid_param", "The request body must be a JSON object.")
        if nesting_depth(value) > MAX_JSON_DEPTH:
            raise DifyError(400, "invalid_param", f"The request body is nested deeper than {MAX_JSON_DEPTH} levels.")
        return value

    @staticmethod
    def need_user(user: Any) -> str:
        if not user or not isinstance(user, str | int):
            raise DifyError(400, "invalid_param", "Arg user must be provided.")
        return str(user)

    def query_user(self) -> str:
        return self.need_user(self.get_query_argument("user", None))

    def limit(self, default: int = 20) -> int:
        raw = self.get_query_argument("limit", None)
        try:
            value = default if raw in (None, "") else int(str(raw))
        except ValueError:
            raise DifyError(400, "invalid_param", "limit must be an integer") from None
        if not 1 <= value <= 100:
            raise DifyError(400, "invalid_param", "limit must be between 1 and 100")
        return value

    # ---- connection control, for scripted answers -------------------------------------------
    def abandon(self, *, reset: bool = False) -> None:
        """Drop the connection without (further) response; ``reset`` closes with a TCP RST."""
        stream = self.detach()
        sock = stream.socket
        if reset and sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        stream.close()


class ChatMessages(DifyHandler):
    async def post(self) -> None:
        body = self.body()
        user = self.need_user(body.get("user"))
        query = body.get("query")
        if not isinstance(query, str) or not query.strip():
            raise DifyError(400, "invalid_param", "query is required")
        inputs = body.get("inputs") or {}
        if not isinstance(inputs, dict):
            raise DifyError(400, "invalid_param", "inputs must be an object")
        if query.strip() == RATE_LIMIT_QUERY:
            raise DifyError(
                429,
                "too_many_requests",
                "Too many requests. Please try again later. "
                "The current maximum concurrent requests allowed for this app is 1.",
            )
        mode = body.get("response_mode") or "blocking"
        if mode not in ("streaming", "blocking"):
            raise DifyError(400, "invalid_param", "response_mode must be 'streaming' or 'blocking'")
        files = body.get("files") or []
        if not isinstance(files, list) or not all(isinstance(f, dict) for f in files):
            raise DifyError(400, "invalid_param", "files must be a list of objects")
        dify = self.dify
        conversation_id = body.get("conversation_id") or ""
        if conversation_id:
            conv = dify.conversation(user, str(conversation_id))
        else:
            name = query.strip()[:30] if body.get("auto_generate_name", True) else "New conversation"
            conv = dify.new_conversation(user, inputs, name)
        now = int(time.time())
        conv.updated_at = now
        message = Message(str(uuid.uuid4()), conv.id, user, query, inputs, now)
        message.message_files = [
            {
                "id": str(f.get("upload_file_id") or uuid.uuid4()),
                "type": f.get("type", "image"),
                "url": f.get("url") or "",
                "belongs_to": "user",
            }
            for f in files
        ]
        remember(dify.messages, message.id, message)
        task = Task(str(uuid.uuid4()), user)
        answer = dify.answer_for(query, len(files))
        if mode == "blocking":
            message.answer = answer
            self.send_json(
                {
                    "event": "message",
                    "task_id": task.task_id,
                    "id": message.id,
                    "message_id": message.id,
                    "conversation_id": conv.id,
                    "mode": "chat",
                    "answer": answer,
                    "metadata": self.metadata(message, 0.0),
                    "created_at": message.created_at,
                }
            )
            return
        dify.tasks[task.task_id] = task
        remember(dify.streams, task.task_id, task)
        try:
            await self.stream(message, task, answer, failing=query.strip() == STREAM_ERROR_QUERY)
        finally:
            task.ended = time.monotonic()
            dify.tasks.pop(task.task_id, None)

    def metadata(self, message: Message, latency: float) -> Json:
        completion = len(message.answer.split())
        return {
            "usage": usage(len(message.query.split()) + 12, completion, latency),
            "retriever_resources": RETRIEVER_RESOURCES,
        }

    def common(self, message: Message, task: Task) -> Json:
        return {
            "conversation_id": message.conversation_id,
            "message_id": message.id,
            "created_at": message.created_at,
            "task_id": task.task_id,
            "id": message.id,
        }

    async def stream(self, message: Message, task: Task, answer: str, *, failing: bool = False) -> None:
        """``answer`` word by word; ``failing``: three words, then Dify's in-stream ``error`` event."""
        dify, started = self.dify, time.monotonic()
        self.set_header("Content-Type", "text/event-stream; charset=utf-8")
        words = re.findall(r"\S+\s*", answer)
        try:
            for n, word in enumerate(words[:3] if failing else words):
                if n and dify.ping_every and n % dify.ping_every == 0:
                    self.write(PING)
                event = {"event": "message", **self.common(message, task), "answer": word}
                self.write(sse_data({**event, "from_variable_selector": None}))
                await self.flush()
                task.sent.append(time.monotonic())
                message.answer += word
                if await dify.pause(dify.word_delay, task.stopped, self.gone):
                    break
            if self.gone.is_set():
                raise StreamClosedError()
            if failing:
                error = {key: value for key, value in self.common(message, task).items() if key != "task_id"}
                reason = "[demo] The model provider failed mid-answer (a demo of Dify's in-stream error)."
                error.update({"event": "error", "code": "completion_request_error", "status": 400, "message": reason})
                self.write(sse_data(error))
                await self.flush()
                return
            end = {"event": "message_end", **self.common(message, task)}
            self.write(sse_data({**end, "metadata": self.metadata(message, time.monotonic() - started), "files": []}))
            await self.flush()
        except StreamClosedError:
            dify.disconnects.append(time.monotonic())


class StopTask(DifyHandler):
    def post(self, task_id: str) -> None:
        self.dify.stop(task_id, self.need_user(self.body().get("user")))
        self.send_json({"result": "success"})


class Conversations(DifyHandler):
    def get(self) -> None:
        user, limit = self.query_user(), self.limit()
        sort_by = self.get_query_argument("sort_by", "-updated_at")
        if sort_by.lstrip("-") not in ("created_at", "updated_at"):
            raise DifyError(
                400, "invalid_param", "sort_by must be one of created_at, -created_at, updated_at, -updated_at"
            )
        field = sort_by.lstrip("-")
        convs = sorted(
            (c for c in self.dify.conversations.values() if c.user == user),
            key=lambda c: (getattr(c, field), c.seq),
            reverse=sort_by.startswith("-"),
        )
        last_id = self.get_query_argument("last_id", "")
        if last_id:
            ids = [c.id for c in convs]
            if last_id not in ids:
                raise _not_found("Last Conversation")
            convs = convs[ids.index(last_id) + 1 :]
        self.send_json({"limit": limit, "has_more": len(convs) > limit, "data": [c.to_json() for c in convs[:limit]]})


class ConversationItem(DifyHandler):
    def delete(self, conversation_id: str) -> None:
        conv = self.dify.conversation(self.need_user(self.body().get("user")), conversation_id)
        del self.dify.conversations[conv.id]
        for message in self.dify.history(conv.id):
            del self.dify.messages[message.id]
        self.set_status(204)
        self.finish()


class ConversationName(DifyHandler):
    def post(self, conversation_id: str) -> None:
        body = self.body()
        conv = self.dify.conversation(self.need_user(body.get("user")), conversation_id)
        if body.get("auto_generate"):
            history = self.dify.history(conv.id)
            conv.name = history[0].query.strip()[:30] if history else "New conversation"
        else:
            name = body.get("name")
            if not isinstance(name, str) or not name.strip():
                raise DifyError(400, "invalid_param", "name is required when auto_generate is false")
            conv.name = name.strip()
        conv.updated_at = int(time.time())
        self.send_json(conv.to_json())


class Messages(DifyHandler):
    def get(self) -> None:
        user, limit = self.query_user(), self.limit()
        conversation_id = self.get_query_argument("conversation_id", "")
        if not conversation_id:
            raise DifyError(400, "invalid_param", "conversation_id is required")
        history = self.dify.history(self.dify.conversation(user, conversation_id).id)
        first_id = self.get_query_argument("first_id", "")
        if first_id:
            ids = [m.id for m in history]
            if first_id not in ids:
                raise _not_found("First Message")
            history = history[: ids.index(first_id)]
        page = history[-limit:]
        self.send_json({"limit": limit, "has_more": len(history) > limit, "data": [m.to_json() for m in page]})


class Feedbacks(DifyHandler):
    def post(self, message_id: str) -> None:
        body = self.body()
        message = self.dify.message(self.need_user(body.get("user")), message_id)
        rating = body.get("rating")
        if rating not in ("like", "dislike", None):
            raise DifyError(400, "invalid_param", "rating must be 'like', 'dislike' or null")
        message.feedback = None if rating is None else {"rating": rating}
        content = body.get("content")
        message.feedback_content = content if isinstance(content, str) else None
        self.send_json({"result": "success"})


class Suggested(DifyHandler):
    def get(self, message_id: str) -> None:
        message = self.dify.message(self.query_user(), message_id)
        topic = " ".join(message.query.split()[:6]) or "that"
        questions = [
            f"Can you say more about {topic}?",
            "How does gatehouse keep the API key secret?",
            "What else can I try?",
        ]
        self.send_json({"result": "success", "data": questions})


class _Multipart(DifyHandler):
    def one_file(self, missing_code: str, missing_message: str) -> tuple[str, str, bytes]:
        user = self.need_user(self.get_body_argument("user", None))
        if "file" not in self.request.files:
            raise DifyError(400, missing_code, missing_message)
        if len(self.request.files) > 1 or len(self.request.files["file"]) > 1:
            raise DifyError(400, "too_many_files", "Only one file is allowed.")
        upload = self.request.files["file"][0]
        if not upload.filename:
            raise DifyError(400, "filename_not_exists_error", "The specified filename does not exist.")
        if len(upload.body) > self.dify.upload_limit:
            raise DifyError(413, "file_too_large", f"File size exceeded. {len(upload.body)} > {self.dify.upload_limit}")
        self.content_type = upload.content_type or "application/octet-stream"
        return user, upload.filename, upload.body


class FileUpload(_Multipart):
    def post(self) -> None:
        user, name, data = self.one_file("no_file_uploaded", "Please upload your file.")
        record = UploadedFile(
            str(uuid.uuid4()),
            name,
            len(data),
            name.rsplit(".", 1)[1].lower() if "." in name else "",
            self.content_type,
            self.dify.end_user_id(user),
            int(time.time()),
            user,
            hashlib.sha256(data).hexdigest(),
        )
        remember(self.dify.files, record.id, record)
        self.send_json(record.to_json(), 201)


class AudioToText(_Multipart):
    def post(self) -> None:
        _, name, data = self.one_file("no_audio_uploaded", "Please upload your audio.")
        self.send_json({"text": f"(demo transcription of {name}, {len(data)} bytes)"})


class Parameters(DifyHandler):
    def get(self) -> None:
        limit_mb = max(1, self.dify.upload_limit // (1024 * 1024))
        self.send_json(
            {
                "opening_statement": "Hi! I am gatehouse's demo Dify app. Ask me anything; I will echo it back.",
                "suggested_questions": [
                    "What is gatehouse?",
                    "Where does my Dify API key live?",
                    "Stream me a long answer",
                ],
                "suggested_questions_after_answer": {"enabled": True},
                "speech_to_text": {"enabled": False},
                "text_to_speech": {"enabled": False, "voice": "", "language": "", "autoPlay": "disabled"},
                "retriever_resource": {"enabled": True},
                "annotation_reply": {"enabled": False},
                "more_like_this": {"enabled": False},
                "sensitive_word_avoidance": {"enabled": False, "type": "", "configs": []},
                "user_input_form": [],
                "file_upload": {
                    "enabled": True,
                    "image": {
                        "enabled": True,
                        "number_limits": 3,
                        "detail": "high",
                        "transfer_methods": ["remote_url", "local_file"],
                    },
                    "allowed_file_types": ["image", "document"],
                    "allowed_file_extensions": [],
                    "allowed_file_upload_methods": ["remote_url", "local_file"],
                    "number_limits": 3,
                },
                "system_parameters": {
                    "file_size_limit": limit_mb,
                    "image_file_size_limit": 10,
                    "audio_file_size_limit": 50,
                    "video_file_size_limit": 100,
                    "workflow_file_upload_limit": 10,
                },
            }
        )


class Info(DifyHandler):
    def get(self) -> None:
        description = "A fake Dify chat app served in-process by gatehouse's demo mode."
        self.send_json(
            {
                "name": "gatehouse demo chat",
                "description": description,
                "tags": [],
                "mode": "chat",
                "author_name": "gatehouse",
            }
        )


class Meta(DifyHandler):
    def get(self) -> None:
        self.send_json({"tool_icons": {}})


class NotFound(DifyHandler):
    def prepare(self) -> None:
        self.record_request()
        message = (
            "The requested URL was not found on the server. "
            "If you entered the URL manually please check your spelling and try again."
        )
        raise DifyError(404, "not_found", message)


def make_dify_app(api_key: str, *, word_delay: float = 0.05) -> Application:
    """A fake Dify app accepting ``api_key``; its `DifyFake` is ``app.settings["dify"]``."""
    return DifyFake(api_key, word_delay=word_delay).app
