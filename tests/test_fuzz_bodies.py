"""Property-based: bodies sent to routes that take none (or only a small JSON one).

A route that takes no body must not hold one: whatever a request declares (a ``Content-Length``
past any sane body, up to past the server-wide limit) or streams (chunked), gatehouse answers
it (as JSON, never a 5xx) without waiting for the body to be sent, instead of buffering it.
Each example waits `WAIT` seconds for an answer that should come at once: failing examples are
not shrunk, each attempt would cost that wait again.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from tests.fuzz_gateway import gateway
from tests.fuzz_strategies import examples

WAIT = 1.5
MIB = 1024 * 1024
NO_BODY_ROUTES = [
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/api/auth/session"),
    ("POST", "/api/auth/logout"),
    ("POST", "/api/auth/login"),  # JSON, at most MAX_JSON_BYTES (1 MiB)
    ("GET", "/api/chat/conversations"),
    ("GET", "/api/chat/parameters"),
    ("DELETE", "/api/chat/conversations/9d6f2c1e-4b3a-4e8f-a1c2-3b4d5e6f7a80"),
    ("GET", "/no/such/route"),
]


@examples(12, shrink=False)
@given(
    route=st.sampled_from(NO_BODY_ROUTES),
    declared=st.sampled_from([2 * MIB, 50 * MIB, 100 * MIB + 1, 2**31, 10**15]),
    chunked=st.booleans(),
)
def test_a_route_that_takes_no_body_answers_without_reading_a_big_one(
    route: tuple[str, str], declared: int, chunked: bool
) -> None:
    gw = gateway()
    method, path = route
    framing = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {declared}"
    head = (
        f"{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer {gw.supabase_token}\r\n"
        f"Content-Type: application/json\r\n{framing}\r\n\r\n"
    ).encode()
    # Chunked: more than any such route may take (1 MiB), never the last chunk. Declared: 64 KiB.
    piece = b" " * 65536
    body = (f"{len(piece):x}\r\n".encode() + piece + b"\r\n") * 17 if chunked else piece
    answer = gw.send_partial(head, body, WAIT)
    assert answer is not None, f"{method} {path} with {framing}: no answer while the body was still due"
    assert answer.status < 500, answer.raw[:500]
    assert answer.error() is not None or answer.status < 400, answer.raw[:500]
    for line in gw.take_logs():
        assert not gw.leaks(line) and "unhandled error" not in line, line
