"""Property-based: JSON bodies of every shape (tests/fuzz_strategies.py `json_bodies`,
`chat_objects`) to every route that reads JSON.

Deep nesting (to 1,000 levels and far past), sizes about the limits, lone and paired surrogate
escapes, duplicate keys, ``NaN``/``Infinity``, bytes that are not UTF-8, BOMs and other
encodings. For each: the answer is sound (`assert_sound`); what an upstream receives is valid
JSON as gatehouse promises it (the proxy and login: the very bytes sent; Dify: the gateway's
``user``, only the fields it allows); a body refused is refused before any upstream sees it.
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from auth.nextauth import NextAuthV4Codec
from tests.conftest import ACCESS_TOKEN, REFRESH_TOKEN, SECRET
from tests.fakes.backend import Recorded
from tests.fuzz_gateway import BACKEND_BASE, SUPABASE_USER_ID, Exchange, assert_sound, gateway
from tests.fuzz_strategies import chat_objects, examples, json_bodies

SESSION = NextAuthV4Codec(SECRET).encode(
    {"sub": "user-1", "access_token": ACCESS_TOKEN, "refresh_token": REFRESH_TOKEN}
)
CHAT_FIELDS = {"query", "inputs", "user", "response_mode", "conversation_id", "files", "auto_generate_name"}
MAX_JSON = 1024 * 1024
DEPTH_LIMIT = 64  # the depth gatehouse promises to accept (its parser may refuse anything deeper)


def strict(body: bytes) -> Any:
    """RFC 8259 JSON in UTF-8 (no BOM, no NaN/Infinity), parsed apart from gatehouse's own
    parser: the oracle for what may be forwarded. ValueError when it is not."""

    def constant(name: str) -> None:
        raise ValueError(name)

    return json.loads(body.decode("utf-8"), parse_constant=constant, parse_float=_out_of_range)


class _Overflow(float):
    """A number no double holds (``1e400``): RFC 8259 lets parsers refuse it."""


def _out_of_range(text: str) -> float:
    value = float(text)
    return _Overflow(value) if math.isinf(value) else value


def overflows(value: Any) -> bool:
    if isinstance(value, _Overflow):
        return True
    if isinstance(value, dict):
        return any(overflows(v) for v in value.values())
    return isinstance(value, list) and any(overflows(v) for v in value)


def depth(body: bytes) -> int:
    deepest = level = 0
    in_string = escaped = False
    for byte in body:
        if in_string:
            escaped, in_string = (False, True) if escaped else (byte == 0x5C, byte != 0x22)
        elif byte == 0x22:
            in_string = True
        elif byte in b"[{":
            level += 1
            deepest = max(deepest, level)
        elif byte in b"]}":
            level -= 1
    return deepest


def lone_surrogates(value: Any) -> bool:
    if isinstance(value, str):
        return any(0xD800 <= ord(c) <= 0xDFFF for c in value)
    if isinstance(value, dict):
        return any(lone_surrogates(k) or lone_surrogates(v) for k, v in value.items())
    return isinstance(value, list) and any(lone_surrogates(v) for v in value)


def valid(body: bytes) -> bool | None:
    """Whether gatehouse must accept ``body`` as JSON: None when it may go either way (deeper
    than `DEPTH_LIMIT`, where parsers' limits differ; text that is not Unicode, a lone
    surrogate escape, which RFC 8259 allows but says parsers may treat as they please; a number
    beyond a double's range, which RFC 8259 lets parsers refuse; no body at all, which routes
    may take for an empty object)."""
    if not body:
        return None
    try:
        strict(body)  # valid RFC 8259 JSON at all (raises if not)
    except (ValueError, RecursionError):
        return False if depth(body) <= DEPTH_LIMIT else None
    # Walked with every member kept: a duplicate key must not hide a value ({"a": 1e999, "a": 0}).
    members = every_member(body)
    if depth(body) > DEPTH_LIMIT or lone_surrogates(members) or overflows(members):
        return None
    return True


def every_member(body: bytes) -> Any:
    """``body`` parsed with each object as a list of all its keys and values, duplicates kept."""
    return json.loads(
        body.decode("utf-8"),
        object_pairs_hook=lambda pairs: [item for pair in pairs for item in pair],
        parse_float=_out_of_range,
    )


def same_body(seen: Recorded, body: bytes) -> bool:
    # The fake backend keeps only the first megabyte of a body, and a digest of all of it.
    return seen.body_size == len(body) and seen.body_sha256 == hashlib.sha256(body).hexdigest()


def assert_refused_cleanly(ex: Exchange) -> None:
    assert ex.answer is not None
    error = ex.answer.error()
    assert error is not None and error["error"] in ("invalid_json", "payload_too_large"), ex.describe()
    assert not ex.proxied() and not ex.dify, ex.describe()


@examples(300)
@given(
    body=json_bodies(),
    content_type=st.sampled_from(["application/json", "application/json; charset=utf-8", "application/vnd.api+json"]),
)
def test_json_to_the_proxy_is_forwarded_byte_for_byte_or_refused(body: bytes, content_type: str) -> None:
    gw = gateway()
    headers = [("Cookie", f"next-auth.session-token={SESSION}"), ("Content-Type", content_type)]
    ex = gw.exchange("POST", "/api/proxy/items", headers, body)
    assert_sound(gw, ex, tokens=[ACCESS_TOKEN])
    must = valid(body) if 0 < len(body) <= MAX_JSON else None  # an empty body is not checked
    proxied = ex.proxied()
    if proxied:
        assert must is not False and same_body(proxied[0], body), "forwarded, and not as sent" + ex.describe()
    elif must:
        raise AssertionError("valid JSON was not forwarded" + ex.describe())
    if must is False or len(body) > MAX_JSON:
        assert_refused_cleanly(ex)


@examples(300)
@given(body=st.one_of(chat_objects().flatmap(lambda v: json_bodies(st.just(v))), json_bodies()))
def test_chat_messages_reach_dify_rebuilt_with_the_gateways_user(body: bytes) -> None:
    gw = gateway()
    headers = [("Authorization", f"Bearer {gw.supabase_hs256_token}"), ("Content-Type", "application/json")]
    ex = gw.exchange("POST", "/api/chat", headers, body)
    assert_sound(gw, ex)
    assert ex.answer is not None
    calls = [c for c in ex.dify if c.path.endswith("/chat-messages")]
    if valid(body) is False:
        assert_refused_cleanly(ex)
    for call in calls:
        assert isinstance(call.json, dict) and set(call.json) <= CHAT_FIELDS, ex.describe()
        assert call.json["user"] == SUPABASE_USER_ID, ex.describe()
        sent = strict(body)
        assert call.json["query"] == sent.get("message", sent.get("query")), ex.describe()


@examples(200)
@given(body=json_bodies(), conversation=st.uuids().map(str))
def test_renaming_a_conversation_sends_the_body_with_the_gateways_user(body: bytes, conversation: str) -> None:
    gw = gateway()
    headers = [("Authorization", f"Bearer {gw.supabase_token}"), ("Content-Type", "application/json")]
    ex = gw.exchange("POST", f"/api/chat/conversations/{conversation}/name", headers, body)
    assert_sound(gw, ex)
    if valid(body) is False:
        assert_refused_cleanly(ex)
    for call in ex.dify:
        sent = strict(body) if body.strip() else None
        sent = {} if sent is None else sent  # null, like no body, is an empty object
        assert isinstance(sent, dict), ex.describe()
        assert call.json == {**sent, "user": SUPABASE_USER_ID}, ex.describe()


@examples(200)
@given(body=json_bodies())
def test_login_forwards_only_json_objects_and_never_answers_a_token(body: bytes) -> None:
    gw = gateway()
    ex = gw.exchange("POST", "/api/auth/login", [("Content-Type", "application/json")], body)
    assert_sound(gw, ex)
    logins = [r for r in ex.backend if r.path == BACKEND_BASE + "/auth/login"]
    if valid(body) is False:
        assert_refused_cleanly(ex)
        assert not logins, ex.describe()
    for login in logins:
        assert same_body(login, body) and body.lstrip(b" \t\r\n").startswith(b"{"), ex.describe()


ROUTES = [
    ("/api/proxy/items", "cookie"),
    ("/api/chat", "bearer"),
    ("/api/chat/conversations/9d6f2c1e-4b3a-4e8f-a1c2-3b4d5e6f7a80/name", "bearer"),
    ("/api/auth/login", ""),
]


def test_json_nested_about_the_parsers_own_limit_is_never_a_500() -> None:
    """Every depth from 940 to 1,040: a body Python's parser takes but its serialiser cannot
    write back exists only within a level or two of its recursion limit, too narrow a band for
    random depths to hit, so each depth is tried (a few seconds for all)."""
    gw = gateway()
    for path, auth in ROUTES:
        headers = [("Content-Type", "application/json")]
        if auth == "cookie":
            headers.append(("Cookie", f"next-auth.session-token={SESSION}"))
        elif auth == "bearer":
            headers.append(("Authorization", f"Bearer {gw.supabase_hs256_token}"))
        for level in range(940, 1040):
            for body in (
                b'{"message":"hi","inputs":' + b'{"a":' * level + b"1" + b"}" * level + b"}",
                b"[" * level + b"]" * level,
            ):
                ex = gw.exchange("POST", path, headers, body)
                assert_sound(gw, ex, tokens=[ACCESS_TOKEN])
