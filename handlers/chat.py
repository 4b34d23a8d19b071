"""``/api/chat``: a chat front end's API, in front of Dify, for users signed in with Supabase.

Every route: authenticate the Supabase session (``auth/supabase.py``; a cookie session on an
unsafe method must also pass the CSRF rule) -> build the Dify request with the gateway's key
and ``user`` = the Supabase user id, whatever the browser sent -> relay Dify's answer, with
Dify's errors turned into gatehouse's (``upstream/dify.py``).

``POST /api/chat`` sends a message (`ChatHandler`): validated, rate limited per user, relayed
event by event; if the browser leaves mid-stream, Dify is told to stop the task. The rest
(`DifyApiHandler`, one per `Endpoint`) are the conversation list, history, renaming, deleting,
feedback, suggestions, stop, file upload and app parameters.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import uuid
from typing import Any

from handlers.context import Context
from handlers.errors import ApiError
from handlers.relaying import RelayingHandler, Target
from upstream.dify import dify_error
from upstream.multipart import ForbiddenField, FormField, boundary_of
from upstream.relay import HeldResponse, Relay
from upstream.sse import parse_events

__all__ = ["ENDPOINTS", "ChatHandler", "DifyApiHandler", "Endpoint"]

log = logging.getLogger("gatehouse")
chat_log = logging.getLogger("gatehouse.chat")
_background: set[asyncio.Task[Any]] = set()  # stop calls outlive their request


def _is_uuid(value: object) -> bool:
    """Dify's ids are UUIDs; anything else is never put into a URL."""
    try:
        return isinstance(value, str) and str(uuid.UUID(value)) == value.lower()
    except ValueError:
        return False


def _uuid(value: object, what: str) -> str:
    if isinstance(value, str):
        try:
            return str(uuid.UUID(value))
        except ValueError:
            pass
    raise ApiError(400, "invalid_param", f"{what} must be a UUID.")


class DifyHandler(RelayingHandler):
    """The shared part: who the user is, Dify's headers, Dify's errors."""

    json_only = True
    route = "chat"
    upstream = "dify"
    dify_user: str = ""

    async def authenticate(self) -> None:
        self.dify_user = (await self.supabase_user()).id

    def observer(self) -> DifyHandler:
        return self

    # RelayObserver: Dify's error answers are held and answered in gatehouse's words.
    def hold(self, status: int) -> bool:
        return not 200 <= status < 300

    def on_events(self, data: bytes) -> None:
        pass

    def answer_held(self, held: HeldResponse) -> None:
        self.outcome = "dify_error"
        self.fail(dify_error(held, self.chat.dify))

    def with_user(self, parsed: Any) -> bytes:
        """A JSON object body with Dify's ``user`` set by the gateway."""
        if parsed is None:
            parsed = {}
        if not isinstance(parsed, dict):
            raise ApiError(400, "invalid_json", "The request body must be a JSON object.")
        return json.dumps({**parsed, "user": self.dify_user}, separators=(",", ":")).encode()


@dataclasses.dataclass(frozen=True)
class Endpoint:
    """One Dify call behind one gatehouse route: ``path`` has a ``{}`` for an id from the URL."""

    method: str
    path: str
    query: tuple[str, ...] = ()  # browser query parameters passed on (``*_id`` ones must be UUIDs)
    required: tuple[str, ...] = ()
    multipart: bool = False


ENDPOINTS: dict[str, Endpoint] = {
    r"/api/chat/conversations": Endpoint("GET", "conversations", ("last_id", "limit", "sort_by")),
    r"/api/chat/conversations/([^/]+)": Endpoint("DELETE", "conversations/{}"),
    r"/api/chat/conversations/([^/]+)/name": Endpoint("POST", "conversations/{}/name"),
    r"/api/chat/messages": Endpoint("GET", "messages", ("conversation_id", "first_id", "limit"), ("conversation_id",)),
    r"/api/chat/messages/([^/]+)/feedbacks": Endpoint("POST", "messages/{}/feedbacks"),
    r"/api/chat/messages/([^/]+)/suggested": Endpoint("GET", "messages/{}/suggested"),
    r"/api/chat/([^/]+)/stop": Endpoint("POST", "chat-messages/{}/stop"),
    r"/api/chat/files": Endpoint("POST", "files/upload", multipart=True),
    r"/api/chat/parameters": Endpoint("GET", "parameters"),
}


class DifyApiHandler(DifyHandler):
    """One `Endpoint`, as configured in ``server.make_app``."""

    _form: FormField | None = None

    def initialize(self, ctx: Context, endpoint: Endpoint) -> None:  # type: ignore[override]
        super().initialize(ctx)
        self.endpoint = endpoint
        self.SUPPORTED_METHODS = (endpoint.method,)
        self.json_only = not endpoint.multipart  # type: ignore[misc]

    async def target(self) -> Target:
        endpoint = self.endpoint
        ids = [_uuid(arg, "The id in the path") for arg in self.path_args]
        await self.authenticate()
        query = {"user": self.dify_user} if endpoint.method == "GET" else {}
        for name in endpoint.query:
            value = self.get_query_argument(name, None)
            if value is not None and value != "":
                query[name] = _uuid(value, name) if name.endswith("_id") else value
        missing = [name for name in endpoint.required if name not in query]
        if missing:
            raise ApiError(400, "invalid_param", f"{missing[0]} is required.")
        dify = self.chat.dify
        url = dify.url(endpoint.path.format(*ids), query)
        if endpoint.multipart:
            return Target(url, dify.headers(self._form_type()))
        return Target(url, dify.headers("application/json" if endpoint.method != "GET" else None))

    def _form_type(self) -> str:
        """The Content-Type Dify gets: the gateway's own, for the boundary it checked."""
        boundary = boundary_of(self.request.headers.get("Content-Type", ""))
        if boundary is None:
            raise ApiError(400, "invalid_request", "Send the file as multipart/form-data with one valid boundary.")
        self._form = FormField(boundary, "user", self.dify_user)
        return self._form.content_type

    def body_limit(self) -> int:
        return self.ctx.settings.max_body_bytes if self.endpoint.multipart else self.ctx.settings.max_json_bytes

    def upstream_body(self, body: bytes | None, parsed: Any) -> bytes | None:
        if self.endpoint.method == "GET":
            return None
        if self.endpoint.multipart:  # a multipart body arrives streamed; this one had none
            raise ApiError(400, "invalid_request", "Send the file as multipart/form-data.")
        return self.with_user(parsed)

    def stream_prefix(self) -> bytes:
        return self._form.prefix if self._form is not None else b""

    def check_chunk(self, chunk: bytes) -> None:
        if self._form is not None:
            try:
                self._form.check(chunk)
            except ForbiddenField as exc:
                raise ApiError(400, "invalid_request", str(exc)) from None


@dataclasses.dataclass
class ChatRequest:
    """What the browser may ask: ``{"message", "conversationId"?, "inputs"?, "files"?, "stream"?}``
    (``query`` / ``conversation_id`` accepted too). Anything else, ``user`` included, is ignored."""

    query: str
    conversation_id: str
    inputs: dict[str, Any]
    files: list[dict[str, Any]]
    stream: bool
    auto_generate_name: bool | None

    @classmethod
    def parse(cls, body: Any) -> ChatRequest:
        if not isinstance(body, dict):
            raise ApiError(400, "invalid_json", "Send the message as a JSON object.")
        query = body.get("message", body.get("query"))
        if not isinstance(query, str) or not query.strip():
            raise ApiError(400, "invalid_param", "message is required and must be non-empty text.")
        conversation = body.get("conversationId", body.get("conversation_id"))
        inputs, files, stream = body.get("inputs", {}), body.get("files", []), body.get("stream", True)
        name = body.get("auto_generate_name")
        if not isinstance(inputs, dict):
            raise ApiError(400, "invalid_param", "inputs must be an object.")
        if not isinstance(files, list) or not all(isinstance(f, dict) for f in files):
            raise ApiError(400, "invalid_param", "files must be a list of objects.")
        if not isinstance(stream, bool):
            raise ApiError(400, "invalid_param", "stream must be true or false.")
        if name is not None and not isinstance(name, bool):
            raise ApiError(400, "invalid_param", "auto_generate_name must be true or false.")
        return cls(
            query=query,
            conversation_id="" if conversation in (None, "") else _uuid(conversation, "conversationId"),
            inputs=inputs,
            files=files,
            stream=stream,
            auto_generate_name=name,
        )

    def dify_body(self, user: str) -> bytes:
        body: dict[str, Any] = {
            "query": self.query,
            "inputs": self.inputs,
            "user": user,
            "response_mode": "streaming" if self.stream else "blocking",
            "conversation_id": self.conversation_id,
        }
        if self.files:
            body["files"] = self.files
        if self.auto_generate_name is not None:
            body["auto_generate_name"] = self.auto_generate_name
        return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()


class ChatHandler(DifyHandler):
    """``POST /api/chat``: one message, answered as Dify streams it (or whole, ``stream: false``).

    When the browser disconnects mid-stream, Dify is told to stop (``POST
    /chat-messages/{task_id}/stop``) so it stops generating and billing. The task id comes from
    the stream: if the browser leaves before the first event, the gateway keeps reading, unseen,
    until one names the task (up to ``UPSTREAM_RESPONSE_TIMEOUT``), then stops it.
    """

    SUPPORTED_METHODS = ("POST",)
    route = "chat"

    conversation_id: str | None = None
    task_id: str | None = None
    stream_error: str | None = None  # the code of an error event Dify sent mid-stream
    events = 0
    first_event_ms: float | None = None
    streaming = True
    stop_sent = False
    _abandoned: Relay | None = None
    _chat_logged = False

    async def target(self) -> Target:
        await self.authenticate()
        wait = await self.chat.limiter.take(self.dify_user)
        if wait is not None:
            self.outcome = "rate_limited"
            retry_after = {"Retry-After": self.chat.limiter.retry_after(wait)}
            raise ApiError(429, "rate_limited", "Too many messages; wait a moment and try again.", retry_after)
        dify = self.chat.dify
        return Target(dify.url("chat-messages"), dify.headers("application/json"))

    def body_limit(self) -> int:
        return self.ctx.settings.chat_max_body_bytes

    def upstream_body(self, body: bytes | None, parsed: Any) -> bytes:
        request = ChatRequest.parse(parsed)
        self.conversation_id = request.conversation_id or None
        self.streaming = request.stream
        return request.dify_body(self.dify_user)

    def on_events(self, data: bytes) -> None:
        for kind, payload in parse_events(data):
            self.events += 1
            if self.first_event_ms is None:
                self.first_event_ms = round(self.request.request_time() * 1000, 1)
            if kind != "message" or (self.task_id is not None and "error" not in payload):
                continue  # pings, and events once the ids are known, need no parsing
            try:
                event = json.loads(payload)
            except ValueError:
                continue
            if not isinstance(event, dict):
                continue
            if event.get("event") == "error":
                code = event.get("code")
                self.stream_error = code if isinstance(code, str) else "error"
            if self.task_id is None and _is_uuid(event.get("task_id")):
                self.task_id = event["task_id"]
                if isinstance(event.get("conversation_id"), str):
                    self.conversation_id = event["conversation_id"]
                if self._abandoned is not None:  # the browser already left: stop it now
                    self._stop(self._abandoned)

    def abandon(self, relay: Relay) -> None:
        if self.task_id is not None or not self.streaming:
            self._stop(relay)
        else:
            self._abandoned = relay
            relay.detach(self.ctx.settings.upstream_response_timeout)

    def _stop(self, relay: Relay) -> None:
        relay.cancel()
        if self.task_id is None or self.stop_sent:
            return
        self.stop_sent = True
        task = asyncio.ensure_future(self.chat.dify.stop(self.task_id, self.dify_user))
        _background.add(task)
        task.add_done_callback(_background.discard)

    def on_finish(self) -> None:
        super().on_finish()
        self._log_chat()

    def on_connection_close(self) -> None:
        super().on_connection_close()
        if self._relay is None:  # left before the request reached Dify
            self._log_chat()

    def _log_chat(self) -> None:
        if self._chat_logged or not self.dify_user:
            return
        self._chat_logged = True
        chat_log.info(
            "chat",
            extra={
                "request_id": self.request_id,
                "user": self.dify_user,
                "conversation_id": self.conversation_id,
                "task_id": self.task_id,
                "mode": "streaming" if self.streaming else "blocking",
                "dify_status": self._relay.result.status if self._relay is not None else None,
                "first_event_ms": self.first_event_ms,
                "events": self.events,
                "outcome": "dify_error" if self.stream_error and self.outcome == "ok" else self.outcome,
                "dify_error": self.stream_error,
                "stop_sent": self.stop_sent,
                "duration_ms": round(self.request.request_time() * 1000, 1),
            },
        )

    def shut_down(self) -> None:
        """The drain's deadline: the stream ends with a ``shutting_down`` error event, and Dify
        is told to stop the task (once its id is known), as when the browser leaves."""
        super().shut_down()  # first: the relay's ending is then shutting_down, not client_closed
        if self._relay is not None:
            self._stop(self._relay)
