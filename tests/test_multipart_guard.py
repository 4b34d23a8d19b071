"""The upload guard (upstream/multipart.py) against real multipart parsers (issue 11, defect 5).

Before, the guard ended a part's headers at LF LF or CRLF LF, while Tornado's parser (the fake
and demo Dify's) ends them only at CRLF CRLF: a part whose headers were ``name="x"`` to the
guard was a ``user`` field to Dify, and an upload was stored as another user. Now the guard
accepts only forms in the one shape every parser reads alike, and each variant of line endings
is checked here against Tornado's ``parse_body_arguments`` and ``python_multipart`` (as
Starlette drives it): whatever the guard accepts, both read exactly one ``user``, the gateway's.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from typing import Any

import pytest

from tests.conftest import RunningGateway
from tests.fakes.dify import FakeDify
from tests.fakes.supabase import FakeSupabase
from tests.multipart_parsers import PARSERS
from upstream.multipart import ForbiddenField, FormField

BOUNDARY = "----WebKitFormBoundary7MA4YWxkTrZu0gW"
GATEWAY_USER = "6d0c9a8b-7e6f-4a5b-8c4d-3e2f1a0b9c8d"
MALLORY = "mallory"
REPRO = (  # the fuzzer's: a field "x" to the old guard, a field "user" to Tornado
    f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="x"\n\n'
    f'Content-Disposition: form-data; name="user"\r\n\r\n{MALLORY}\r\n'
    f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="a.txt"\r\n\r\nhello\r\n'
    f"--{BOUNDARY}--\r\n"
).encode()

LINE_BREAKS = {"CRLF": b"\r\n", "LF": b"\n", "CR": b"\r", "CR CR LF": b"\r\r\n", "LF CR": b"\n\r"}


def variant(after_delimiter: bytes, between_headers: bytes, end_of_headers: bytes, before_delimiter: bytes) -> bytes:
    """A form with a field ``x`` and a ``user`` part, each place a line break belongs written
    with the given bytes."""
    body = b""
    for name, value in (("x", b"1"), ("user", MALLORY.encode())):
        body += f"--{BOUNDARY}".encode() + after_delimiter
        body += f'Content-Disposition: form-data; name="{name}"'.encode() + between_headers
        body += b"Content-Type: text/plain" + end_of_headers * 2 + value + before_delimiter
    return body + f"--{BOUNDARY}--\r\n".encode()


def guard_accepts(body: bytes, field: str = "user", chunk_size: int | None = None) -> bool:
    """Whether the guard lets ``body`` through, fed ``chunk_size`` bytes at a time (default whole)."""
    form = FormField(BOUNDARY.encode(), field, GATEWAY_USER)
    size = chunk_size or len(body)
    try:
        for start in range(0, len(body), size):
            form.check(body[start : start + size])
    except ForbiddenField:
        return False
    return True


def users_read(body: bytes) -> dict[str, list[bytes] | None]:
    """The ``user`` values each parser reads in what the upstream gets (None: it refuses the form)."""
    form = FormField(BOUNDARY.encode(), "user", GATEWAY_USER)
    upstream = form.prefix + body
    read = {name: parse(form.content_type, upstream) for name, parse in PARSERS.items()}
    return {name: None if fields is None else [v for k, v in fields if k == "user"] for name, fields in read.items()}


def test_the_fuzzers_repro_is_refused_though_a_real_parser_reads_mallory() -> None:
    assert users_read(REPRO)["tornado"] == [GATEWAY_USER.encode(), MALLORY.encode()]  # what was at stake
    assert not guard_accepts(REPRO)
    assert not guard_accepts(REPRO, chunk_size=1)


VARIANTS = list(itertools.product(LINE_BREAKS, repeat=4))


@pytest.mark.parametrize("breaks", VARIANTS, ids=["/".join(v) for v in VARIANTS])
def test_every_line_ending_variant_is_refused_or_read_alike_by_every_parser(breaks: tuple[str, ...]) -> None:
    body = variant(*(LINE_BREAKS[b] for b in breaks))
    verdicts = {guard_accepts(body, "user", size) for size in (1, 2, 7, None)}
    assert len(verdicts) == 1, "the verdict depends on how the body is cut"
    # Against a guard for another name the user part is just a field: only the framing is judged.
    accepted = guard_accepts(body, "nobody")
    # Well formed: CRLF everywhere, where a part's content may end in any bytes before its CRLF.
    well_formed = breaks[:3] == ("CRLF",) * 3 and LINE_BREAKS[breaks[3]].endswith(b"\r\n")
    assert accepted == well_formed
    assert verdicts == {False}, "a form with a user part of its own is always refused"
    if accepted:
        for parser, fields in users_read(body).items():
            assert fields is not None and len(fields) == 2, parser  # both parts, as the guard saw them
            assert fields[0] == GATEWAY_USER.encode() and fields[1].startswith(MALLORY.encode()), parser


@pytest.mark.parametrize(
    ("case", "body"),
    [
        ("a delimiter mid-line", b'--B\r\nContent-Disposition: form-data; name="f"\r\n\r\nab--B\r\n'),
        ("a delimiter after a bare LF", b'--B\r\nContent-Disposition: form-data; name="f"\r\n\r\nab\n--B\r\n'),
        ("a delimiter with padding", b'--B\r\nContent-Disposition: form-data; name="f"\r\n\r\nab\r\n--B \r\n'),
        ("a delimiter right after the headers", b'--B\r\nContent-Disposition: form-data; name="f"\r\n\r\n--B\r\n'),
        ("a delimiter inside the headers", b'--B\r\nContent-Disposition: form-data; name="f"\r\n--B\r\n\r\n'),
        ("a folded header", b'--B\r\nContent-Disposition: form-data;\r\n name="f"\r\n\r\nab\r\n'),
        ("a header without a colon", b'--B\r\nContent-Disposition: form-data; name="f"\r\nX\r\n\r\nab\r\n'),
        ("a header name with a space", b'--B\r\nContent-Disposition : form-data; name="f"\r\n\r\nab\r\n'),
        ("a NUL in the headers", b'--B\r\nContent-Disposition: form-data; name="f\0"\r\n\r\nab\r\n'),
        ("a part without headers", b"--B\r\n\r\nab\r\n--B--\r\n"),
        (
            "two dispositions",
            b'--B\r\nContent-Disposition: form-data; name="f"\r\nContent-Disposition: form-data; name="g"\r\n\r\n',
        ),
        ("two names", b'--B\r\nContent-Disposition: form-data; name="f"; name="g"\r\n\r\nab\r\n'),
        ("a backslash in the name", b'--B\r\nContent-Disposition: form-data; name="f\\"\r\n\r\nab\r\n'),
        ("RFC 2231 name continuations", b'--B\r\nContent-Disposition: form-data; name*0="us"; name*1="er"\r\n\r\n'),
        (
            "an escaped quote outside quotes",
            b'--B\r\nContent-Disposition: form-data; x=\\"; name=user; y="; name=ok\r\n\r\n',
        ),
        ("a Unicode space before a name", b"--B\r\nContent-Disposition: form-data; name=ok; \xc2\xa0name=user\r\n\r\n"),
        ("a Unicode space in a token", b"--B\r\nContent-Disposition: form-data; name=\xc2\xa0user\r\n\r\n"),
        ("spaces around the equals sign", b'--B\r\nContent-Disposition: form-data; name = "f"\r\n\r\nab\r\n'),
        ("not form-data", b'--B\r\nContent-Disposition: attachment; name="f"\r\n\r\nab\r\n'),
        ("an epilogue", b'--B\r\nContent-Disposition: form-data; name="f"\r\n\r\nab\r\n--B--\r\nmore'),
        (
            "a second form after the close",
            b'--B\r\nContent-Disposition: form-data; name="f"\r\n\r\nab\r\n--B--\r\n--B\r\n',
        ),
    ],
)
def test_forms_parsers_may_read_differently_are_refused(case: str, body: bytes) -> None:
    for size in (1, 3, None):
        form = FormField(b"B", "user", GATEWAY_USER)
        with pytest.raises(ForbiddenField):
            for start in range(0, len(body), size or len(body)):
                form.check(body[start : start + (size or len(body))])


def test_a_browsers_form_passes_in_any_chunking() -> None:
    """Control: the shape Chromium sends, with a file whose content holds CRs, LFs, dashes and a
    boundary that is not this one."""
    content = b"line\r\nline\nline\r--\r\n--WebKitFormBoundaryOther\r\n\r\n\r\n"
    body = (
        (
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nnotes\r\n'
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="n\u00f6tes.txt"\r\n'
            f"Content-Type: text/plain\r\n\r\n"
        ).encode()
        + content
        + f"\r\n--{BOUNDARY}--\r\n".encode()
    )
    for size in (1, 2, 5, 64, None):
        assert guard_accepts(body, "user", size)
    for parser, fields in users_read(body).items():
        assert fields == [GATEWAY_USER.encode()], parser


def test_a_semicolon_in_a_quoted_name_is_part_of_the_name_as_parsers_read_it() -> None:
    body = (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="a;user"; filename="x;y.txt"\r\n\r\nab\r\n'
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name=";"\r\n\r\ncd\r\n--{BOUNDARY}--\r\n'
    ).encode()
    assert guard_accepts(body)
    assert not guard_accepts(body, "a;user")
    assert not guard_accepts(body, ";")
    form = FormField(BOUNDARY.encode(), "user", GATEWAY_USER)
    for parser, read in PARSERS.items():
        fields = read(form.content_type, form.prefix + body)
        assert fields is not None and sorted(name for name, _ in fields) == [";", "a;user", "user"], parser


@pytest.mark.gen_test
async def test_through_the_gateway_the_repro_is_400_and_nothing_is_stored(
    chat_gateway: RunningGateway, dify: FakeDify, supabase: FakeSupabase, fetch: Callable[..., Any]
) -> None:
    response = await fetch(
        chat_gateway.url + "/api/chat/files",
        method="POST",
        body=REPRO,
        headers={
            "Authorization": f"Bearer {supabase.mint(GATEWAY_USER)}",
            "Content-Type": f"multipart/form-data; boundary={BOUNDARY}",
        },
    )
    assert response.code == 400, response.body
    await asyncio.sleep(0.05)
    assert dify.files == {}
