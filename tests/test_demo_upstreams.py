"""The demo upstreams (demo/) under a newcomer's first load test, on real loopback sockets.

Each test serves the demo's own applications as ``demo/__init__.py`` does (an `HTTPServer` on a
free port of 127.0.0.1) and talks to them directly, as gatehouse does in demo mode: what they keep
stays within its byte budget, nothing they store breaks a later request, and their log lines carry
neither query strings nor multipart header text.
"""

from __future__ import annotations

import gc
import json
import sys
import tracemalloc
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest
from tornado.httpclient import HTTPResponse
from tornado.httpserver import HTTPServer
from tornado.testing import bind_unused_port
from tornado.web import Application

from demo.backend import ITEMS_BYTES, make_backend_app
from demo.dify import HISTORY_BYTES, DifyFake
from demo.supabase import SupabaseAuthFake, make_supabase_app
from tests.conftest import LogCapture

Fetch = Callable[..., Awaitable[HTTPResponse]]
DIFY_KEY = "app-demo-upstreams-test"
JSON = {"Content-Type": "application/json"}
# Bodies like the fuzzer's: lists nested 500 deep (1 KB of text, some 30 KB once parsed) and
# 32 KiB of bulk. 300 of them (10 MB of text) are well over both budgets.
BODIES = 300
HEAVY_BODY = b'{"user": "demo", "nested": ' + b"[" * 500 + b"]" * 500 + b', "text": "' + b"x" * 32 * 1024 + b'"}'
# Allocations a run leaves behind besides a history (the first connection's, caches').
SLACK = 1024 * 1024


@pytest.fixture
def serve(io_loop: Any) -> Iterator[Callable[[Application], str]]:
    """``serve(app)``: the base URL of ``app`` served on 127.0.0.1, stopped after the test."""
    servers: list[HTTPServer] = []

    def start(app: Application) -> str:
        sock, port = bind_unused_port()
        server = HTTPServer(app)
        server.add_sockets([sock])
        servers.append(server)
        return f"http://127.0.0.1:{port}"

    yield start
    for server in servers:
        server.stop()


def demo_backend(serve: Callable[[Application], str]) -> tuple[str, dict[str, str]]:
    """The demo backend's URL, and the ``Authorization`` header of a signed-in demo user."""
    app, tokens = make_backend_app()
    access, _ = tokens.issue("demo-user")
    return serve(app), {"Authorization": f"Bearer {access}"}


async def bytes_kept_by(send: Callable[[], Awaitable[HTTPResponse]], times: int) -> int:
    """Bytes still allocated after ``send()`` ran ``times`` times (tracemalloc, after a collection).
    One call comes first, unmeasured, so that first-use allocations are not counted."""
    started = not tracemalloc.is_tracing()
    if started:
        tracemalloc.start()
    try:
        await send()
        gc.collect()
        before, _ = tracemalloc.get_traced_memory()
        for _ in range(times):
            await send()
        gc.collect()
        after, _ = tracemalloc.get_traced_memory()
        return after - before
    finally:
        if started:
            tracemalloc.stop()


# --- 1. histories bounded in bytes -----------------------------------------------------------
@pytest.mark.gen_test(timeout=120)
async def test_the_demo_dify_keeps_its_requests_within_its_byte_budget(
    serve: Callable[[Application], str], fetch: Fetch
) -> None:
    dify = DifyFake(DIFY_KEY)
    url = f"{serve(dify.app)}/v1/chat-messages/some-task/stop"
    headers = {**JSON, "Authorization": f"Bearer {DIFY_KEY}"}

    kept = await bytes_kept_by(lambda: fetch(url, method="POST", body=HEAVY_BODY, headers=headers), BODIES)

    assert kept <= HISTORY_BYTES + SLACK, f"{BODIES} requests left {kept / 2**20:.1f} MiB behind"
    assert dify.requests.retained_bytes <= HISTORY_BYTES
    assert 0 < len(dify.requests) < BODIES  # the oldest were dropped
    assert [r.body_size for r in dify.requests][-1] == len(HEAVY_BODY)  # the newest is there


@pytest.mark.gen_test(timeout=120)
async def test_the_demo_backend_keeps_its_items_within_its_byte_budget(
    serve: Callable[[Application], str], fetch: Fetch
) -> None:
    url, auth = demo_backend(serve)
    items = f"{url}/items"

    kept = await bytes_kept_by(lambda: fetch(items, method="POST", body=HEAVY_BODY, headers={**auth, **JSON}), BODIES)

    assert kept <= ITEMS_BYTES + SLACK, f"{BODIES} items left {kept / 2**20:.1f} MiB behind"
    listed = await fetch(items, headers=auth)
    assert listed.code == 200
    assert len(listed.body) <= ITEMS_BYTES  # GET /items is the whole history
    assert HEAVY_BODY in listed.body  # the newest item is there, as it was sent


# --- 2. nothing stored breaks a later request ---------------------------------------------------
# Somewhere below Python's recursion limit lies a nesting depth that still parses but no longer
# serialises with the few levels an answer adds around it; where exactly depends on the stack the
# handler runs on. Every depth up to the limit is tried.
DEPTHS = range(sys.getrecursionlimit() // 2, sys.getrecursionlimit() + 1)


def nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


@pytest.mark.gen_test(timeout=120)
async def test_no_stored_item_breaks_get_items(serve: Callable[[Application], str], fetch: Fetch) -> None:
    url, auth = demo_backend(serve)
    items = f"{url}/items"
    answers = [await fetch(items, method="POST", body=nested(depth), headers={**auth, **JSON}) for depth in DEPTHS]

    listed = await fetch(items, headers=auth)
    assert listed.code == 200
    created = [a.body for a in answers if a.code == 201]
    assert created and created[-1] in listed.body  # the deepest item stored comes back as it was sent
    refused = [json.loads(a.body)["error"] for a in answers if a.code != 201]
    assert set(refused) <= {"invalid_json"}  # too deep to parse: a 400, not a 500


@pytest.mark.gen_test(timeout=120)
async def test_no_stored_chat_input_breaks_the_conversation_list(
    serve: Callable[[Application], str], fetch: Fetch
) -> None:
    base = f"{serve(DifyFake(DIFY_KEY).app)}/v1"
    headers = {**JSON, "Authorization": f"Bearer {DIFY_KEY}"}
    codes = []
    for depth in DEPTHS:
        body = b'{"query": "hi", "user": "demo", "inputs": {"deep": ' + nested(depth) + b"}}"
        codes.append((await fetch(f"{base}/chat-messages", method="POST", body=body, headers=headers)).code)

    listed = await fetch(f"{base}/conversations?user=demo", headers=headers)
    assert listed.code == 200
    assert set(codes) <= {200, 400}  # refused when too deep: a 400, not a 500


# --- 3. logs without query strings or multipart header text --------------------------------------
QUERY_SECRET = "qs-secret-5b0e9d"
HEADER_SECRET = "hdr-secret-3c71aa"
# A part header with a control character in its value: Tornado's parser refuses it, quoting it.
MALFORMED_MULTIPART = (
    b"--b\r\n"
    b'Content-Disposition: form-data; name="file"; filename="a.txt"\r\n'
    b"X-Note: " + HEADER_SECRET.encode() + b"\x01\r\n"
    b"\r\n"
    b"hello\r\n"
    b"--b--\r\n"
)


@pytest.mark.gen_test
async def test_demo_logs_carry_the_path_only(
    serve: Callable[[Application], str], fetch: Fetch, logs: LogCapture
) -> None:
    backend, auth = demo_backend(serve)
    dify = serve(DifyFake(DIFY_KEY).app)
    supabase = serve(make_supabase_app(SupabaseAuthFake(anon_key="demo-anon")))
    targets = [
        (f"{backend}/upload", auth),
        (f"{backend}/nowhere", auth),
        (f"{dify}/v1/files/upload", {"Authorization": f"Bearer {DIFY_KEY}"}),
        (f"{dify}/v1/nowhere", {"Authorization": f"Bearer {DIFY_KEY}"}),
        (f"{supabase}/auth/v1/token", {"apikey": "demo-anon"}),
        (f"{supabase}/nowhere", {}),
    ]
    multipart = {"Content-Type": "multipart/form-data; boundary=b"}
    for url, headers in targets:
        refused = await fetch(
            f"{url}?access_token={QUERY_SECRET}",
            method="POST",
            body=MALFORMED_MULTIPART,
            headers={**headers, **multipart},
        )
        assert refused.code == 400
        answered = await fetch(f"{url}?access_token={QUERY_SECRET}", headers=headers)
        assert answered.code < 500

    assert logs.lines, "the refusals are logged"
    assert QUERY_SECRET not in logs.text
    assert HEADER_SECRET not in logs.text
    assert any("400 POST /upload" in record["message"] for record in logs.records())
