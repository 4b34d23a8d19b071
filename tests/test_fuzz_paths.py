"""Property-based: paths and queries into ``/api/proxy/...`` (tests/fuzz_gateway.py runs the gateway).

For any path after ``/api/proxy/`` (encoded dots and separators, control characters, non-UTF-8
escapes, unicode, long segments) and any query, with or without a session: the answer is sound
(`assert_sound`), a path reaches the backend only under its base, exactly as sent and safe
however often the backend decodes it, the query byte for byte; plain paths are not refused.
"""

from __future__ import annotations

import re

from hypothesis import given
from hypothesis import strategies as st

from auth.nextauth import NextAuthV4Codec
from tests.conftest import ACCESS_TOKEN, REFRESH_TOKEN, SECRET
from tests.fuzz_gateway import BACKEND_BASE, assert_sound, gateway
from tests.fuzz_strategies import examples, proxy_paths, queries

SESSION = NextAuthV4Codec(SECRET).encode(
    {"sub": "user-1", "access_token": ACCESS_TOKEN, "refresh_token": REFRESH_TOKEN}
)


def forwarded_query_forms(query: bytes) -> set[str]:
    """The query as sent, or with bytes outside printable ASCII and ``#`` percent-encoded (as
    the README allows: a raw ``#`` would end the upstream URL's query)."""
    escaped = "".join(chr(b) if 0x21 <= b < 0x7F and b != 0x23 else f"%{b:02X}" for b in query)
    return {query.decode("latin-1"), escaped}


_PLAIN = re.compile(rb"[A-Za-z0-9_~-]+(?:/[A-Za-z0-9_~-]+)*/?")


@examples(500)
@given(
    path=proxy_paths(),
    query=queries,
    method=st.sampled_from(["GET", "GET", "GET", "DELETE", "POST", "PUT", "PATCH", "HEAD", "OPTIONS"]),
    session=st.sampled_from(["next-auth", "supabase", "none"]),
)
def test_a_proxied_path_reaches_the_backend_only_as_sent_and_safe(
    path: bytes, query: bytes | None, method: str, session: str
) -> None:
    gw = gateway()
    target = b"/api/proxy/" + path + (b"?" + query if query is not None else b"")
    headers: list[tuple[str, str]] = []
    if session == "next-auth":
        headers.append(("Cookie", f"next-auth.session-token={SESSION}"))
    elif session == "supabase":
        headers.append(("Authorization", f"Bearer {gw.supabase_token}"))
    ex = gw.exchange(method, target, headers)
    assert_sound(gw, ex, tokens=(ACCESS_TOKEN, gw.supabase_token))
    assert ex.answer is not None
    proxied = ex.proxied()
    assert len(proxied) <= 1, ex.describe()
    if proxied:
        # A "?" drawn into the path starts the query there, as it would for any server.
        sent_path, _, sent_query = target[len(b"/api/proxy/") :].partition(b"?")
        assert proxied[0].path == BACKEND_BASE + "/" + sent_path.decode("latin-1"), "path changed" + ex.describe()
        assert proxied[0].query in forwarded_query_forms(sent_query), "query changed" + ex.describe()
        assert proxied[0].method == method, ex.describe()
    error = ex.answer.error()
    if error is not None and error["error"] in ("invalid_path", "unauthorized", "method_not_allowed"):
        assert not proxied, ex.describe()
    if _PLAIN.fullmatch(path) and session != "none" and method == "GET" and ex.answer.status != 400:
        assert proxied and ex.answer.status == 200, "a plain path was not forwarded" + ex.describe()
