"""Property-based: credentials of every shape (tests/fuzz_strategies.py `credentials`).

Cookies (next-auth v4 / Auth.js v5 sessions, chunked, prefixed, tampered, with claims of every
JSON type; @supabase/ssr cookies in base64 and raw form, chunked) and ``Authorization`` headers
(JWTs whose header fields and claims take every JSON type, unsigned, signed with the project's
keys or wrong ones; next-auth JWEs) on every kind of route. For each: the answer is sound
(`assert_sound`), a forged token reaches no upstream, the backend only ever gets ``Bearer`` and
an access token the request's own session holds, Dify only the ``user`` of the Supabase token
that authenticated the request. One test per kind of credential, so that a fault in one kind
does not hide the faults of another (Hypothesis reports the first it meets).
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from hypothesis import given, note
from hypothesis import strategies as st

from tests.fuzz_gateway import assert_sound, gateway
from tests.fuzz_strategies import credentials, examples

Route = tuple[str, str, bytes, str]
PROXY: list[Route] = [
    ("GET", "/api/proxy/echo", b"", ""),
    ("POST", "/api/proxy/items", b'{"a": 1}', "application/json"),
]
CHAT: list[Route] = [
    ("POST", "/api/chat", b'{"message": "hi", "stream": false}', "application/json"),
    ("POST", "/api/chat", b'{"message": "hi"}', "application/json"),
    ("GET", "/api/chat/conversations", b"", ""),
]
SESSION: list[Route] = [("GET", "/api/auth/session", b"", ""), ("POST", "/api/auth/logout", b"", "")]


def check(data: st.DataObject, routes: Sequence[Route], cookies: Sequence[str], auth: Sequence[str]) -> None:
    gw = gateway()
    method, path, body, content_type = data.draw(st.sampled_from(routes), label="route")
    creds = data.draw(credentials(gw, cookies, auth), label="credentials")
    for line in creds.notes:
        note(line)
    headers = list(creds.headers) + ([("Content-Type", content_type)] if content_type else [])
    ex = gw.exchange(method, path, headers, body)
    forged = not creds.tokens  # nothing in the request could authenticate it
    assert_sound(gw, ex, tokens=creds.tokens, dify_users=creds.subs, forwarded=False if forged else None)
    assert ex.answer is not None
    if path == "/api/auth/session" and ex.answer.status == 200:
        shown = json.loads(ex.answer.body)
        assert set(shown) == {"user", "expires"}, ex.describe()
        assert all(isinstance(v, str | int | float) for v in shown["user"].values()), ex.describe()


@examples(500)
@given(data=st.data())
def test_supabase_bearer_tokens(data: st.DataObject) -> None:
    check(data, CHAT + PROXY, cookies=(), auth=["jwt"])


@examples(300)
@given(data=st.data())
def test_supabase_cookies(data: st.DataObject) -> None:
    check(data, CHAT + PROXY, cookies=["sb-base64", "sb-raw", "sb-list", "garbage"], auth=["none"])


@examples(400)
@given(data=st.data())
def test_next_auth_sessions(data: st.DataObject) -> None:
    check(data, PROXY + SESSION, cookies=["v4", "v5", "v5-gcm", "tampered", "garbage"], auth=["none", "jwe", "odd"])


@examples(300)
@given(data=st.data())
def test_any_mix_of_credentials_on_any_route(data: st.DataObject) -> None:
    check(
        data,
        PROXY + CHAT + SESSION,
        cookies=["v4", "v5", "v5-gcm", "sb-base64", "sb-raw", "sb-list", "garbage", "tampered"],
        auth=["none", "jwt", "jwt", "jwe", "odd"],
    )
