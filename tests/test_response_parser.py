"""The upstream response parser on its own: the same bytes give the same answer however TCP
splits them. (Its framing rules are tested through the gateway, with raw upstream bytes, in
``tests/test_upstream_framing.py``.)"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from tornado.httputil import HTTPInputError

from upstream.response_parser import END, NEED_DATA, ResponseHead, ResponseParser

EVENTS = [b'data: {"answer": "%d"}\n\n' % n for n in range(20)]
CHUNKED = (
    b"HTTP/1.1 100 Continue\r\n\r\n"
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
    + b"".join(b"%x;ext=1\r\n%b\r\n" % (len(e), e) for e in EVENTS)
    + b"0\r\nX-Trailer: t\r\n\r\n"
)
LENGTH = b"HTTP/1.1 200 OK\r\nContent-Length: 10, 10\r\n\r\n0123456789"


def parse(pieces: list[bytes]) -> tuple[ResponseHead, bytes]:
    parser = ResponseParser()
    parser.expect(head_request=False)
    head: ResponseHead | None = None
    body = bytearray()
    for piece in pieces:
        parser.feed(piece)
        while (event := parser.next_event()) is not NEED_DATA:
            if event is END:
                assert head is not None and parser.idle and not parser.buffered
                return head, bytes(body)
            if isinstance(event, ResponseHead):
                assert head is None, "one final head"
                head = event
            else:
                assert isinstance(event, bytes) and head is not None
                body += event
    raise AssertionError("the answer never ended")


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


@pytest.mark.parametrize("raw", [CHUNKED, LENGTH], ids=["chunked", "length"])
@given(cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=30))
def test_any_segmentation_gives_the_same_answer(raw: bytes, cuts: list[int]) -> None:
    whole_head, whole_body = parse([raw])
    head, body = parse(split(raw, cuts))
    assert body == whole_body
    assert head.start.code == whole_head.start.code == 200
    assert dict(head.headers.get_all()) == dict(whole_head.headers.get_all())


def test_what_it_reads_matches_the_bytes_sent() -> None:
    head, body = parse([CHUNKED])
    assert body == b"".join(EVENTS)
    assert head.headers["Content-Type"] == "text/event-stream"
    assert "X-Trailer" not in head.headers  # trailers are read and dropped, never merged into the head
    _, body = parse([LENGTH])
    assert body == b"0123456789"


@given(cut=st.integers(min_value=1, max_value=200))
def test_a_bad_chunk_is_refused_however_it_arrives(cut: int) -> None:
    raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXX0\r\n\r\n"
    parser = ResponseParser()
    parser.expect(head_request=False)
    with pytest.raises(HTTPInputError):
        for piece in split(raw, [cut]):
            parser.feed(piece)
            while (event := parser.next_event()) is not NEED_DATA:
                assert event is not END
