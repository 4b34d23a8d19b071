"""JSON request bodies that only just parse (issue 11, defects 2 and 3), on every route that
parses one: ``/api/proxy/*`` (forwarded byte for byte once valid), ``/api/chat`` and the Dify
routes (re-serialised with the user), and ``/api/auth/login``.

Before, a lone surrogate escape (``"\\ud800"``) parsed and then failed as UTF-8 on the way out,
and a body nested ~986 deep parsed and then failed to serialise again: both were 500s. Now both
are 400 ``invalid_json`` where bodies are parsed, and nothing reaches an upstream.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from tornado.httpclient import HTTPResponse

from handlers.json_body import MAX_JSON_DEPTH
from tests.conftest import RunningGateway
from tests.fakes.backend import FakeBackend
from tests.fakes.dify import FakeDify
from tests.fakes.supabase import FakeSupabase

Fetch = Callable[..., Any]
USER = "0b7c4d2e-5f6a-4b8c-9d0e-1f2a3b4c5d6e"
CONVERSATION = "5c1f0e3a-2b4d-4e6f-8a9b-0c1d2e3f4a5b"
RENAME = f"/api/chat/conversations/{CONVERSATION}/name"


def nested(depth: int) -> str:
    """A JSON value that is ``depth`` arrays deep."""
    return "[" * depth + "]" * depth


# Each: a JSON body template with one hole for a value, the route, and whether the route wants
# a Supabase session (else a next-auth one).
ROUTES: list[tuple[str, str, bool]] = [
    ("/api/proxy/items", '{"data": %s}', False),
    ("/api/auth/login", '{"username": %s}', False),
    ("/api/chat", '{"message": "hi", "inputs": {"x": %s}}', True),
    (RENAME, '{"name": %s}', True),
]
IDS = ["proxy", "login", "chat", "rename"]


@pytest.fixture
def post(
    backend: FakeBackend,
    start_gateway: Callable[..., RunningGateway],
    supabase_settings: Callable[..., Any],
    supabase: FakeSupabase,
    dify: FakeDify,
    session_cookie: Callable[..., str],
    fetch: Fetch,
) -> Callable[[str, bytes, bool], Any]:
    """``await post(route, body, supabase_session)``: the answer of a gateway that serves the
    backend and the chat."""
    gateway = start_gateway(backend.url, supabase=supabase_settings(), dify_api_url=dify.url, dify_api_key=dify.api_key)

    async def send(route: str, body: bytes, chat: bool) -> HTTPResponse:
        headers = {"Content-Type": "application/json", "Origin": gateway.url}
        headers |= {"Authorization": f"Bearer {supabase.mint(USER)}"} if chat else {"Cookie": session_cookie()}
        response: HTTPResponse = await fetch(gateway.url + route, method="POST", body=body, headers=headers)
        return response

    return send


def upstream_calls(backend: FakeBackend, dify: FakeDify) -> int:
    return len(backend.requests) + len(dify.requests)


def assert_invalid_json(response: HTTPResponse, mentions: str) -> None:
    assert response.code == 400, response.body
    answer = json.loads(response.body)
    assert answer["error"] == "invalid_json"
    assert mentions in answer["message"]


# Each: a JSON value that parses in Python but that no other reader (or Python writing it back)
# takes as it is, and what the refusal says. Escapes are sent as their six characters.
UNREADABLE = [
    ('"\\ud800"', "not valid Unicode"),  # a lone surrogate
    ('"\\uDFFF"', "not valid Unicode"),
    ('"a\\udc00b"', "not valid Unicode"),
    ('"\\ud83d"', "not valid Unicode"),  # the first half of a pair, alone
    ('"\\ude00\\ud83d"', "not valid Unicode"),  # a pair in the wrong order
    ("1e400", "not valid JSON"),  # read as infinity, written back as the non-JSON Infinity
    ("-1E+309", "not valid JSON"),
    ("NaN", "not valid JSON"),  # not JSON at all
    ("Infinity", "not valid JSON"),
    ("-Infinity", "not valid JSON"),
]


@pytest.mark.parametrize(("route", "template", "chat"), ROUTES, ids=IDS)
@pytest.mark.parametrize(("value", "mentions"), UNREADABLE, ids=[v for v, _ in UNREADABLE])
@pytest.mark.gen_test
async def test_json_only_python_reads_is_400_and_reaches_no_upstream(
    value: str,
    mentions: str,
    route: str,
    template: str,
    chat: bool,
    post: Callable[..., Any],
    backend: FakeBackend,
    dify: FakeDify,
) -> None:
    assert_invalid_json(await post(route, (template % value).encode(), chat), mentions)
    assert upstream_calls(backend, dify) == 0


@pytest.mark.parametrize(("route", "template", "chat"), ROUTES, ids=IDS)
@pytest.mark.gen_test
async def test_a_surrogate_pair_and_a_key_that_looks_like_one_pass(
    route: str, template: str, chat: bool, post: Callable[..., Any], backend: FakeBackend, dify: FakeDify
) -> None:
    """Control: an escaped pair is one astral character, and an escaped backslash before ``ud800``
    is plain text."""
    body = (template % '"\\ud83d\\ude00 and \\\\ud800"').encode()
    response = await post(route, body, chat)
    assert response.code != 400 and response.code < 500, response.body
    assert upstream_calls(backend, dify) == 1
    if route.startswith("/api/proxy/"):
        assert backend.requests[0].body == body  # byte for byte


@pytest.mark.parametrize(("route", "template", "chat"), ROUTES, ids=IDS)
@pytest.mark.parametrize("depth", [MAX_JSON_DEPTH, MAX_JSON_DEPTH + 1, 986, 990, 5000, 100_000])
@pytest.mark.gen_test
async def test_nesting_is_limited_to_64_levels(
    depth: int,
    route: str,
    template: str,
    chat: bool,
    post: Callable[..., Any],
    backend: FakeBackend,
    dify: FakeDify,
) -> None:
    """Depth counts the body's own object as level one: ``{"data": [[...]]}`` with 63 arrays is
    64 deep and passes; one more is refused, with a message that names the limit, never a 500
    (986 was the depth that parsed and then failed to serialise again)."""
    body = (template % nested(depth - 1)).encode()
    if chat and route == "/api/chat":
        body = (template % nested(depth - 2)).encode()  # the value sits two objects down
    response = await post(route, body, chat)
    if depth <= MAX_JSON_DEPTH:
        assert response.code != 400 and response.code < 500, response.body
        assert upstream_calls(backend, dify) == 1
        if route.startswith("/api/proxy/"):
            assert backend.requests[0].body == body
    else:
        assert_invalid_json(response, f"deeper than {MAX_JSON_DEPTH} levels")
        assert upstream_calls(backend, dify) == 0


@pytest.mark.gen_test
async def test_a_wide_body_with_many_brackets_but_shallow_passes(
    post: Callable[..., Any], backend: FakeBackend
) -> None:
    """Thousands of brackets, two levels deep, and brackets inside strings: the depth check
    counts nesting, not brackets."""
    body = json.dumps({"rows": [[i, "[[[{{{"] for i in range(5000)]}).encode()
    response = await post("/api/proxy/items", body, False)
    assert response.code == 200, response.body
    assert backend.requests[0].body == body
