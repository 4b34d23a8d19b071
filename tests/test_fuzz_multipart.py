"""Property-based: multipart forms against the upload guard (upstream/multipart.py `FormField`).

Gatehouse puts a ``user`` field of its own first in every upload to Dify and refuses a form that
carries one itself, judging the form by its part headers as they stream by. The guard is only
as good as its agreement with the parsers behind it, so each form (tests/fuzz_strategies.py
`multipart_cases`: line-ending and header variants, ``name*=`` and RFC 2231 continuations,
smuggled delimiters) is read by the guard and by two real parsers of the body the upstream gets
(the gateway's part, then the browser's): Tornado's ``parse_body_arguments`` and
``python_multipart`` as Starlette drives it. Whenever the guard accepts a form, every parser
reads exactly one ``user``, the gateway's, and the same field names the guard saw; its verdict
does not depend on how the body is cut into chunks; and through the gateway, a refused form
never reaches Dify while an accepted one reaches it with the signed-in user.
"""

from __future__ import annotations

from hypothesis import given, note

from tests.fuzz_gateway import SUPABASE_USER_ID, assert_sound, gateway
from tests.fuzz_strategies import MultipartCase, chunks, examples, multipart_cases
from tests.multipart_parsers import PARSERS, Fields
from upstream.multipart import ForbiddenField, FormField, boundary_of


def guard_refuses(case: MultipartCase, name: str, cuts: tuple[int, ...] = ()) -> bool:
    """Whether a guard for field ``name`` refuses the body (fed in chunks cut at ``cuts``)."""
    boundary = boundary_of(case.content_type)
    assert boundary is not None
    form = FormField(boundary, name, SUPABASE_USER_ID)
    try:
        for chunk in chunks(case.body, cuts):
            form.check(chunk)
    except ForbiddenField:
        return True
    return False


def upstream_form(case: MultipartCase) -> tuple[str, bytes]:
    """The Content-Type and body the upstream gets for ``case``."""
    boundary = boundary_of(case.content_type)
    assert boundary is not None
    form = FormField(boundary, "user", SUPABASE_USER_ID)
    return form.content_type, form.prefix + case.body


def parsed_when_accepted(case: MultipartCase) -> dict[str, Fields] | None:
    """What each parser that accepts the upstream's body reads, when the guard accepts the
    browser's form; None when the guard refuses it (nothing reaches a parser then)."""
    if boundary_of(case.content_type) is None or guard_refuses(case, "user"):
        return None
    content_type, body = upstream_form(case)
    note(f"upstream body: {body!r}")
    parsed = {parser: read(content_type, body) for parser, read in PARSERS.items()}
    return {parser: fields for parser, fields in parsed.items() if fields is not None}


@examples(500)
@given(case=multipart_cases())
def test_whenever_the_guard_accepts_every_parser_reads_only_the_gateways_user(case: MultipartCase) -> None:
    for parser, fields in (parsed_when_accepted(case) or {}).items():
        users = [value for name, value in fields if name == "user"]
        assert users == [SUPABASE_USER_ID.encode()], f"{parser} reads user={users}"


@examples(400)
@given(case=multipart_cases())
def test_whenever_the_guard_accepts_every_parser_reads_the_fields_it_saw(case: MultipartCase) -> None:
    for parser, fields in (parsed_when_accepted(case) or {}).items():
        read_names = {name for name, _ in fields}
        candidates = read_names | case.names
        seen = {n for n in candidates - {"user"} if guard_refuses(case, n)} | {"user"}
        assert read_names == seen, f"{parser} reads {sorted(read_names)}, the guard saw {sorted(seen)}"


@examples(300)
@given(case=multipart_cases())
def test_the_guards_verdict_does_not_depend_on_chunking(case: MultipartCase) -> None:
    if boundary_of(case.content_type) is None:
        return
    assert guard_refuses(case, "user") == guard_refuses(case, "user", case.cuts), f"cut at {case.cuts}"


@examples(150)
@given(case=multipart_cases())
def test_an_upload_reaches_dify_only_as_the_guard_allows_and_as_the_signed_in_user(case: MultipartCase) -> None:
    gw = gateway()
    before = gw.on_loop(lambda: set(gw.dify.files))
    headers = [("Authorization", f"Bearer {gw.supabase_token}"), ("Content-Type", case.content_type)]
    ex = gw.exchange("POST", "/api/chat/files", headers, case.body)
    assert_sound(gw, ex)
    assert ex.answer is not None
    stored = gw.on_loop(lambda: [f for k, f in gw.dify.files.items() if k not in before])
    refused = boundary_of(case.content_type) is None or guard_refuses(case, "user")
    if refused:
        error = ex.answer.error()
        assert error is not None and error["error"] == "invalid_request", ex.describe()
        assert not stored, "a refused form reached Dify" + ex.describe()
    for upload in stored:
        assert upload.user == SUPABASE_USER_ID, f"Dify stored the file for {upload.user!r}" + ex.describe()
