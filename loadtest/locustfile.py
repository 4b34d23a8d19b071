"""Locust users for gatehouse's demo mode (``python server.py`` with no upstream configured).

``loadtest/run.py`` (``make load``) starts gatehouse and runs this file headless; it can also be
run by hand against a demo gatehouse started with ``CHAT_RATE_PER_MINUTE=0`` (every chat user is
the same demo Supabase user, so the default 20 messages a minute would answer 429)::

    SUPABASE_TOKEN=... locust -f loadtest/locustfile.py --host http://127.0.0.1:8000

Contract:

* `ProxyUser` signs in through gatehouse (``POST /api/auth/login``, demo/demo) and keeps the
  session cookie, then calls ``/api/proxy``: ``GET /me``, ``GET``/``POST /items`` (JSON),
  ``POST /upload`` (multipart, random bytes, checked against the SHA-256 the backend reports) and
  ``GET /completion?prompt=`` (Server-Sent Events, read to the end).
* `ChatUser` sends ``Authorization: Bearer $SUPABASE_TOKEN`` (the token the demo's banner prints
  in its ``export SUPABASE_TOKEN=`` line; required) and calls ``/api/chat``: ``POST /api/chat``
  (Dify's event stream, read to the end; one conversation per user, continued), ``POST
  /api/chat/files`` (multipart) and ``GET /api/chat/conversations``.
* Every request is marked failed unless its status *and* its content are what the demo answers:
  the JSON fields, the echoed data and hashes, and for streams every event up to the last one
  (``done`` for the completion, ``message_end`` for the chat) with nothing after it.
* For a stream, the response time locust records is the whole stream (request to last event)
  and the length is the bytes of its data fields, not the time to the headers.
* With ``LOADTEST_SUMMARY=<path>`` in the environment, locust writes the final totals there as
  JSON when it quits (what ``run.py`` reads): ``requests``, ``failures``, ``rps``,
  ``median_ms``, ``p99_ms``, ``exceptions`` (task exceptions), ``exit_code``, and the wall-clock
  ``started_at`` / ``stopped_at`` of the test (``time.time()``).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any, cast

from locust import HttpUser, between, events, task
from locust.clients import ResponseContextManager
from locust.env import Environment
from locust.event import EventHook

__all__ = ["ChatUser", "ProxyUser"]

DEMO_USER_ID = "demo-user"  # demo/backend.py DEMO_USER
UPLOAD_SIZES = (1024, 16 * 1024, 64 * 1024, 256 * 1024)
COMPLETION_TAIL = "This answer streams from the demo backend one word at a time."  # demo/backend.py
SUMMARY_ENV = "LOADTEST_SUMMARY"


class ContentError(Exception):
    """The response arrived but is not what the demo answers."""


def sse_events(response: ResponseContextManager) -> Iterator[tuple[str, str]]:
    """``(event, data)`` for each event of a ``text/event-stream`` response, read as it arrives;
    comments skipped, ``event`` defaulting to ``message``. A stream that stops inside an event
    raises `ContentError` (a relay must never make a truncated stream look complete)."""
    buffer = b""
    for chunk in response.iter_content(chunk_size=None):
        buffer = (buffer + chunk).replace(b"\r\n", b"\n")
        while b"\n\n" in buffer:
            block, buffer = buffer.split(b"\n\n", 1)
            event, data = "message", []
            for line in block.decode("utf-8").split("\n"):
                field, _, value = line.partition(":")
                value = value.removeprefix(" ")
                if field == "event":
                    event = value
                elif field == "data":
                    data.append(value)
            if data or event != "message":
                yield event, "\n".join(data)
    if buffer.strip():
        raise ContentError(f"stream ended inside an event: {buffer[:80]!r}")


def unexpected_status(response: ResponseContextManager, status: int) -> ContentError:
    if not response.status_code:  # no response at all: connection refused, reset, timed out
        return ContentError(f"no response, expected {status}: {getattr(response, 'error', None)}")
    return ContentError(f"status {response.status_code}, expected {status}: {response.text[:200]}")


def json_body(response: ResponseContextManager, status: int) -> Any:
    """The JSON body, after checking the status and the content type."""
    if response.status_code != status:
        raise unexpected_status(response, status)
    if not response.headers.get("Content-Type", "").startswith("application/json"):
        raise ContentError(f"Content-Type {response.headers.get('Content-Type')!r}")
    return response.json()


def expect(condition: bool, message: str) -> None:
    if not condition:
        raise ContentError(message)


def fail(response: ResponseContextManager, reason: str) -> None:
    """Mark the request failed, ``reason`` shown in locust's failure table."""
    response.failure(reason)  # type: ignore[no-untyped-call]  # locust 2.47 leaves it unannotated


def check(response: ResponseContextManager, status: int) -> Any:
    """Mark ``response`` failed (with the reason) unless it is JSON with ``status``; its body."""
    try:
        return json_body(response, status)
    except (ContentError, ValueError) as exc:
        fail(response, str(exc))
        return None


def read_stream(response: ResponseContextManager, started: float) -> list[tuple[str, str]]:
    """Read a whole event stream (status 200 and ``text/event-stream`` checked first), record
    its full duration and size as the request's, and return its events."""
    if response.status_code != 200:
        raise unexpected_status(response, 200)
    content_type = response.headers.get("Content-Type", "")
    expect(content_type.startswith("text/event-stream"), f"Content-Type {content_type!r}")
    received = list(sse_events(response))
    # What locust reports when the with-block ends: a dict at run time, typed as a Mapping.
    meta = cast(dict[str, Any], response.request_meta)
    meta["response_time"] = (time.perf_counter() - started) * 1000
    meta["response_length"] = sum(len(data) for _, data in received)
    return received


def random_file(size: int) -> tuple[str, bytes]:
    return f"load-{uuid.uuid4().hex[:8]}.bin", random.randbytes(size)


class ProxyUser(HttpUser):
    """A browser signed in through gatehouse's own login, using ``/api/proxy``."""

    weight = 3
    wait_time = between(0.5, 2.0)

    def on_start(self) -> None:
        with self.client.post(
            "/api/auth/login", json={"username": "demo", "password": "demo"}, catch_response=True
        ) as response:
            body = check(response, 200)
            if body is not None and body.get("user", {}).get("id") != DEMO_USER_ID:
                fail(response, f"login answered {body!r}")
            elif body is not None and set(body) != {"user"}:
                fail(response, f"login answered more than the user: {sorted(body)}")
            elif body is not None and not self.client.cookies:
                fail(response, "login set no session cookie")

    @task(4)
    def me(self) -> None:
        with self.client.get("/api/proxy/me", catch_response=True) as response:
            body = check(response, 200)
            if body is not None and body.get("user", {}).get("id") != DEMO_USER_ID:
                fail(response, f"/me answered {body!r}")

    @task(2)
    def list_items(self) -> None:
        with self.client.get("/api/proxy/items", catch_response=True) as response:
            body = check(response, 200)
            if body is not None and not isinstance(body.get("items"), list):
                fail(response, f"/items answered {str(body)[:200]}")

    @task(1)
    def create_item(self) -> None:
        data = {"title": f"load {uuid.uuid4()}", "n": random.randint(0, 1_000_000)}
        with self.client.post("/api/proxy/items", json=data, catch_response=True) as response:
            body = check(response, 201)
            if body is not None and (body.get("data") != data or not isinstance(body.get("id"), int)):
                fail(response, f"POST /items answered {body!r} for {data!r}")

    @task(1)
    def upload(self) -> None:
        name, data = random_file(random.choice(UPLOAD_SIZES))
        files = {"file": (name, data, "application/octet-stream")}
        with self.client.post("/api/proxy/upload", files=files, catch_response=True) as response:
            body = check(response, 200)
            want = [{"field": "file", "filename": name, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}]
            if body is not None and body.get("files") != want:
                fail(response, f"upload answered {str(body)[:200]}")

    @task(1)
    def completion(self) -> None:
        prompt = f"load-{random.randint(0, 1_000_000)}"
        expected = "".join(f"{word} " for word in f"You said: {prompt}. {COMPLETION_TAIL}".split())
        started = time.perf_counter()
        with self.client.get(
            f"/api/proxy/completion?prompt={prompt}",
            name="/api/proxy/completion?prompt=[...]",
            stream=True,
            catch_response=True,
        ) as response:
            try:
                received = read_stream(response, started)
                expect(bool(received) and received[-1][0] == "done", f"last event {received[-1:]!r}, expected done")
                expect(json.loads(received[-1][1]) == {"finish_reason": "stop"}, f"done event {received[-1][1]!r}")
                deltas = received[:-1]
                expect(all(name == "delta" for name, _ in deltas), "an event other than delta before done")
                text = "".join(json.loads(data)["text"] for _, data in deltas)
                expect(text == expected, f"completion text {text!r}")
            except (ContentError, ValueError, KeyError, OSError) as exc:
                fail(response, f"{type(exc).__name__}: {exc}")


class ChatUser(HttpUser):
    """A browser signed in with Supabase (Bearer token), using ``/api/chat``."""

    weight = 2
    wait_time = between(0.5, 2.0)

    def on_start(self) -> None:
        token = os.environ.get("SUPABASE_TOKEN", "")
        if not token:
            raise RuntimeError("SUPABASE_TOKEN is not set: take it from the demo banner's export line")
        self.client.headers["Authorization"] = f"Bearer {token}"
        self.conversation_id = ""

    @task(4)
    def chat(self) -> None:
        message = f"load test {random.randint(0, 1_000_000)}"
        payload: dict[str, Any] = {"message": message}
        if self.conversation_id:
            payload["conversationId"] = self.conversation_id
        started = time.perf_counter()
        with self.client.post("/api/chat", json=payload, stream=True, catch_response=True) as response:
            try:
                received = read_stream(response, started)
                data = [json.loads(body) for name, body in received if name == "message"]
                expect(bool(data), "no data events")
                last = data[-1]
                expect(last.get("event") == "message_end", f"last event {str(last)[:200]}, expected message_end")
                expect(received[-1][0] == "message", "an event after message_end")
                words = data[:-1]
                expect(all(e.get("event") == "message" for e in words), "an event other than message before the end")
                answer = "".join(e["answer"] for e in words)
                expect(answer.startswith(f"You said: {message}."), f"answer {answer[:80]!r}")
                ids = {(e.get("conversation_id"), e.get("message_id"), e.get("task_id")) for e in data}
                expect(len(ids) == 1, f"events of {len(ids)} messages in one stream")
                conversation = last["conversation_id"]
                expect(
                    not self.conversation_id or conversation == self.conversation_id,
                    f"conversation {conversation}, expected {self.conversation_id}",
                )
                self.conversation_id = conversation
            except (ContentError, ValueError, KeyError, TypeError, OSError) as exc:
                fail(response, f"{type(exc).__name__}: {exc}")

    @task(1)
    def upload(self) -> None:
        name, data = random_file(random.choice(UPLOAD_SIZES))
        files = {"file": (name, data, "application/octet-stream")}
        with self.client.post("/api/chat/files", files=files, catch_response=True) as response:
            body = check(response, 201)
            if body is not None and (body.get("name") != name or body.get("size") != len(data) or not body.get("id")):
                fail(response, f"chat file answered {str(body)[:200]}")

    @task(1)
    def conversations(self) -> None:
        with self.client.get("/api/chat/conversations?limit=5", catch_response=True) as response:
            body = check(response, 200)
            if body is not None and not isinstance(body.get("data"), list):
                fail(response, f"conversations answered {str(body)[:200]}")


# ---- the totals for run.py ---------------------------------------------------------------------
_run: dict[str, Any] = {}


def listen(hook: EventHook, handler: Callable[..., None]) -> None:
    hook.add_listener(handler)  # type: ignore[no-untyped-call]  # locust 2.47 leaves it unannotated


def _on_init(environment: Environment, **_: Any) -> None:
    _run["environment"] = environment


def _on_test_start(**_: Any) -> None:
    _run.setdefault("started_at", time.time())


def _on_test_stop(**_: Any) -> None:
    _run["stopped_at"] = time.time()


def _on_quit(exit_code: int, **_: Any) -> None:
    path, environment = os.environ.get(SUMMARY_ENV), _run.get("environment")
    if not path or not isinstance(environment, Environment):
        return
    total = environment.stats.total
    runner = environment.runner
    summary = {
        "requests": total.num_requests,
        "failures": total.num_failures,
        "rps": total.total_rps,
        "median_ms": total.median_response_time,
        "p99_ms": total.get_response_time_percentile(0.99) if total.num_requests else None,
        "exceptions": sum(row["count"] for row in runner.exceptions.values()) if runner else 0,
        "exit_code": exit_code,
        "started_at": _run.get("started_at"),
        "stopped_at": _run.get("stopped_at"),
    }
    with open(path, "w", encoding="utf-8") as out:
        json.dump(summary, out)


listen(events.init, _on_init)
listen(events.test_start, _on_test_start)
listen(events.test_stop, _on_test_stop)
listen(events.quit, _on_quit)
