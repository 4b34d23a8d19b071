"""``POST /api/chat`` end to end: a browser, a real gatehouse, and the fake Dify and Supabase.

Every test runs the gateway in-process on a real socket in front of `FakeDify` and `FakeSupabase`
(each on its own real socket) and checks what a user of the chat sees: the status and JSON of a
refused message, the SSE bytes of an answer and when they arrive, what Dify is asked (and told to
stop), the one ``gatehouse.chat`` log line per message, and that no secret leaks anywhere.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from tornado.httpclient import HTTPResponse

from settings import SupabaseSettings
from tests.conftest import LogCapture, RunningGateway, closed_port, wait_until
from tests.fakes.dify import (
    CONVERSATION_ID,
    TASK_ID,
    FakeDify,
    Hang,
    Reply,
    Reset,
    SlowStream,
    Stream,
    error_event,
    event,
    message,
    message_end,
    ping,
)
from tests.fakes.sse_scripts import RawClient
from tests.fakes.supabase import FakeSupabase

Fetch = Callable[..., Awaitable[HTTPResponse]]
StartChatGateway = Callable[..., RunningGateway]

USER = "2b1f6a0e-7c3d-4e5f-8a9b-0c1d2e3f4a5b"
OTHER_USER = "8e7d6c5b-4a39-4281-9f0e-d1c2b3a4f5e6"
MESSAGE_TEXT = "what is the launch code for project 7f3a9c?"  # must never reach a log line
CHAT_MESSAGES = "/chat-messages"


# -- helpers -------------------------------------------------------------------------------------


@pytest.fixture
def token(supabase: FakeSupabase) -> str:
    return supabase.mint(USER)


def port_of(gateway: RunningGateway) -> int:
    return int(gateway.url.rsplit(":", 1)[1])


async def chat(
    fetch: Fetch,
    gateway: RunningGateway,
    body: Any,
    token: str | None,
    *,
    raw: bytes | None = None,
    headers: dict[str, str] | None = None,
    **kwargs: Any,
) -> HTTPResponse:
    """``POST /api/chat`` with ``body`` as JSON (or ``raw`` bytes), as ``token``'s user."""
    all_headers = {"Content-Type": "application/json", **(headers or {})}
    if token is not None:
        all_headers["Authorization"] = f"Bearer {token}"
    data = raw if raw is not None else json.dumps(body).encode()
    return await fetch(f"{gateway.url}/api/chat", method="POST", body=data, headers=all_headers, **kwargs)


async def chat_streamed(
    fetch: Fetch, gateway: RunningGateway, body: Any, token: str
) -> tuple[HTTPResponse, list[tuple[float, bytes]]]:
    """`chat`, with the body read as it arrives: ``(time.monotonic(), bytes)`` per piece."""
    pieces: list[tuple[float, bytes]] = []
    response = await chat(
        fetch, gateway, body, token, streaming_callback=lambda data: pieces.append((time.monotonic(), data))
    )
    return response, pieces


def error_of(response: HTTPResponse) -> dict[str, Any]:
    """Gatehouse's JSON error body, asserting its shape."""
    assert response.headers["Content-Type"].startswith("application/json"), response.headers
    parsed: dict[str, Any] = json.loads(response.body)
    assert set(parsed) == {"error", "message"}, parsed
    assert isinstance(parsed["message"], str) and parsed["message"]
    return parsed


def chat_lines(logs: LogCapture) -> list[dict[str, Any]]:
    return logs.records("gatehouse.chat")


async def one_chat_line(logs: LogCapture) -> dict[str, Any]:
    """The single ``gatehouse.chat`` line (waiting briefly: it is written when the request ends)."""
    await wait_until(lambda: len(chat_lines(logs)) >= 1, 3)
    await asyncio.sleep(0.05)  # a duplicate would land now
    lines = chat_lines(logs)
    assert len(lines) == 1, lines
    return lines[0]


async def open_raw_chat(gateway: RunningGateway, token: str, body: Any) -> RawClient:
    """A browser on a raw socket that has sent a whole ``POST /api/chat`` and can hang up at will."""
    data = json.dumps(body).encode()
    headers = [f"Authorization: Bearer {token}", "Content-Type: application/json", f"Content-Length: {len(data)}"]
    client = await RawClient.open(port_of(gateway), "/api/chat", "theme=dark", method="POST", headers=headers)
    client.writer.write(data)
    await client.writer.drain()
    return client


def parse_gateway_error_event(data: bytes) -> dict[str, Any]:
    """The JSON of gatehouse's own ``event: error`` SSE event (``upstream/sse.py``)."""
    assert data.startswith(b"event: error\ndata: "), data
    assert data.endswith(b"\n\n") and data.count(b"\n") == 3, data
    parsed: dict[str, Any] = json.loads(data[len(b"event: error\ndata: ") : -2])
    return parsed


# -- validation --------------------------------------------------------------------------------------

INVALID_BODIES: list[tuple[str, bytes, str]] = [
    ("no message", b'{"inputs": {}}', "invalid_param"),
    ("empty message", b'{"message": ""}', "invalid_param"),
    ("whitespace message", b'{"message": " \\t\\n "}', "invalid_param"),
    ("numeric message", b'{"message": 42}', "invalid_param"),
    ("list message", b'{"message": ["hi"]}', "invalid_param"),
    ("null message", b'{"message": null}', "invalid_param"),
    ("conversationId not a UUID", b'{"message": "hi", "conversationId": "abc"}', "invalid_param"),
    ("conversationId a number", b'{"message": "hi", "conversationId": 12}', "invalid_param"),
    ("conversation_id not a UUID", b'{"query": "hi", "conversation_id": "../../etc"}', "invalid_param"),
    ("inputs a list", b'{"message": "hi", "inputs": []}', "invalid_param"),
    ("inputs a string", b'{"message": "hi", "inputs": "x"}', "invalid_param"),
    ("files an object", b'{"message": "hi", "files": {}}', "invalid_param"),
    ("files of strings", b'{"message": "hi", "files": ["a.png"]}', "invalid_param"),
    ("stream a string", b'{"message": "hi", "stream": "false"}', "invalid_param"),
    ("stream a number", b'{"message": "hi", "stream": 0}', "invalid_param"),
    ("not JSON", b"message=hi", "invalid_json"),
    ("truncated JSON", b'{"message": "hi"', "invalid_json"),
    ("a JSON array", b'["hi"]', "invalid_json"),
    ("a JSON string", b'"hi"', "invalid_json"),
    ("no body", b"", "invalid_json"),
]


@pytest.mark.gen_test(timeout=10)
@pytest.mark.parametrize(("case", "raw", "code"), INVALID_BODIES, ids=[case for case, _, _ in INVALID_BODIES])
async def test_an_invalid_message_is_a_400_and_never_reaches_dify(
    chat_gateway: RunningGateway, dify: FakeDify, fetch: Fetch, token: str, case: str, raw: bytes, code: str
) -> None:
    response = await chat(fetch, chat_gateway, None, token, raw=raw)

    assert response.code == 400, (case, response.body)
    assert error_of(response)["error"] == code
    assert dify.calls(CHAT_MESSAGES) == []


@pytest.mark.gen_test(timeout=10)
async def test_a_body_over_the_chat_limit_is_a_413_with_content_length(
    start_chat_gateway: StartChatGateway, dify: FakeDify, fetch: Fetch, token: str
) -> None:
    gateway = start_chat_gateway(chat_max_body_bytes=1000)
    dify.default_script = Stream([message_end()])

    fits = await chat(fetch, gateway, {"message": "x" * 900}, token)
    too_big = await chat(fetch, gateway, {"message": "x" * 1000}, token)

    assert fits.code == 200  # positive control: the limit is the chat limit, not something smaller
    assert too_big.code == 413
    assert error_of(too_big)["error"] == "payload_too_large"
    assert len(dify.calls(CHAT_MESSAGES)) == 1


@pytest.mark.gen_test(timeout=10)
async def test_a_chunked_body_over_the_chat_limit_is_a_413(
    start_chat_gateway: StartChatGateway, dify: FakeDify, fetch: Fetch, token: str
) -> None:
    gateway = start_chat_gateway(chat_max_body_bytes=1000)

    async def produce(write: Callable[[bytes], Awaitable[None]]) -> None:
        await write(b'{"message": "')
        await write(b"x" * 600)
        await write(b"x" * 600)
        await write(b'"}')

    response = await fetch(
        f"{gateway.url}/api/chat",
        method="POST",
        body_producer=produce,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )

    assert response.code == 413, response.body
    assert error_of(response)["error"] == "payload_too_large"
    assert dify.calls(CHAT_MESSAGES) == []


# -- what Dify is asked --------------------------------------------------------------------------


@pytest.mark.gen_test(timeout=10)
async def test_dify_gets_the_message_as_the_signed_in_user_with_the_gateway_key_and_nothing_of_the_browser(
    chat_gateway: RunningGateway, dify: FakeDify, fetch: Fetch, token: str
) -> None:
    dify.script = Stream([message_end()])
    browser_headers = {
        "Cookie": "theme=dark; sb-other-auth-token=not-a-session",
        "X-Forwarded-For": "203.0.113.7",
        "X-Forwarded-Host": "evil.example",
        "X-Forwarded-Proto": "http",
        "User-Agent": "BrowserUA/1.0 (gatehouse test)",
    }

    response = await chat(
        fetch,
        chat_gateway,
        {"message": "Hello there", "user": "someone-else", "conversationId": CONVERSATION_ID},
        token,
        headers=browser_headers,
    )

    assert response.code == 200
    [sent] = dify.calls(CHAT_MESSAGES)
    assert sent.method == "POST"
    assert sent.header("Authorization") == f"Bearer {dify.api_key}"
    assert sent.json == {
        "query": "Hello there",
        "inputs": {},
        "user": USER,  # the Supabase sub, not the browser's "user"
        "response_mode": "streaming",
        "conversation_id": CONVERSATION_ID,
    }
    assert "cookie" not in sent.headers
    assert [name for name in sent.headers if name.startswith("x-forwarded")] == []
    assert all("BrowserUA" not in value for value in sent.headers.values()), sent.headers
    assert all(token not in value for value in sent.headers.values())


@pytest.mark.gen_test(timeout=10)
async def test_query_and_conversation_id_spellings_inputs_files_and_blocking_mode_reach_dify(
    chat_gateway: RunningGateway, dify: FakeDify, fetch: Fetch, token: str
) -> None:
    dify.script = Stream([b'{"event": "message", "answer": "ok"}'], headers={"Content-Type": "application/json"})
    files = [{"type": "image", "transfer_method": "remote_url", "url": "https://example.com/a.png"}]

    response = await chat(
        fetch,
        chat_gateway,
        {
            "query": "Hi",
            "conversation_id": CONVERSATION_ID.upper(),
            "inputs": {"topic": "tests"},
            "files": files,
            "stream": False,
        },
        token,
    )

    assert response.code == 200
    [sent] = dify.calls(CHAT_MESSAGES)
    assert sent.json == {
        "query": "Hi",
        "inputs": {"topic": "tests"},
        "user": USER,
        "response_mode": "blocking",
        "conversation_id": CONVERSATION_ID,
        "files": files,
    }


@pytest.mark.gen_test(timeout=10)
async def test_a_new_conversation_sends_an_empty_conversation_id(
    chat_gateway: RunningGateway, dify: FakeDify, fetch: Fetch, token: str
) -> None:
    dify.scripts.extend([Stream([message_end()]), Stream([message_end()])])

    first = await chat(fetch, chat_gateway, {"message": "Hi"}, token)
    second = await chat(fetch, chat_gateway, {"message": "Hi", "conversationId": ""}, token)

    assert first.code == second.code == 200
    assert [r.json["conversation_id"] for r in dify.calls(CHAT_MESSAGES)] == ["", ""]


# -- sessions ------------------------------------------------------------------------------------


@pytest.mark.gen_test(timeout=10)
@pytest.mark.parametrize(
    "authorization",
    [None, "Bearer not-a-jwt", "Basic dXNlcjpwYXNz"],
    ids=["no session", "garbage token", "not bearer"],
)
async def test_without_a_valid_session_the_message_is_a_401_and_dify_is_not_called(
    chat_gateway: RunningGateway, dify: FakeDify, fetch: Fetch, authorization: str | None
) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}

    response = await chat(fetch, chat_gateway, {"message": "Hi"}, None, headers=headers)

    assert response.code == 401
    assert error_of(response)["error"] == "unauthorized"
    assert dify.requests == []


@pytest.mark.gen_test(timeout=10)
async def test_an_expired_session_is_a_401(
    chat_gateway: RunningGateway, dify: FakeDify, supabase: FakeSupabase, fetch: Fetch
) -> None:
    response = await chat(fetch, chat_gateway, {"message": "Hi"}, supabase.mint(USER, ttl=-120))

    assert response.code == 401
    assert error_of(response)["error"] == "unauthorized"
    assert dify.requests == []


# -- streaming ---------------------------------------------------------------------------------------


@pytest.mark.gen_test(timeout=10)
async def test_a_stream_has_sse_headers_and_is_never_compressed(
    chat_gateway: RunningGateway, dify: FakeDify, fetch: Fetch, token: str
) -> None:
    body = message("Hello, " * 200) + message_end()
    dify.script = Stream([body])

    response = await chat(fetch, chat_gateway, {"message": "Hi"}, token, headers={"Accept-Encoding": "gzip"})

    assert response.code == 200
    assert response.headers["Content-Type"].split(";")[0] == "text/event-stream"
    assert response.headers["Cache-Control"] == "no-cache, no-transform"
    assert response.headers["X-Accel-Buffering"] == "no"
    assert "Content-Encoding" not in response.headers
    assert response.body == body


def tricky_stream() -> list[bytes]:
    """Dify's wire quirks, one network read per item."""
    first = message("Hel", sse_id=1)
    spaced = message("caf\u00e9 \u2603 \U0001f600", sse_id=2)  # spaced JSON, \uXXXX escapes
    assert b"\\u00e9" in spaced and b'"event": "message"' in spaced
    compact = message("\u00fcber", compact=True)  # raw UTF-8
    crlf = event("message", crlf=True, sse_id=3, answer="crlf")
    end = message_end(sse_id=4)
    return [
        ping(),  # event: ping with no data line
        first[:25],  # split mid-JSON ...
        first[25:],
        spaced[:3],  # split mid-line, inside "data:" ...
        spaced[3:-1],  # ... and between the two line ends
        spaced[-1:] + ping() + compact,  # several events in one read
        crlf[:-3],  # CRLF split inside the blank line
        crlf[-3:] + ping(crlf=True),
        b"id: 9\n",  # an id line alone ...
        b'data: {"event": "agent_thought", "thought": "x"}\n\n',
        end,
    ]


@pytest.mark.gen_test(timeout=10)
async def test_the_browser_receives_exactly_the_bytes_dify_sent(
    chat_gateway: RunningGateway, dify: FakeDify, fetch: Fetch, token: str, logs: LogCapture
) -> None:
    reads = tricky_stream()
    dify.script = Stream([step for read in reads for step in (read, 0.02)])

    response, pieces = await chat_streamed(fetch, chat_gateway, {"message": "Hi"}, token)

    assert response.code == 200
    assert b"".join(data for _, data in pieces) == b"".join(reads)
    line = await one_chat_line(logs)
    assert line["events"] == 9  # 3 pings, 5 data events split or not, 1 message_end
    assert line["outcome"] == "ok"


@pytest.mark.gen_test(timeout=10)
async def test_events_arrive_one_by_one_as_dify_sends_them(
    chat_gateway: RunningGateway, dify: FakeDify, fetch: Fetch, token: str
) -> None:
    first, second, end = message("one"), message("two"), message_end()
    dify.script = Stream([first, 0.6, second, 0.3, end])

    response, pieces = await chat_streamed(fetch, chat_gateway, {"message": "Hi"}, token)

    assert response.code == 200
    assert b"".join(data for _, data in pieces) == first + second + end
    [request] = dify.calls(CHAT_MESSAGES)
    second_sent_at = request.at + 0.6  # Dify sleeps 0.6 s after the first event
    received, first_at = b"", None
    for at, data in pieces:
        received += data
        if first_at is None and received.startswith(first):
            first_at = at
    assert first_at is not None
    assert first_at < second_sent_at - 0.3, (first_at - request.at, [at - request.at for at, _ in pieces])
    before_second = b"".join(data for at, data in pieces if at < second_sent_at - 0.1)
    assert before_second == first  # all of the first event, nothing of the second yet


@pytest.mark.gen_test(timeout=10)
async def test_a_dify_error_event_mid_stream_reaches_the_browser_unchanged_and_ends_the_stream(
    chat_gateway: RunningGateway, dify: FakeDify, fetch: Fetch, token: str, logs: LogCapture
) -> None:
    partial = message("The answer is")
    failure = error_event("provider_quota_exceeded", "Your quota is used up.")
    dify.script = Stream([partial, 0.05, failure])
    started = time.monotonic()

    response = await chat(fetch, chat_gateway, {"message": "Hi"}, token)

    assert time.monotonic() - started < 3  # ended when Dify ended it, not by a timeout
    assert response.code == 200
    assert response.body == partial + failure
    line = await one_chat_line(logs)
    assert line["outcome"] == "dify_error"
    assert line["dify_error"] == "provider_quota_exceeded"
    assert line["events"] == 2


@pytest.mark.gen_test(timeout=10)
async def test_dify_resetting_mid_stream_ends_the_stream_with_an_error_event(
    chat_gateway: RunningGateway, dify: FakeDify, token: str
) -> None:
    partial = message("The answer is")
    dify.script = Reset([partial, 0.05, b'data: {"event": "mess'])
    client = await open_raw_chat(chat_gateway, token, {"message": "Hi"})
    await asyncio.wait_for(client.read_head(), 5)
    await asyncio.wait_for(client.read_to_end(), 5)

    assert client.status == 200  # the status had gone out with the first event
    assert client.body.startswith(partial)
    assert parse_gateway_error_event(client.body[len(partial) :])["error"] == "upstream_failed"
    assert not client.ended_cleanly  # never made to look like a complete answer


# -- blocking mode and Dify's errors ----------------------------------------------------------------------


@pytest.mark.gen_test(timeout=10)
async def test_blocking_mode_relays_difys_json_as_is(
    chat_gateway: RunningGateway, dify: FakeDify, fetch: Fetch, token: str
) -> None:
    answer = {
        "event": "message",
        "task_id": TASK_ID,
        "id": "b1c2d3e4-0000-4000-8000-000000000001",
        "message_id": "b1c2d3e4-0000-4000-8000-000000000001",
        "conversation_id": CONVERSATION_ID,
        "mode": "chat",
        "answer": "Bonjour \u00e0 vous",
        "metadata": {"usage": {"total_tokens": 3}},
        "created_at": 1_700_000_000,
    }
    raw = json.dumps(answer, ensure_ascii=False).encode()
    dify.script = Stream([raw], headers={"Content-Type": "application/json"})

    response = await chat(fetch, chat_gateway, {"message": "Hi", "stream": False}, token)

    assert response.code == 200
    assert response.headers["Content-Type"] == "application/json"
    assert response.body == raw
    assert dify.calls(CHAT_MESSAGES)[0].json["response_mode"] == "blocking"


@pytest.mark.gen_test(timeout=10)
async def test_blocking_mode_against_difys_own_answer(
    chat_gateway: RunningGateway, dify: FakeDify, fetch: Fetch, token: str
) -> None:
    response = await chat(fetch, chat_gateway, {"message": "Hi", "stream": False}, token)

    assert response.code == 200
    answer = json.loads(response.body)
    assert answer["event"] == "message" and answer["answer"]
    assert [c.user for c in dify.conversations.values()] == [USER]


DIFY_ERRORS: list[tuple[Reply, int, str, str | None]] = [
    (Reply(400, "invalid_param", "query is too long"), 400, "invalid_param", "query is too long"),
    (Reply(400, "provider_quota_exceeded", "Quota used up."), 400, "provider_quota_exceeded", "Quota used up."),
    (Reply(404), 404, "not_found", "Conversation Not Exists."),
    (Reply(401), 502, "upstream_auth_failed", None),
    (Reply(403), 502, "upstream_auth_failed", None),
    (Reply(500), 502, "bad_gateway", None),
    (Reply(503), 502, "bad_gateway", None),
    (Reply(502, body=b"<html>Bad Gateway</html>", headers={"Content-Type": "text/html"}), 502, "bad_gateway", None),
]


@pytest.mark.gen_test(timeout=10)
@pytest.mark.parametrize(
    ("script", "status", "code", "text"), DIFY_ERRORS, ids=[f"{s.status}-{s.code}" for s, *_ in DIFY_ERRORS]
)
async def test_difys_errors_before_the_stream_become_gatehouse_errors(
    chat_gateway: RunningGateway,
    dify: FakeDify,
    fetch: Fetch,
    token: str,
    logs: LogCapture,
    script: Reply,
    status: int,
    code: str,
    text: str | None,
) -> None:
    dify.script = script

    response = await chat(fetch, chat_gateway, {"message": "Hi"}, token)

    assert response.code == status
    error = error_of(response)
    assert error["error"] == code
    if text is not None:
        assert error["message"] == text
    assert "<html>" not in error["message"]
    assert (await one_chat_line(logs))["outcome"] == "dify_error"


@pytest.mark.gen_test(timeout=10)
async def test_difys_429_keeps_its_status_and_retry_after(
    chat_gateway: RunningGateway, dify: FakeDify, fetch: Fetch, token: str
) -> None:
    dify.script = Reply(429, retry_after=17)

    response = await chat(fetch, chat_gateway, {"message": "Hi"}, token)

    assert response.code == 429
    assert error_of(response)["error"] == "too_many_requests"
    assert response.headers.get("Retry-After") == "17", dict(response.headers)


@pytest.mark.gen_test(timeout=10)
async def test_a_dify_error_echoing_the_api_key_is_redacted(
    chat_gateway: RunningGateway, dify: FakeDify, fetch: Fetch, token: str, logs: LogCapture
) -> None:
    dify.scripts.extend(
        [
            Reply(400, "invalid_param", f"Bad header: Bearer {dify.api_key}"),
            Reply(401, "unauthorized", f"Access token {dify.api_key} is invalid"),
        ]
    )

    bad_request = await chat(fetch, chat_gateway, {"message": "Hi"}, token)
    refused = await chat(fetch, chat_gateway, {"message": "Hi"}, token)

    assert (bad_request.code, refused.code) == (400, 502)
    for response in (bad_request, refused):
        assert dify.api_key not in response.body.decode()
        assert "[redacted]" in error_of(response)["message"]
    assert dify.api_key not in logs.text


@pytest.mark.gen_test(timeout=10)
async def test_unreachable_dify_is_a_502(
    start_gateway: Callable[..., RunningGateway],
    dify: FakeDify,
    supabase_settings: Callable[..., SupabaseSettings],
    fetch: Fetch,
    token: str,
) -> None:
    gateway = start_gateway(
        None,
        dify_api_url=f"http://127.0.0.1:{closed_port()}/v1",
        dify_api_key=dify.api_key,
        supabase=supabase_settings(),
    )

    response = await chat(fetch, gateway, {"message": "Hi"}, token)

    assert response.code == 502
    assert error_of(response)["error"] == "bad_gateway"


@pytest.mark.gen_test(timeout=10)
async def test_dify_that_never_answers_is_a_504(
    start_chat_gateway: StartChatGateway, dify: FakeDify, fetch: Fetch, token: str
) -> None:
    gateway = start_chat_gateway(upstream_response_timeout=0.5)
    dify.script = Hang()
    started = time.monotonic()

    response = await chat(fetch, gateway, {"message": "Hi"}, token)

    assert response.code == 504
    assert error_of(response)["error"] == "gateway_timeout"
    assert 0.4 < time.monotonic() - started < 3
    await wait_until(lambda: bool(dify.disconnects), 2)
    assert dify.disconnects  # the gateway let go of Dify's connection too


@pytest.mark.gen_test(timeout=10)
async def test_dify_resetting_before_its_headers_is_a_502(
    chat_gateway: RunningGateway, dify: FakeDify, fetch: Fetch, token: str
) -> None:
    dify.script = Reset()

    response = await chat(fetch, chat_gateway, {"message": "Hi"}, token)

    assert response.code == 502
    assert error_of(response)["error"] == "bad_gateway"


# -- stopping Dify when the browser leaves ---------------------------------------------------------------


@pytest.mark.gen_test(timeout=10)
async def test_a_browser_leaving_mid_stream_stops_the_dify_task(
    chat_gateway: RunningGateway, dify: FakeDify, token: str, logs: LogCapture
) -> None:
    task_id = "0f1e2d3c-4b5a-4697-8879-6a5b4c3d2e1f"
    dify.script = SlowStream(task_id=task_id, interval=0.1)
    client = await open_raw_chat(chat_gateway, token, {"message": "Hi"})
    await asyncio.wait_for(client.read_head(), 5)
    assert client.status == 200
    for _ in range(2):
        assert task_id.encode() in (await asyncio.wait_for(client.read_piece(), 5) or b"")

    client.close()
    left_at = time.monotonic()
    await wait_until(lambda: bool(dify.stops) and bool(dify.disconnects), 2)

    assert [(stop.task_id, stop.user) for stop in dify.stops] == [(task_id, USER)]
    assert dify.stops[0].at - left_at < 1.0
    [stop_call] = dify.calls(f"/chat-messages/{task_id}/stop")
    assert stop_call.json == {"user": USER}
    assert stop_call.header("Authorization") == f"Bearer {dify.api_key}"
    assert dify.disconnects and dify.disconnects[0] - left_at < 1.0  # Dify's connection was closed
    line = await one_chat_line(logs)
    assert line["stop_sent"] is True
    assert line["outcome"] == "client_closed"
    assert line["task_id"] == task_id


@pytest.mark.gen_test(timeout=10)
async def test_a_browser_leaving_before_the_first_event_still_stops_the_task(
    chat_gateway: RunningGateway, dify: FakeDify, token: str, logs: LogCapture
) -> None:
    task_id = "1a2b3c4d-5e6f-4071-8293-a4b5c6d7e8f9"
    dify.script = SlowStream(task_id=task_id, hold=1.0, interval=0.1)
    client = await open_raw_chat(chat_gateway, token, {"message": "Hi"})
    await wait_until(lambda: bool(dify.calls(CHAT_MESSAGES)), 2)
    started = dify.calls(CHAT_MESSAGES)[0].at
    await asyncio.sleep(0.3)

    client.close()
    await asyncio.sleep(0.3)
    assert dify.stops == [] and dify.disconnects == []  # no task id yet: the gateway keeps reading
    await wait_until(lambda: bool(dify.stops) and bool(dify.disconnects), 3)

    assert [(stop.task_id, stop.user) for stop in dify.stops] == [(task_id, USER)]
    assert 0.9 < dify.stops[0].at - started < 2.0  # once the first event named the task
    assert dify.disconnects and dify.disconnects[0] - started < 2.0
    line = await one_chat_line(logs)
    assert line["stop_sent"] is True
    assert line["outcome"] == "client_closed"
    assert line["task_id"] == task_id


@pytest.mark.gen_test(timeout=10)
async def test_a_detached_relay_waits_without_spinning(
    start_chat_gateway: Callable[..., RunningGateway], dify: FakeDify, token: str
) -> None:
    """While the gateway reads on for the task id, its watchdog sleeps between checks. (It used to
    re-arm itself at once, once a heartbeat was due but could not be written: a busy loop.)"""
    gateway = start_chat_gateway(sse_heartbeat_interval=0.05)
    dify.script = SlowStream(task_id="1a2b3c4d-5e6f-4071-8293-a4b5c6d7e8f9", hold=2.5, interval=0.1, headers_first=True)
    client = await open_raw_chat(gateway, token, {"message": "Hi"})
    await wait_until(lambda: bool(dify.calls(CHAT_MESSAGES)), 2)
    client.close()
    await asyncio.sleep(0.3)  # detached now, heartbeats long overdue

    cpu, wall = time.process_time(), time.monotonic()
    await asyncio.sleep(1.0)
    cpu, wall = time.process_time() - cpu, time.monotonic() - wall
    assert dify.stops == []  # still waiting for the first event
    assert cpu < 0.3 * wall, f"{cpu:.2f} s of CPU in {wall:.2f} s of waiting"


@pytest.mark.gen_test(timeout=10)
async def test_a_browser_leaving_a_blocking_chat_closes_difys_connection_without_a_stop(
    chat_gateway: RunningGateway, dify: FakeDify, token: str, logs: LogCapture
) -> None:
    dify.script = Hang()
    client = await open_raw_chat(chat_gateway, token, {"message": "Hi", "stream": False})
    await wait_until(lambda: bool(dify.calls(CHAT_MESSAGES)), 2)
    await asyncio.sleep(0.3)

    client.close()
    left_at = time.monotonic()
    await wait_until(lambda: bool(dify.disconnects), 2)

    assert dify.disconnects and dify.disconnects[0] - left_at < 1.0
    await asyncio.sleep(0.2)
    assert dify.stops == []
    assert [r.path for r in dify.requests if r.path.endswith("/stop")] == []
    line = await one_chat_line(logs)
    assert line["stop_sent"] is False
    assert line["outcome"] == "client_closed"
    assert line["mode"] == "blocking"


# -- rate limit ----------------------------------------------------------------------------------------


@pytest.mark.gen_test(timeout=10)
async def test_the_fourth_message_in_a_minute_is_rate_limited_for_that_user_only(
    start_chat_gateway: StartChatGateway, dify: FakeDify, supabase: FakeSupabase, fetch: Fetch, token: str
) -> None:
    gateway = start_chat_gateway(chat_rate_per_minute=3)
    dify.default_script = Stream([message_end()])

    allowed = [await chat(fetch, gateway, {"message": "Hi"}, token) for _ in range(3)]
    limited = await chat(fetch, gateway, {"message": "Hi"}, token)
    other = await chat(fetch, gateway, {"message": "Hi"}, supabase.mint(OTHER_USER))

    assert [r.code for r in allowed] == [200, 200, 200]
    assert limited.code == 429
    assert error_of(limited)["error"] == "rate_limited"
    assert other.code == 200
    assert [r.json["user"] for r in dify.calls(CHAT_MESSAGES)] == [USER, USER, USER, OTHER_USER]
    retry_after = limited.headers.get("Retry-After", "")  # the browser must learn when to try again
    assert retry_after.isdigit() and int(retry_after) >= 1, dict(limited.headers)


@pytest.mark.gen_test(timeout=10)
async def test_a_rate_of_zero_turns_the_limit_off(
    start_chat_gateway: StartChatGateway, dify: FakeDify, fetch: Fetch, token: str
) -> None:
    gateway = start_chat_gateway(chat_rate_per_minute=0)
    dify.default_script = Stream([message_end()])

    responses = [await chat(fetch, gateway, {"message": "Hi"}, token) for _ in range(6)]

    assert [r.code for r in responses] == [200] * 6
    assert len(dify.calls(CHAT_MESSAGES)) == 6


# -- logging and secrets ------------------------------------------------------------------------------


@pytest.mark.gen_test(timeout=10)
async def test_each_chat_writes_one_log_line_with_its_story_and_without_the_message(
    chat_gateway: RunningGateway, dify: FakeDify, fetch: Fetch, token: str, logs: LogCapture
) -> None:
    dify.script = Stream([ping(), 0.05, message("Hel"), message("lo"), ping(), message_end()])

    response = await chat(fetch, chat_gateway, {"message": MESSAGE_TEXT, "conversationId": CONVERSATION_ID}, token)

    assert response.code == 200
    line = await one_chat_line(logs)
    assert line["user"] == USER
    assert line["conversation_id"] == CONVERSATION_ID
    assert line["task_id"] == TASK_ID
    assert line["dify_status"] == 200
    assert isinstance(line["first_event_ms"], int | float) and line["first_event_ms"] > 0
    assert line["events"] == 5  # pings included
    assert line["outcome"] == "ok"
    assert line["stop_sent"] is False
    assert MESSAGE_TEXT not in logs.text
    assert "launch code" not in logs.text


@pytest.mark.gen_test(timeout=10)
async def test_the_conversation_id_logged_for_a_new_conversation_is_difys(
    chat_gateway: RunningGateway, dify: FakeDify, fetch: Fetch, token: str, logs: LogCapture
) -> None:
    dify.script = Stream([message("Hi"), message_end()])

    await chat(fetch, chat_gateway, {"message": "Hi"}, token)

    assert (await one_chat_line(logs))["conversation_id"] == CONVERSATION_ID


@pytest.mark.gen_test(timeout=20)
async def test_neither_the_dify_key_nor_the_session_token_nor_the_message_ever_leak(
    start_chat_gateway: StartChatGateway, dify: FakeDify, fetch: Fetch, token: str, logs: LogCapture
) -> None:
    gateway = start_chat_gateway(chat_rate_per_minute=6)
    dify.scripts.extend(
        [
            Stream([ping(), message("Hi"), message_end()]),
            Stream([message("Hi"), error_event("completion_request_error", "The model failed.")]),
            Reply(401, "unauthorized", f"Access token {dify.api_key} is invalid"),
            Reply(500, "internal_server_error", f"Traceback ... api_key={dify.api_key}"),
            Reply(429, "too_many_requests", f"Slow down ({dify.api_key})", retry_after=3),
        ]
    )
    bodies: list[Any] = [
        {"message": MESSAGE_TEXT},  # streamed
        {"message": MESSAGE_TEXT},  # Dify's error event mid-stream
        {"message": MESSAGE_TEXT},  # Dify refused the key
        {"message": MESSAGE_TEXT},  # Dify failed
        {"message": MESSAGE_TEXT},  # Dify's own rate limit
        {"message": MESSAGE_TEXT, "conversationId": "nope"},  # invalid
        {"message": MESSAGE_TEXT},  # rate limited
    ]
    responses = [await chat(fetch, gateway, body, token) for body in bodies]
    responses.append(await chat(fetch, gateway, {"message": MESSAGE_TEXT}, token + "x"))  # bad token

    assert [r.code for r in responses] == [200, 200, 502, 502, 429, 400, 429, 401]
    await wait_until(lambda: len(chat_lines(logs)) >= 6, 3)
    for n, response in enumerate(responses):
        seen = response.body.decode() + "\n" + "\n".join(f"{k}: {v}" for k, v in response.headers.get_all())
        assert dify.api_key not in seen, n
        assert token not in seen, n
    assert dify.api_key not in logs.text
    assert token not in logs.text
    assert token.split(".")[2] not in logs.text  # not even the signature
    assert MESSAGE_TEXT not in logs.text
