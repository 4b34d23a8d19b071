"""W3C Trace Context: ``traceparent`` and ``tracestate`` reach the backend and Dify unchanged,
and the access line carries the trace id (``upstream/headers.py``, ``handlers/relaying.py``).

The backend gets the browser's headers, a trace context among them, whatever it holds. Dify
gets none of the browser's headers but a valid trace context (an invalid ``traceparent`` makes
``tracestate`` meaningless too, as the spec says). The access line's ``trace_id`` is the
32-hex middle field of a valid ``traceparent``, else null.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable

import pytest
from tornado.httpclient import HTTPResponse
from tornado.httputil import HTTPHeaders

from tests.conftest import LogCapture, RunningGateway
from tests.fakes.backend import FakeBackend
from tests.fakes.dify import FakeDify
from tests.fakes.supabase import FakeSupabase

Fetch = Callable[..., Awaitable[HTTPResponse]]
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"
TRACESTATE = ["congo=t61rcWkgMzE", "rojo=00f067aa0ba902b7"]
USER = "2b1f6a0e-7c3d-4e5f-8a9b-0c1d2e3f4a5b"
INVALID = [
    f"00-{'0' * 32}-00f067aa0ba902b7-01",  # an all-zero trace id
    f"00-{TRACE_ID}-{'0' * 16}-01",  # an all-zero parent id
    f"ff-{TRACE_ID}-00f067aa0ba902b7-01",  # version ff
    f"00-{TRACE_ID.upper()}-00f067aa0ba902b7-01",  # upper-case hex
    f"00-{TRACE_ID}-00f067aa0ba902b7-01-extra",  # version 00 has exactly four fields
    f"00-{TRACE_ID[:-1]}-00f067aa0ba902b7-01",  # a short trace id
    "not a traceparent",
]


def traced(traceparent: str, tracestate: list[str], **others: str) -> HTTPHeaders:
    headers = HTTPHeaders(others)
    headers.add("traceparent", traceparent)
    for value in tracestate:
        headers.add("tracestate", value)
    return headers


@pytest.mark.gen_test
async def test_the_trace_context_reaches_the_backend_unchanged_and_the_access_line_names_the_trace(
    gateway: RunningGateway,
    backend: FakeBackend,
    fetch: Fetch,
    session_cookie: Callable[..., str],
    logs: LogCapture,
) -> None:
    headers = traced(TRACEPARENT, TRACESTATE, Cookie=session_cookie())
    response = await fetch(gateway.url + "/api/proxy/echo", headers=headers)
    assert response.code == 200
    [seen] = backend.requests
    assert seen.headers["traceparent"] == [TRACEPARENT]
    assert seen.headers["tracestate"] == TRACESTATE  # each line, in order
    [line] = logs.records("gatehouse.access")
    assert line["trace_id"] == TRACE_ID


@pytest.mark.gen_test
async def test_the_trace_context_reaches_dify_unchanged_on_every_chat_route(
    chat_gateway: RunningGateway, dify: FakeDify, supabase: FakeSupabase, fetch: Fetch, logs: LogCapture
) -> None:
    auth = {"Authorization": f"Bearer {supabase.mint(USER)}"}
    message = await fetch(
        chat_gateway.url + "/api/chat",
        method="POST",
        body=json.dumps({"message": "hello"}),
        headers=traced(TRACEPARENT, TRACESTATE[:1], **auth, **{"Content-Type": "application/json"}),
    )
    listed = await fetch(
        chat_gateway.url + "/api/chat/conversations", headers=traced(TRACEPARENT, TRACESTATE[:1], **auth)
    )
    assert (message.code, listed.code) == (200, 200)
    for path in ("/chat-messages", "/conversations"):
        [seen] = dify.calls(path)
        assert (seen.headers["traceparent"], seen.headers["tracestate"]) == (TRACEPARENT, TRACESTATE[0])
    assert [line["trace_id"] for line in logs.records("gatehouse.access")] == [TRACE_ID, TRACE_ID]


@pytest.mark.gen_test
@pytest.mark.parametrize("traceparent", INVALID)
async def test_an_invalid_traceparent_names_no_trace_and_is_not_sent_to_dify(
    chat_gateway: RunningGateway,
    dify: FakeDify,
    supabase: FakeSupabase,
    fetch: Fetch,
    logs: LogCapture,
    traceparent: str,
) -> None:
    auth = {"Authorization": f"Bearer {supabase.mint(USER)}"}
    response = await fetch(
        chat_gateway.url + "/api/chat/conversations", headers=traced(traceparent, TRACESTATE[:1], **auth)
    )
    assert response.code == 200
    [seen] = dify.calls("/conversations")
    assert "traceparent" not in seen.headers and "tracestate" not in seen.headers
    assert [line["trace_id"] for line in logs.records("gatehouse.access")] == [None]


@pytest.mark.gen_test
async def test_a_later_versions_traceparent_is_a_trace_and_no_traceparent_is_none(
    gateway: RunningGateway, backend: FakeBackend, fetch: Fetch, session_cookie: Callable[..., str], logs: LogCapture
) -> None:
    later = f"cc-{TRACE_ID}-00f067aa0ba902b7-01-what-the-future-adds"
    await fetch(gateway.url + "/api/proxy/echo", headers=traced(later, [], Cookie=session_cookie()))
    await fetch(gateway.url + "/api/proxy/echo", headers={"Cookie": session_cookie()})
    assert backend.requests[0].headers["traceparent"] == [later]
    assert "traceparent" not in backend.requests[1].headers
    assert [line["trace_id"] for line in logs.records("gatehouse.access")] == [TRACE_ID, None]
