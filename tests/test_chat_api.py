"""The chat front end's other routes (``/api/chat/...``, `handlers.chat.ENDPOINTS`), end to end.

A browser talks to a real gatehouse on a real socket, in front of `FakeDify` and `FakeSupabase`
(each on its own socket). Conversations and messages are made the way a user makes them, by
``POST /api/chat``; every test then checks what the user sees (status, JSON, files kept) and what
Dify was asked: always as the signed-in Supabase user, whatever ``user`` the browser claimed,
with the gateway's key and nothing of the browser's credentials or forwarding headers.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from tornado.httpclient import HTTPResponse

from settings import SupabaseSettings
from tests.conftest import RunningGateway, closed_port, wait_until
from tests.fakes.backend import payload
from tests.fakes.dify import FakeDify, SlowStream
from tests.fakes.raw import RawUpstream, Script
from tests.fakes.supabase import FakeSupabase

Fetch = Callable[..., Awaitable[HTTPResponse]]
Write = Callable[[bytes], Awaitable[None]]
StartGateway = Callable[..., RunningGateway]
Reader = asyncio.StreamReader
Writer = asyncio.StreamWriter

USER_A = "3f2a1b0c-9d8e-4f7a-b6c5-d4e3f2a1b0c9"
USER_B = "c7d6e5f4-a3b2-4c1d-8e9f-0a1b2c3d4e5f"
SOME_CONVERSATION = "0e1d2c3b-4a59-4687-a9b0-c1d2e3f4a5b6"
SOME_MESSAGE = "5a4b3c2d-1e0f-4a9b-8c7d-6e5f4a3b2c1d"
SOME_TASK = "9c8b7a6f-5e4d-4c3b-a291-807f6e5d4c3b"
BOUNDARY = "----gatehouseChatApiBoundary4f8e2a"
FORM_TYPE = f"multipart/form-data; boundary={BOUNDARY}"
DIFY_FORM_TYPE = (
    f'multipart/form-data; boundary="{BOUNDARY}"'  # the gateway writes its own, for the boundary it checked
)
MIB = 1 << 20


# -- helpers -------------------------------------------------------------------------------------


def bearer(supabase: FakeSupabase, user: str = USER_A) -> dict[str, str]:
    return {"Authorization": f"Bearer {supabase.mint(user)}"}


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def error_of(response: HTTPResponse, status: int, code: str) -> dict[str, Any]:
    """Gatehouse's JSON error body, asserting its status, shape and code."""
    assert response.code == status, (response.code, response.body)
    assert response.headers["Content-Type"].startswith("application/json"), response.headers
    parsed: dict[str, Any] = json.loads(response.body)
    assert set(parsed) == {"error", "message"}, parsed
    assert parsed["error"] == code, parsed
    assert isinstance(parsed["message"], str) and parsed["message"]
    return parsed


def json_of(response: HTTPResponse, status: int = 200) -> Any:
    assert response.code == status, (response.code, response.body)
    assert response.headers["Content-Type"].startswith("application/json"), response.headers
    return json.loads(response.body)


async def call(
    fetch: Fetch,
    gateway: RunningGateway,
    method: str,
    path: str,
    headers: dict[str, str],
    body: Any = None,
    **kwargs: Any,
) -> HTTPResponse:
    """``method path`` with ``body`` as JSON (``bytes`` as they are; ``None``: no body)."""
    if body is not None and not isinstance(body, bytes):
        body = json.dumps(body).encode()
        headers = {"Content-Type": "application/json", **headers}
    return await fetch(gateway.url + path, method=method, headers=headers, body=body, **kwargs)


async def send_message(
    fetch: Fetch, gateway: RunningGateway, headers: dict[str, str], text: str, conversation_id: str | None = None
) -> dict[str, Any]:
    """One message through ``POST /api/chat`` (``stream: false``): Dify's blocking answer."""
    body: dict[str, Any] = {"message": text, "stream": False}
    if conversation_id is not None:
        body["conversationId"] = conversation_id
    answer: dict[str, Any] = json_of(await call(fetch, gateway, "POST", "/api/chat", headers, body))
    assert answer["answer"], answer
    return answer


def api_calls(dify: FakeDify) -> list[Any]:
    """What Dify was asked, message sends (this file's setup) left out."""
    return [r for r in dify.requests if r.path != "/v1/chat-messages"]


def part(disposition: str, content: bytes, content_type: str | None = None) -> bytes:
    """One multipart part (headers and content) with its opening delimiter."""
    headers = f"--{BOUNDARY}\r\nContent-Disposition: {disposition}\r\n"
    if content_type is not None:
        headers += f"Content-Type: {content_type}\r\n"
    return headers.encode() + b"\r\n" + content + b"\r\n"


def form(*parts: bytes) -> bytes:
    return b"".join(parts) + f"--{BOUNDARY}--\r\n".encode()


def file_part(data: bytes, filename: str = "notes.pdf") -> bytes:
    return part(f'form-data; name="file"; filename="{filename}"', data, "application/pdf")


def gateway_user_part(user: str) -> bytes:
    """The part the gateway puts ahead of the browser's form (written out here, not imported)."""
    return f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="user"\r\n\r\n{user}\r\n'.encode()


def producer(data: bytes, chunk_size: int) -> Callable[[Write], Awaitable[None]]:
    """A ``body_producer``: Tornado's client then sends ``data`` chunked, ``chunk_size`` at a time."""

    async def produce(write: Write) -> None:
        for start in range(0, len(data), chunk_size):
            await write(data[start : start + chunk_size])

    return produce


async def upload(
    fetch: Fetch, gateway: RunningGateway, headers: dict[str, str], body: bytes, **kwargs: Any
) -> HTTPResponse:
    all_headers = {"Content-Type": FORM_TYPE, **headers}
    if "body_producer" in kwargs:
        return await fetch(f"{gateway.url}/api/chat/files", method="POST", headers=all_headers, **kwargs)
    return await fetch(f"{gateway.url}/api/chat/files", method="POST", headers=all_headers, body=body, **kwargs)


def answering(status: int, body: bytes, extra_headers: str = "") -> Script:
    """A raw Dify that answers every request with ``status`` and ``body`` (JSON), then closes."""

    async def script(reader: Reader, writer: Writer) -> None:
        head = (
            f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            f"Connection: close\r\n{extra_headers}\r\n"
        )
        writer.write(head.encode() + body)
        await writer.drain()

    return script


@pytest.fixture
def start_with_dify(
    start_gateway: StartGateway, supabase_settings: Callable[..., SupabaseSettings]
) -> Callable[..., RunningGateway]:
    """A chat-only gatehouse in front of the fake Supabase and any ``dify_url`` with ``dify_key``
    (``start_chat_gateway`` always passes the fake Dify's URL and key)."""

    def start(dify_url: str, dify_key: str, **overrides: Any) -> RunningGateway:
        return start_gateway(
            None, dify_api_url=dify_url, dify_api_key=dify_key, supabase=supabase_settings(), **overrides
        )

    return start


# Every route but ``POST /api/chat``: (method, path, body or None, Content-Type).
ROUTES: list[tuple[str, str, bytes | None, str | None]] = [
    ("GET", "/api/chat/conversations", None, None),
    ("GET", f"/api/chat/messages?conversation_id={SOME_CONVERSATION}", None, None),
    ("DELETE", f"/api/chat/conversations/{SOME_CONVERSATION}", None, None),
    ("POST", f"/api/chat/conversations/{SOME_CONVERSATION}/name", b'{"name": "x"}', "application/json"),
    ("POST", f"/api/chat/messages/{SOME_MESSAGE}/feedbacks", b'{"rating": "like"}', "application/json"),
    ("GET", f"/api/chat/messages/{SOME_MESSAGE}/suggested", None, None),
    ("POST", f"/api/chat/{SOME_TASK}/stop", b"{}", "application/json"),
    ("GET", "/api/chat/parameters", None, None),
    ("POST", "/api/chat/files", form(file_part(b"%PDF-1.4 tiny")), FORM_TYPE),
]
ROUTE_IDS = [f"{method} {path.split('?')[0]}" for method, path, _, _ in ROUTES]


async def call_route(
    fetch: Fetch, gateway: RunningGateway, route: tuple[str, str, bytes | None, str | None], headers: dict[str, str]
) -> HTTPResponse:
    method, path, body, content_type = route
    all_headers = {**headers, **({"Content-Type": content_type} if content_type else {})}
    return await fetch(gateway.url + path, method=method, headers=all_headers, body=body)


# -- only for a signed-in user --------------------------------------------------------------------


@pytest.mark.parametrize("credentials", ["none", "garbage", "expired", "cookie-garbage"])
@pytest.mark.parametrize("route", ROUTES, ids=ROUTE_IDS)
@pytest.mark.gen_test
async def test_every_route_is_401_without_a_valid_session_and_dify_is_not_called(
    route: tuple[str, str, bytes | None, str | None],
    credentials: str,
    chat_gateway: RunningGateway,
    dify: FakeDify,
    supabase: FakeSupabase,
    fetch: Fetch,
) -> None:
    headers = {
        "none": {},
        "garbage": {"Authorization": "Bearer not.a.jwt"},
        "expired": {"Authorization": f"Bearer {supabase.mint(USER_A, ttl=-3600)}"},
        "cookie-garbage": {"Cookie": "sb-127-auth-token=base64-bm90LWEtc2Vzc2lvbg"},
    }[credentials]

    response = await call_route(fetch, chat_gateway, route, headers)

    error_of(response, 401, "unauthorized")
    await asyncio.sleep(0.05)  # an upload would be on its way by now
    assert dify.requests == []


@pytest.mark.gen_test
async def test_a_cookie_session_works_and_its_unsafe_requests_must_come_from_our_pages(
    chat_gateway: RunningGateway, dify: FakeDify, supabase: FakeSupabase, fetch: Fetch
) -> None:
    cookies = supabase.ssr_cookie(supabase.session_json(supabase.mint(USER_A)))
    cookie = {"Cookie": "; ".join(f"{name}={value}" for name, value in cookies)}
    conversation = (await send_message(fetch, chat_gateway, bearer(supabase), "hello"))["conversation_id"]
    rename = f"/api/chat/conversations/{conversation}/name"

    listed = await call(fetch, chat_gateway, "GET", "/api/chat/conversations", cookie)
    cross_site = await call(
        fetch, chat_gateway, "POST", rename, {**cookie, "Sec-Fetch-Site": "cross-site"}, {"name": "pwned"}
    )
    evil_origin = await call(fetch, chat_gateway, "POST", rename, {**cookie, "Origin": "https://evil.test"}, {})
    same_site = await call(
        fetch, chat_gateway, "POST", rename, {**cookie, "Sec-Fetch-Site": "same-origin"}, {"name": "ok"}
    )

    assert [c["id"] for c in json_of(listed)["data"]] == [conversation]
    assert dify.calls("/conversations")[0].query["user"] == USER_A
    error_of(cross_site, 403, "csrf_rejected")
    error_of(evil_origin, 403, "csrf_rejected")
    assert json_of(same_site)["name"] == "ok"
    assert [r.json for r in dify.calls(rename.replace("/api/chat", ""))] == [{"name": "ok", "user": USER_A}]


# -- GET /api/chat/conversations ------------------------------------------------------------------


@pytest.mark.gen_test
async def test_conversations_lists_the_users_conversations_newest_first(
    chat_gateway: RunningGateway, dify: FakeDify, supabase: FakeSupabase, fetch: Fetch
) -> None:
    headers = bearer(supabase)
    ids = [(await send_message(fetch, chat_gateway, headers, f"topic {n}"))["conversation_id"] for n in range(3)]

    listed = json_of(await call(fetch, chat_gateway, "GET", "/api/chat/conversations", headers))

    assert [c["id"] for c in listed["data"]] == ids[::-1]
    assert [c["name"] for c in listed["data"]] == ["topic 2", "topic 1", "topic 0"]
    assert listed["has_more"] is False
    [asked] = dify.calls("/conversations")
    assert asked.method == "GET"
    assert asked.query == {"user": USER_A}


@pytest.mark.gen_test
async def test_conversations_passes_paging_on_and_replaces_the_browsers_user(
    chat_gateway: RunningGateway, dify: FakeDify, supabase: FakeSupabase, fetch: Fetch
) -> None:
    headers = bearer(supabase)
    ids = [(await send_message(fetch, chat_gateway, headers, f"topic {n}"))["conversation_id"] for n in range(3)]
    other = (await send_message(fetch, chat_gateway, bearer(supabase, USER_B), "b's secret"))["conversation_id"]

    path = f"/api/chat/conversations?last_id={ids[0]}&limit=1&sort_by=created_at&user={USER_B}&extra=1"
    page = json_of(await call(fetch, chat_gateway, "GET", path, headers))

    # Oldest first, after ids[0], one at a time: ids[1], and more after it; never user B's.
    assert [c["id"] for c in page["data"]] == [ids[1]]
    assert page["has_more"] is True
    assert other not in json.dumps(page)
    [asked] = dify.calls("/conversations")
    assert asked.query == {"user": USER_A, "last_id": ids[0], "limit": "1", "sort_by": "created_at"}


@pytest.mark.parametrize("query", ["last_id=not-a-uuid", "last_id=1", "last_id=..%2F..%2Fparameters"])
@pytest.mark.gen_test
async def test_conversations_with_a_last_id_that_is_not_a_uuid_is_400(
    query: str, chat_gateway: RunningGateway, dify: FakeDify, supabase: FakeSupabase, fetch: Fetch
) -> None:
    response = await call(fetch, chat_gateway, "GET", f"/api/chat/conversations?{query}", bearer(supabase))

    error_of(response, 400, "invalid_param")
    assert dify.requests == []


@pytest.mark.parametrize(
    "query,message",
    [("limit=1000", "limit must be between 1 and 100"), ("sort_by=name", "sort_by must be one of")],
)
@pytest.mark.gen_test
async def test_conversations_keeps_difys_own_400(
    query: str, message: str, chat_gateway: RunningGateway, supabase: FakeSupabase, fetch: Fetch
) -> None:
    response = await call(fetch, chat_gateway, "GET", f"/api/chat/conversations?{query}", bearer(supabase))

    assert error_of(response, 400, "invalid_param")["message"].startswith(message)


@pytest.mark.gen_test
async def test_one_users_conversations_are_never_listed_or_readable_for_another(
    chat_gateway: RunningGateway, dify: FakeDify, supabase: FakeSupabase, fetch: Fetch
) -> None:
    alice, bob = bearer(supabase, USER_A), bearer(supabase, USER_B)
    answer = await send_message(fetch, chat_gateway, alice, "alice's private topic")
    conversation, message_id = answer["conversation_id"], answer["message_id"]

    bob_list = json_of(await call(fetch, chat_gateway, "GET", f"/api/chat/conversations?user={USER_A}", bob))
    alice_list = json_of(await call(fetch, chat_gateway, "GET", "/api/chat/conversations", alice))
    bob_history = await call(
        fetch, chat_gateway, "GET", f"/api/chat/messages?conversation_id={conversation}&user={USER_A}", bob
    )
    bob_suggested = await call(fetch, chat_gateway, "GET", f"/api/chat/messages/{message_id}/suggested", bob)
    bob_feedback = await call(
        fetch, chat_gateway, "POST", f"/api/chat/messages/{message_id}/feedbacks", bob, {"rating": "dislike"}
    )
    bob_rename = await call(
        fetch, chat_gateway, "POST", f"/api/chat/conversations/{conversation}/name", bob, {"name": "mine"}
    )

    assert bob_list["data"] == []
    assert [c["id"] for c in alice_list["data"]] == [conversation]
    error_of(bob_history, 404, "not_found")
    error_of(bob_suggested, 404, "not_found")
    error_of(bob_feedback, 404, "not_found")
    error_of(bob_rename, 404, "not_found")
    assert dify.conversations[conversation].name == "alice's private topic"
    assert dify.messages[message_id].feedback is None


# -- GET /api/chat/messages -----------------------------------------------------------------------


@pytest.mark.parametrize("query", ["", "?conversation_id=", "?first_id=" + SOME_MESSAGE, "?conversationId=x"])
@pytest.mark.gen_test
async def test_messages_without_a_conversation_id_is_400(
    query: str, chat_gateway: RunningGateway, dify: FakeDify, supabase: FakeSupabase, fetch: Fetch
) -> None:
    response = await call(fetch, chat_gateway, "GET", f"/api/chat/messages{query}", bearer(supabase))

    assert "conversation_id" in error_of(response, 400, "invalid_param")["message"]
    assert dify.requests == []


@pytest.mark.parametrize(
    "query", ["conversation_id=abc", f"conversation_id={SOME_CONVERSATION}&first_id=nope", "conversation_id=%00"]
)
@pytest.mark.gen_test
async def test_messages_with_an_id_that_is_not_a_uuid_is_400(
    query: str, chat_gateway: RunningGateway, dify: FakeDify, supabase: FakeSupabase, fetch: Fetch
) -> None:
    response = await call(fetch, chat_gateway, "GET", f"/api/chat/messages?{query}", bearer(supabase))

    error_of(response, 400, "invalid_param")
    assert dify.requests == []


@pytest.mark.gen_test
async def test_messages_returns_the_history_of_a_conversation(
    chat_gateway: RunningGateway, dify: FakeDify, supabase: FakeSupabase, fetch: Fetch
) -> None:
    headers = bearer(supabase)
    first = await send_message(fetch, chat_gateway, headers, "first question")
    conversation = first["conversation_id"]
    second = await send_message(fetch, chat_gateway, headers, "second question", conversation)
    assert second["conversation_id"] == conversation

    history = json_of(
        await call(fetch, chat_gateway, "GET", f"/api/chat/messages?conversation_id={conversation}", headers)
    )
    page = json_of(
        await call(
            fetch,
            chat_gateway,
            "GET",
            f"/api/chat/messages?conversation_id={conversation}&first_id={second['message_id']}&limit=5",
            headers,
        )
    )

    assert [m["query"] for m in history["data"]] == ["first question", "second question"]
    assert [m["id"] for m in history["data"]] == [first["message_id"], second["message_id"]]
    assert [m["answer"] for m in history["data"]] == [first["answer"], second["answer"]]
    assert all(m["conversation_id"] == conversation for m in history["data"])
    assert [m["id"] for m in page["data"]] == [first["message_id"]]
    asked = dify.calls("/messages")
    assert [r.query for r in asked] == [
        {"user": USER_A, "conversation_id": conversation},
        {"user": USER_A, "conversation_id": conversation, "first_id": second["message_id"], "limit": "5"},
    ]


@pytest.mark.gen_test
async def test_messages_of_a_conversation_that_does_not_exist_is_difys_404(
    chat_gateway: RunningGateway, supabase: FakeSupabase, fetch: Fetch
) -> None:
    path = f"/api/chat/messages?conversation_id={SOME_CONVERSATION}"

    response = await call(fetch, chat_gateway, "GET", path, bearer(supabase))

    assert error_of(response, 404, "not_found")["message"] == "Conversation Not Exists."


# -- DELETE /api/chat/conversations/{id} ----------------------------------------------------------


@pytest.mark.gen_test
async def test_delete_conversation_is_relayed_as_the_user_and_answers_204(
    chat_gateway: RunningGateway, dify: FakeDify, supabase: FakeSupabase, fetch: Fetch
) -> None:
    headers = bearer(supabase)
    keep = (await send_message(fetch, chat_gateway, headers, "keep me"))["conversation_id"]
    doomed = (await send_message(fetch, chat_gateway, headers, "delete me"))["conversation_id"]

    response = await call(fetch, chat_gateway, "DELETE", f"/api/chat/conversations/{doomed}", headers)
    listed = json_of(await call(fetch, chat_gateway, "GET", "/api/chat/conversations", headers))
    again = await call(fetch, chat_gateway, "DELETE", f"/api/chat/conversations/{doomed}", headers)

    assert response.code == 204, response.body
    assert response.body == b""
    assert [c["id"] for c in listed["data"]] == [keep]
    assert doomed not in dify.conversations
    first = dify.calls(f"/conversations/{doomed}")[0]
    assert first.method == "DELETE"
    assert first.json == {"user": USER_A}
    assert first.header("Content-Type") == "application/json"
    assert first.query == {}
    error_of(again, 404, "not_found")


@pytest.mark.gen_test
async def test_delete_uses_the_session_user_even_when_the_browser_names_another(
    chat_gateway: RunningGateway, dify: FakeDify, supabase: FakeSupabase, fetch: Fetch
) -> None:
    alice, bob = bearer(supabase, USER_A), bearer(supabase, USER_B)
    conversation = (await send_message(fetch, chat_gateway, alice, "alice's"))["conversation_id"]

    by_bob = await call(
        fetch, chat_gateway, "DELETE", f"/api/chat/conversations/{conversation}?user={USER_A}", bob, {"user": USER_A}
    )

    assert error_of(by_bob, 404, "not_found")["message"] == "Conversation Not Exists."
    assert conversation in dify.conversations
    [asked] = dify.calls(f"/conversations/{conversation}")
    assert asked.json == {"user": USER_B}
    assert asked.query == {}


# -- POST /api/chat/conversations/{id}/name -------------------------------------------------------


@pytest.mark.gen_test
async def test_rename_sends_the_name_with_the_gateways_user(
    chat_gateway: RunningGateway, dify: FakeDify, supabase: FakeSupabase, fetch: Fetch
) -> None:
    headers = bearer(supabase)
    conversation = (await send_message(fetch, chat_gateway, headers, "untitled"))["conversation_id"]
    path = f"/api/chat/conversations/{conversation}/name"

    renamed = json_of(await call(fetch, chat_gateway, "POST", path, headers, {"name": "Trip plans", "user": USER_B}))
    listed = json_of(await call(fetch, chat_gateway, "GET", "/api/chat/conversations", headers))

    assert renamed["id"] == conversation
    assert renamed["name"] == "Trip plans"
    assert [c["name"] for c in listed["data"]] == ["Trip plans"]
    [asked] = dify.calls(f"/conversations/{conversation}/name")
    assert asked.method == "POST"
    assert asked.json == {"name": "Trip plans", "user": USER_A}


@pytest.mark.parametrize("body", [b"[1, 2]", b'"x"', b"{", b'{"name": NaN}'])
@pytest.mark.gen_test
async def test_rename_with_a_body_that_is_not_a_json_object_is_400(
    body: bytes, chat_gateway: RunningGateway, dify: FakeDify, supabase: FakeSupabase, fetch: Fetch
) -> None:
    path = f"/api/chat/conversations/{SOME_CONVERSATION}/name"

    response = await call(fetch, chat_gateway, "POST", path, {**bearer(supabase), "Content-Type": "text/plain"}, body)

    error_of(response, 400, "invalid_json")
    assert dify.requests == []


# -- POST /api/chat/messages/{id}/feedbacks, GET .../suggested --------------------------------------


@pytest.mark.gen_test
async def test_feedback_is_recorded_for_the_users_message(
    chat_gateway: RunningGateway, dify: FakeDify, supabase: FakeSupabase, fetch: Fetch
) -> None:
    headers = bearer(supabase)
    message_id = (await send_message(fetch, chat_gateway, headers, "rate me"))["message_id"]
    path = f"/api/chat/messages/{message_id}/feedbacks"

    liked = json_of(await call(fetch, chat_gateway, "POST", path, headers, {"rating": "like", "content": "spot on"}))

    assert liked == {"result": "success"}
    assert dify.messages[message_id].feedback == {"rating": "like"}
    assert dify.messages[message_id].feedback_content == "spot on"
    [asked] = dify.calls(f"/messages/{message_id}/feedbacks")
    assert asked.json == {"rating": "like", "content": "spot on", "user": USER_A}

    bad = await call(fetch, chat_gateway, "POST", path, headers, {"rating": "love"})
    assert "rating" in error_of(bad, 400, "invalid_param")["message"]
    assert dify.messages[message_id].feedback == {"rating": "like"}


@pytest.mark.gen_test
async def test_suggested_questions_for_the_users_message(
    chat_gateway: RunningGateway, dify: FakeDify, supabase: FakeSupabase, fetch: Fetch
) -> None:
    headers = bearer(supabase)
    message_id = (await send_message(fetch, chat_gateway, headers, "tell me about tides"))["message_id"]

    path = f"/api/chat/messages/{message_id}/suggested?user={USER_B}"
    suggested = json_of(await call(fetch, chat_gateway, "GET", path, headers))

    assert suggested["result"] == "success"
    assert suggested["data"][0] == "Can you say more about tell me about tides?"
    assert len(suggested["data"]) == 3
    [asked] = dify.calls(f"/messages/{message_id}/suggested")
    assert (asked.method, asked.query) == ("GET", {"user": USER_A})


# -- POST /api/chat/{task_id}/stop ----------------------------------------------------------------


@pytest.mark.gen_test
async def test_stop_is_sent_to_dify_as_the_user(
    chat_gateway: RunningGateway, dify: FakeDify, supabase: FakeSupabase, fetch: Fetch
) -> None:
    response = await call(
        fetch, chat_gateway, "POST", f"/api/chat/{SOME_TASK}/stop", bearer(supabase), {"user": USER_B}
    )

    assert json_of(response) == {"result": "success"}
    assert [(stop.task_id, stop.user) for stop in dify.stops] == [(SOME_TASK, USER_A)]
    [asked] = dify.requests
    assert (asked.method, asked.path, asked.json) == ("POST", f"/v1/chat-messages/{SOME_TASK}/stop", {"user": USER_A})


@pytest.mark.gen_test
async def test_stop_ends_the_users_own_stream_and_only_the_owner_can(
    chat_gateway: RunningGateway, dify: FakeDify, supabase: FakeSupabase, fetch: Fetch
) -> None:
    dify.script = SlowStream(task_id=SOME_TASK, interval=0.02)
    alice = bearer(supabase, USER_A)
    pieces: list[bytes] = []
    stream = asyncio.ensure_future(
        call(
            fetch,
            chat_gateway,
            "POST",
            "/api/chat",
            alice,
            {"message": "count forever"},
            streaming_callback=pieces.append,
        )
    )
    assert await wait_until(lambda: len(pieces) > 0, 5)

    by_bob = await call(fetch, chat_gateway, "POST", f"/api/chat/{SOME_TASK}/stop", bearer(supabase, USER_B), {})
    seen = len(pieces)
    await asyncio.sleep(0.2)
    assert not stream.done(), "someone else's stop ended the stream"
    assert len(pieces) > seen
    by_alice = await call(fetch, chat_gateway, "POST", f"/api/chat/{SOME_TASK}/stop", alice, {})
    response = await asyncio.wait_for(stream, 3)

    assert json_of(by_bob) == {"result": "success"}
    assert json_of(by_alice) == {"result": "success"}
    assert response.code == 200
    assert b'"event": "message_end"' in b"".join(pieces)[-2000:]
    assert [(stop.task_id, stop.user) for stop in dify.stops] == [(SOME_TASK, USER_B), (SOME_TASK, USER_A)]


# -- GET /api/chat/parameters ---------------------------------------------------------------------


@pytest.mark.gen_test
async def test_parameters_are_the_apps(
    chat_gateway: RunningGateway, dify: FakeDify, supabase: FakeSupabase, fetch: Fetch
) -> None:
    response = await call(fetch, chat_gateway, "GET", "/api/chat/parameters?user=someone", bearer(supabase))

    parameters = json_of(response)
    assert parameters["opening_statement"].startswith("Hi! I am gatehouse's demo Dify app")
    assert parameters["file_upload"]["enabled"] is True
    [asked] = dify.requests
    assert (asked.method, asked.path, asked.query) == ("GET", "/v1/parameters", {"user": USER_A})


# -- POST /api/chat/files -------------------------------------------------------------------------


@pytest.mark.parametrize("chunked", [False, True])
@pytest.mark.gen_test
async def test_upload_arrives_intact_with_the_gateways_user(
    chunked: bool, chat_gateway: RunningGateway, dify: FakeDify, supabase: FakeSupabase, fetch: Fetch
) -> None:
    data = payload(300_000, seed=21)
    body = form(part('form-data; name="purpose"', b"chat attachment"), file_part(data, "report.pdf"))
    kwargs: dict[str, Any] = {"body_producer": producer(body, 7_000)} if chunked else {}

    response = await upload(fetch, chat_gateway, bearer(supabase), body, **kwargs)

    record = json_of(response, 201)
    stored = dify.files[record["id"]]
    assert (stored.name, stored.size, stored.sha256) == ("report.pdf", len(data), sha256(data))
    assert stored.user == USER_A
    assert record["size"] == len(data)
    assert record["created_by"] == dify.dify.end_user_id(USER_A)
    [asked] = dify.calls("/files/upload")
    assert asked.header("Content-Type") == DIFY_FORM_TYPE
    assert asked.body_size == len(gateway_user_part(USER_A)) + len(body)
    if not chunked:
        assert asked.header("Content-Length") == str(len(gateway_user_part(USER_A)) + len(body))


@pytest.mark.gen_test(timeout=30)
async def test_a_several_mb_upload_arrives_intact(
    chat_gateway: RunningGateway, dify: FakeDify, supabase: FakeSupabase, fetch: Fetch
) -> None:
    data = payload(8 * MIB, seed=5)
    body = form(file_part(data, "big.pdf"))

    response = await upload(fetch, chat_gateway, bearer(supabase), body)

    stored = dify.files[json_of(response, 201)["id"]]
    assert (stored.size, stored.sha256, stored.user) == (len(data), sha256(data), USER_A)
    assert dify.calls("/files/upload")[0].header("Content-Length") == str(len(gateway_user_part(USER_A)) + len(body))


@pytest.mark.gen_test
async def test_an_upload_is_streamed_to_dify_as_it_arrives(
    start_with_dify: Callable[..., RunningGateway],
    upstreams: Callable[[Script], Awaitable[RawUpstream]],
    supabase: FakeSupabase,
    fetch: Fetch,
) -> None:
    body = form(file_part(payload(4 * MIB, seed=9)))
    half = len(body) // 2
    prefix = len(gateway_user_part(USER_A))
    raw: RawUpstream | None = None
    early: list[bool] = []

    async def dify_script(reader: Reader, writer: Writer) -> None:
        assert raw is not None
        await wait_until(lambda: raw is not None and raw.bytes_after_head >= prefix + len(body), 10)
        created = b'{"id": "f", "size": 1}'
        head = f"HTTP/1.1 201 Created\r\nContent-Type: application/json\r\nContent-Length: {len(created)}\r\n\r\n"
        writer.write(head.encode() + created)
        await writer.drain()

    async def produce(write: Write) -> None:
        await write(body[:half])
        early.append(await wait_until(lambda: raw is not None and raw.bytes_after_head >= prefix + half, 5))
        await write(body[half:])

    raw = await upstreams(dify_script)
    gateway = start_with_dify(raw.url + "/v1", "app-raw-key")

    response = await upload(
        fetch, gateway, {**bearer(supabase), "Content-Length": str(len(body))}, b"", body_producer=produce
    )

    assert early == [True], "Dify saw nothing of the upload until the browser had sent all of it"
    assert json_of(response, 201) == {"id": "f", "size": 1}
    assert raw.bytes_after_head == prefix + len(body)
    head = raw.heads[0].decode("latin-1").lower()
    assert f"content-length: {prefix + len(body)}\r\n" in head
    assert f"content-type: {DIFY_FORM_TYPE.lower()}\r\n" in head
    assert "transfer-encoding" not in head


@pytest.mark.parametrize(
    "user_part",
    [
        part('form-data; name="user"', USER_B.encode()),
        part("form-data; name=user", USER_B.encode()),
        part('form-data;  NAME="user" ', USER_B.encode()),  # spaces around "=" are refused as such
        part('form-data; filename="x.txt"; name="user"', USER_B.encode(), "text/plain"),
        part('form-data; name="user"', USER_B.encode()).replace(b"Content-Disposition", b"content-disposition"),
    ],
    ids=["quoted", "token", "spaced-upper", "after-filename", "lower-header"],
)
@pytest.mark.parametrize("where", ["first", "last"])
@pytest.mark.parametrize("chunk_size", [None, 1, 5])
@pytest.mark.gen_test
async def test_a_form_with_its_own_user_field_is_400_and_no_file_is_stored(
    user_part: bytes,
    where: str,
    chunk_size: int | None,
    chat_gateway: RunningGateway,
    dify: FakeDify,
    supabase: FakeSupabase,
    fetch: Fetch,
) -> None:
    file = file_part(payload(2_000, seed=3))
    body = form(user_part, file) if where == "first" else form(file, user_part)
    kwargs: dict[str, Any] = {} if chunk_size is None else {"body_producer": producer(body, chunk_size)}

    response = await upload(fetch, chat_gateway, bearer(supabase), body, **kwargs)

    assert "user" in error_of(response, 400, "invalid_request")["message"]
    await asyncio.sleep(0.05)
    assert dify.files == {}
    assert dify.calls("/files/upload") == []


@pytest.mark.gen_test
async def test_a_form_with_an_rfc2231_encoded_user_field_is_400(
    chat_gateway: RunningGateway, dify: FakeDify, supabase: FakeSupabase, fetch: Fetch
) -> None:
    """``name*=utf-8''user`` names the field ``user`` for multipart parsers that decode RFC 2231
    parameters (Tornado's, which the fake and demo Dify use, and Werkzeug's, which Dify uses): the
    upstream sees two ``user`` fields, and Tornado believes the browser's (its last)."""
    body = form(part("form-data; name*=utf-8''user", USER_B.encode()), file_part(b"%PDF-1.4 mine"))

    response = await upload(fetch, chat_gateway, bearer(supabase), body)

    await asyncio.sleep(0.05)
    assert [f.user for f in dify.files.values()] in ([], [USER_A]), "the file was stored as another user"
    error_of(response, 400, "invalid_request")


@pytest.mark.gen_test
async def test_parts_after_the_closing_delimiter_cannot_carry_a_user_field(
    chat_gateway: RunningGateway, dify: FakeDify, supabase: FakeSupabase, fetch: Fetch
) -> None:
    """A form that "ends", then goes on with a ``user`` part and ends again: a parser that reads to
    the last closing delimiter (Tornado's, which the fake and demo Dify use) sees that part."""
    smuggled = part('form-data; name="user"', USER_B.encode()) + f"--{BOUNDARY}--\r\n".encode()
    body = form(file_part(b"%PDF-1.4 mine")) + smuggled

    response = await upload(fetch, chat_gateway, bearer(supabase), body)

    await asyncio.sleep(0.05)
    assert USER_B not in [f.user for f in dify.files.values()], (response.code, "the file was stored as another user")


LF_USER_PART = f'\n--{BOUNDARY}\nContent-Disposition: form-data; name="user"\n\n{USER_B}'.encode()


@pytest.mark.gen_test
@pytest.mark.parametrize(
    ("case", "body"),
    [
        # Werkzeug (Dify) takes bare LF and CR as line breaks, and unfolds folded headers.
        ("bare LF line breaks", form(file_part(b"%PDF-1.4 mine")[:-2] + LF_USER_PART + b"\r\n")),
        ("a folded header", form(part('form-data;\r\n name="user"', USER_B.encode()), file_part(b"%PDF-1.4"))),
        # A preamble would run into the gateway's own part and change the user id Dify reads.
        ("a preamble", b"-suffix\r\n" + form(file_part(b"%PDF-1.4 mine"))),
    ],
)
async def test_forms_parsers_could_read_differently_are_400(
    case: str, body: bytes, chat_gateway: RunningGateway, dify: FakeDify, supabase: FakeSupabase, fetch: Fetch
) -> None:
    for chunk_size in (1, 7, len(body)):
        response = await upload(fetch, chat_gateway, bearer(supabase), body, body_producer=producer(body, chunk_size))
        error_of(response, 400, "invalid_request")
    assert dify.files == {}, case


@pytest.mark.gen_test
@pytest.mark.parametrize(
    "content_type",
    [
        f"multipart/form-data; boundary=fake; boundary*=utf-8''{BOUNDARY}",
        f"multipart/form-data; boundary={BOUNDARY}; boundary=other",
        "multipart/form-data; boundary=" + "b" * 71,
        "multipart/form-data; boundary=bad{char}",
    ],
)
async def test_content_types_parsers_could_read_differently_are_400(
    content_type: str, chat_gateway: RunningGateway, dify: FakeDify, supabase: FakeSupabase, fetch: Fetch
) -> None:
    body = form(file_part(b"%PDF-1.4 mine"))
    response = await upload(fetch, chat_gateway, {**bearer(supabase), "Content-Type": content_type}, body)
    error_of(response, 400, "invalid_request")
    assert dify.requests == []


@pytest.mark.gen_test
async def test_fields_that_only_look_like_user_pass(
    chat_gateway: RunningGateway, dify: FakeDify, supabase: FakeSupabase, fetch: Fetch
) -> None:
    # A file's content may say anything, and "username" or a file called "user" are other names.
    data = b'--not-the-boundary\r\nContent-Disposition: form-data; name="user"\r\n\r\n' + payload(1_000, seed=4)
    body = form(part('form-data; name="username"', b"ada"), file_part(data, "user"))

    response = await upload(fetch, chat_gateway, bearer(supabase), body, body_producer=producer(body, 3))

    stored = dify.files[json_of(response, 201)["id"]]
    assert (stored.name, stored.sha256, stored.user) == ("user", sha256(data), USER_A)


@pytest.mark.parametrize(
    "content_type,body",
    [
        ("application/json", b'{"file": "aGVsbG8="}'),
        ("text/plain", b"hello"),
        ("application/octet-stream", b"%PDF-1.4"),
        ("multipart/form-data", form(file_part(b"no boundary"))),
        ("multipart/mixed; boundary=" + BOUNDARY, form(file_part(b"not form-data"))),
        (FORM_TYPE, b""),
    ],
    ids=["json", "text", "octets", "no-boundary", "mixed", "empty"],
)
@pytest.mark.gen_test
async def test_an_upload_that_is_not_a_multipart_form_is_400(
    content_type: str, body: bytes, chat_gateway: RunningGateway, dify: FakeDify, supabase: FakeSupabase, fetch: Fetch
) -> None:
    response = await upload(fetch, chat_gateway, {**bearer(supabase), "Content-Type": content_type}, body)

    error_of(response, 400, "invalid_request")
    await asyncio.sleep(0.05)
    assert dify.requests == []


@pytest.mark.parametrize("chunked", [False, True])
@pytest.mark.gen_test
async def test_an_upload_over_max_body_bytes_is_413_and_no_file_is_stored(
    chunked: bool, start_chat_gateway: StartGateway, dify: FakeDify, supabase: FakeSupabase, fetch: Fetch
) -> None:
    gateway = start_chat_gateway(max_body_bytes=4_000)
    body = form(file_part(payload(6_000, seed=8)))
    kwargs: dict[str, Any] = {"body_producer": producer(body, 500)} if chunked else {}

    response = await upload(fetch, gateway, bearer(supabase), body, **kwargs)
    small = await upload(fetch, gateway, bearer(supabase), form(file_part(b"%PDF small")))

    error_of(response, 413, "payload_too_large")
    assert small.code == 201, small.body
    assert [f.size for f in dify.files.values()] == [len(b"%PDF small")]


# -- invalid ids, wrong methods -------------------------------------------------------------------


@pytest.mark.parametrize(
    "method,path",
    [
        ("DELETE", "/api/chat/conversations/not-a-uuid"),
        ("DELETE", "/api/chat/conversations/..%2Fparameters"),
        ("DELETE", f"/api/chat/conversations/{SOME_CONVERSATION}x"),
        ("POST", "/api/chat/conversations/123/name"),
        ("POST", "/api/chat/messages/abc/feedbacks"),
        ("GET", "/api/chat/messages/%2e%2e/suggested"),
        ("POST", "/api/chat/x/stop"),
        ("POST", "/api/chat/files/stop"),
    ],
)
@pytest.mark.gen_test
async def test_an_id_in_the_path_that_is_not_a_uuid_is_400_and_dify_is_not_called(
    method: str, path: str, chat_gateway: RunningGateway, dify: FakeDify, supabase: FakeSupabase, fetch: Fetch
) -> None:
    body = b"{}" if method == "POST" else None

    response = await call(fetch, chat_gateway, method, path, bearer(supabase), body)

    assert "UUID" in error_of(response, 400, "invalid_param")["message"]
    assert dify.requests == []


@pytest.mark.parametrize(
    "method,path,allowed",
    [
        ("POST", "/api/chat/conversations", "GET"),
        ("GET", f"/api/chat/conversations/{SOME_CONVERSATION}", "DELETE"),
        ("PUT", f"/api/chat/conversations/{SOME_CONVERSATION}/name", "POST"),
        ("DELETE", "/api/chat/messages", "GET"),
        ("GET", f"/api/chat/messages/{SOME_MESSAGE}/feedbacks", "POST"),
        ("POST", f"/api/chat/messages/{SOME_MESSAGE}/suggested", "GET"),
        ("GET", f"/api/chat/{SOME_TASK}/stop", "POST"),
        ("GET", "/api/chat/files", "POST"),
        ("PATCH", "/api/chat/parameters", "GET"),
    ],
)
@pytest.mark.gen_test
async def test_a_wrong_method_is_405_with_allow(
    method: str,
    path: str,
    allowed: str,
    chat_gateway: RunningGateway,
    dify: FakeDify,
    supabase: FakeSupabase,
    fetch: Fetch,
) -> None:
    body = b"{}" if method in ("POST", "PUT", "PATCH") else None

    response = await call(fetch, chat_gateway, method, path, bearer(supabase), body)

    error_of(response, 405, "method_not_allowed")
    assert response.headers["Allow"] == allowed
    assert dify.requests == []


# -- Dify's errors --------------------------------------------------------------------------------


@pytest.mark.parametrize("route", ROUTES, ids=ROUTE_IDS)
@pytest.mark.gen_test
async def test_difys_refusal_of_the_gateways_key_is_502_upstream_auth_failed(
    route: tuple[str, str, bytes | None, str | None],
    start_with_dify: Callable[..., RunningGateway],
    dify: FakeDify,
    supabase: FakeSupabase,
    fetch: Fetch,
) -> None:
    gateway = start_with_dify(dify.url, "app-wrong-key-5e1f")

    response = await call_route(fetch, gateway, route, bearer(supabase))

    error_of(response, 502, "upstream_auth_failed")
    assert "app-wrong-key-5e1f" not in response.body.decode()
    assert [r.header("Authorization") for r in dify.requests] == ["Bearer app-wrong-key-5e1f"]


@pytest.mark.parametrize(
    "status,body,code",
    [
        (401, b'{"code": "unauthorized", "message": "Access token is invalid", "status": 401}', "upstream_auth_failed"),
        (403, b'{"code": "forbidden", "message": "The app is disabled.", "status": 403}', "upstream_auth_failed"),
        (500, b'{"code": "internal_server_error", "message": "boom", "status": 500}', "bad_gateway"),
        (502, b"<html>Bad Gateway</html>", "bad_gateway"),
        (503, b'{"code": "service_unavailable", "message": "Service Unavailable", "status": 503}', "bad_gateway"),
        (404, b'{"code": "not_found", "message": "Conversation Not Exists.", "status": 404}', "not_found"),
        (400, b'{"code": "app_unavailable", "message": "App unavailable", "status": 400}', "app_unavailable"),
    ],
)
@pytest.mark.parametrize(
    "method,path",
    [
        ("GET", "/api/chat/conversations"),
        ("DELETE", f"/api/chat/conversations/{SOME_CONVERSATION}"),
        ("POST", f"/api/chat/conversations/{SOME_CONVERSATION}/name"),
        ("GET", "/api/chat/parameters"),
    ],
)
@pytest.mark.gen_test
async def test_difys_errors_are_mapped_like_chats(
    status: int,
    body: bytes,
    code: str,
    method: str,
    path: str,
    start_with_dify: Callable[..., RunningGateway],
    upstreams: Callable[[Script], Awaitable[RawUpstream]],
    supabase: FakeSupabase,
    fetch: Fetch,
) -> None:
    raw = await upstreams(answering(status, body))
    gateway = start_with_dify(raw.url + "/v1", "app-raw-key")

    response = await call(fetch, gateway, method, path, bearer(supabase), {"name": "x"} if method == "POST" else None)

    error_of(response, 502 if status in (401, 403) or status >= 500 else status, code)


@pytest.mark.gen_test
async def test_difys_429_keeps_its_retry_after(
    start_with_dify: Callable[..., RunningGateway],
    upstreams: Callable[[Script], Awaitable[RawUpstream]],
    supabase: FakeSupabase,
    fetch: Fetch,
) -> None:
    body = b'{"code": "too_many_requests", "message": "Slow down.", "status": 429}'
    raw = await upstreams(answering(429, body, "Retry-After: 7\r\n"))
    gateway = start_with_dify(raw.url + "/v1", "app-raw-key")

    response = await call(fetch, gateway, "GET", "/api/chat/conversations", bearer(supabase))

    assert error_of(response, 429, "too_many_requests")["message"] == "Slow down."
    assert response.headers["Retry-After"] == "7"


@pytest.mark.gen_test
async def test_dify_unreachable_is_502(
    start_with_dify: Callable[..., RunningGateway], supabase: FakeSupabase, fetch: Fetch
) -> None:
    gateway = start_with_dify(f"http://127.0.0.1:{closed_port()}/v1", "app-raw-key")

    response = await call(fetch, gateway, "GET", "/api/chat/parameters", bearer(supabase))

    error_of(response, 502, "bad_gateway")


# -- secrets and browser headers never cross ------------------------------------------------------

KEY = "app-very-secret-dify-key-7c1e"


@pytest.mark.parametrize("status", [400, 401, 404, 500])
@pytest.mark.gen_test
async def test_a_dify_error_that_echoes_the_key_is_redacted(
    status: int,
    start_with_dify: Callable[..., RunningGateway],
    upstreams: Callable[[Script], Awaitable[RawUpstream]],
    supabase: FakeSupabase,
    fetch: Fetch,
) -> None:
    echoed = json.dumps({"code": "invalid_param", "message": f"bad key Bearer {KEY} here", "status": status})
    raw = await upstreams(answering(status, echoed.encode(), f"X-Echo: {KEY}\r\n"))
    gateway = start_with_dify(raw.url + "/v1", KEY)

    response = await call(fetch, gateway, "GET", "/api/chat/conversations", bearer(supabase))

    assert response.code >= 400
    assert KEY not in response.body.decode()
    assert all(KEY not in value for _, value in response.headers.get_all())


@pytest.mark.gen_test
async def test_the_key_never_reaches_the_browser_and_browser_credentials_never_reach_dify(
    chat_gateway: RunningGateway, dify: FakeDify, supabase: FakeSupabase, fetch: Fetch
) -> None:
    token = supabase.mint(USER_A)
    browser = {
        "Authorization": f"Bearer {token}",
        "Cookie": f"sb-127-auth-token=base64-eyJ4IjoxfQ; theme=dark; next-auth.session-token={token}",
        "X-Forwarded-For": "203.0.113.9",
        "X-Forwarded-Host": "evil.example",
        "X-Forwarded-Proto": "http",
        "X-Real-IP": "203.0.113.9",
        "Forwarded": "for=203.0.113.9",
        "Origin": chat_gateway.url,
    }
    first = await send_message(fetch, chat_gateway, browser, "hello")
    conversation, message_id = first["conversation_id"], first["message_id"]
    responses = [
        await call(fetch, chat_gateway, "GET", "/api/chat/conversations", browser),
        await call(fetch, chat_gateway, "GET", f"/api/chat/messages?conversation_id={conversation}", browser),
        await call(fetch, chat_gateway, "POST", f"/api/chat/conversations/{conversation}/name", browser, {"name": "n"}),
        await call(
            fetch, chat_gateway, "POST", f"/api/chat/messages/{message_id}/feedbacks", browser, {"rating": None}
        ),
        await call(fetch, chat_gateway, "GET", f"/api/chat/messages/{message_id}/suggested", browser),
        await call(fetch, chat_gateway, "POST", f"/api/chat/{SOME_TASK}/stop", browser, {}),
        await call(fetch, chat_gateway, "GET", "/api/chat/parameters", browser),
        await upload(fetch, chat_gateway, browser, form(file_part(b"%PDF-1.4 x"))),
        await call(fetch, chat_gateway, "DELETE", f"/api/chat/conversations/{conversation}", browser),
        await call(fetch, chat_gateway, "DELETE", f"/api/chat/conversations/{conversation}", browser),  # 404
        await call(fetch, chat_gateway, "GET", "/api/chat/conversations?limit=0", browser),  # Dify's 400
        await call(fetch, chat_gateway, "PUT", "/api/chat/parameters", browser, {}),  # 405
    ]

    assert [r.code for r in responses] == [200, 200, 200, 200, 200, 200, 200, 201, 204, 404, 400, 405]
    for response in responses:
        assert dify.api_key not in (response.body or b"").decode()
        assert all(dify.api_key not in value for _, value in response.headers.get_all())
    assert len(dify.requests) == 12
    for received in dify.requests:
        assert received.header("Authorization") == f"Bearer {dify.api_key}", received.path
        leaked = [n for n in received.headers if n in ("cookie", "forwarded", "x-real-ip", "origin")]
        assert leaked == [], (received.path, leaked)
        assert [n for n in received.headers if n.startswith("x-forwarded")] == [], received.path
        assert all(token not in value and "203.0.113.9" not in value for value in received.headers.values())


# -- features that are off answer 404 --------------------------------------------------------------


@pytest.mark.parametrize(
    "method,path",
    [
        ("POST", "/api/chat"),
        ("GET", "/api/chat/conversations"),
        ("GET", "/api/chat/parameters"),
        ("POST", "/api/chat/files"),
        ("DELETE", f"/api/chat/conversations/{SOME_CONVERSATION}"),
        ("POST", f"/api/chat/{SOME_TASK}/stop"),
    ],
)
@pytest.mark.gen_test
async def test_a_backend_only_gateway_has_no_chat_routes(
    method: str, path: str, gateway: RunningGateway, fetch: Fetch, supabase: FakeSupabase
) -> None:
    response = await call(fetch, gateway, method, path, bearer(supabase), b"{}" if method == "POST" else None)

    error_of(response, 404, "not_found")


@pytest.mark.parametrize(
    "method,path",
    [
        ("GET", "/api/proxy/items"),
        ("POST", "/api/proxy/chat/extract"),
        ("GET", "/api/auth/session"),
        ("POST", "/api/auth/login"),
        ("POST", "/api/auth/logout"),
    ],
)
@pytest.mark.gen_test
async def test_a_chat_only_gateway_has_no_backend_routes(
    method: str, path: str, chat_gateway: RunningGateway, dify: FakeDify, fetch: Fetch, supabase: FakeSupabase
) -> None:
    response = await call(fetch, chat_gateway, method, path, bearer(supabase), b"{}" if method == "POST" else None)

    error_of(response, 404, "not_found")
    assert dify.requests == []
