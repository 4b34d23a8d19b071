"""Supabase sessions on ``/api/chat`` (auth/supabase.py), through a real gateway on a real socket.

The gateway runs in front of a fake Dify (tests/fakes/dify.py) and a fake Supabase Auth
(tests/fakes/supabase.py), both on real sockets. Most checks use ``GET /api/chat/parameters``, a
cheap authenticated route: "accepted" means 200 from Dify, which was asked with ``user`` = the
token's ``sub``; "rejected" means 401 ``{"error": "unauthorized"}`` for a bad session, or 503
``auth_unavailable`` when Supabase cannot answer, and Dify never called either way.

Covered: Bearer tokens (ES256 / RS256 via the JWKS, HS256 via ``SUPABASE_JWT_SECRET``); the
``@supabase/ssr`` cookie as the real library writes it (tests/fixtures/interop/fixtures.json) and
as the fake encodes it (base64 / raw, chunked, out of order, with gaps, a custom storage key);
every way a token can be bad; JWKS caching, rotation and outages; remote mode (supabase-py asking
``/auth/v1/user``: revocation, bans, caching, outages, a refused anon key); CSRF on cookie
sessions; and that no credential reaches a response body or a log line.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import re
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterable
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from tornado.httpclient import AsyncHTTPClient, HTTPResponse

import auth.supabase
from settings import SupabaseSettings
from tests.conftest import INTEROP, LogCapture, RunningGateway
from tests.fakes.dify import FakeDify
from tests.fakes.supabase import JWT_SECRET, FakeSupabase

Fetch = Callable[..., Any]
StartChat = Callable[..., RunningGateway]
MakeSettings = Callable[..., SupabaseSettings]
Headers = dict[str, str]
Build = Callable[[FakeSupabase], Headers]

SSR = INTEROP["supabase_ssr"]
PARAMETERS = "/api/chat/parameters"
ALICE = "3f0c6a2e-1b4d-4c8e-9f7a-2d5b6c7e8f90"
BOB = "8e2d4f6a-0c1b-4a3e-b5d7-9f1e2a3b4c5d"
CAROL = "c47e1a9b-5d3f-4e2a-8b6c-0d9e8f7a6b5c"
EVIL = "https://evil.example"
JWT_SHAPE = re.compile(r"eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}")


# -- requests and assertions -------------------------------------------------------------


def bearer(token: str) -> Headers:
    return {"Authorization": f"Bearer {token}"}


def cookies(pairs: Iterable[tuple[str, str]]) -> Headers:
    return {"Cookie": "; ".join(f"{name}={value}" for name, value in pairs)}


def cookie_session(supabase: FakeSupabase, token: str, **kwargs: Any) -> Headers:
    """The ``Cookie`` header of a browser holding ``token``'s session, as @supabase/ssr stores it."""
    return cookies(supabase.ssr_cookie(supabase.session_json(token), **kwargs))


def credentials(headers: Headers) -> list[str]:
    """Every credential the request carries: the Bearer token and each cookie value."""
    found = []
    for name, value in headers.items():
        if name == "Authorization":
            found.append(value.partition(" ")[2])
        elif name == "Cookie":
            found.extend(pair.partition("=")[2] for pair in value.split("; "))
    return [secret for secret in found if secret]


async def call(fetch: Fetch, gateway: RunningGateway, headers: Headers) -> HTTPResponse:
    response: HTTPResponse = await fetch(gateway.url + PARAMETERS, headers=headers)
    return response


async def assert_accepted(
    fetch: Fetch, gateway: RunningGateway, dify: FakeDify, headers: Headers, user: str
) -> HTTPResponse:
    before = len(dify.requests)
    response = await call(fetch, gateway, headers)
    assert response.code == 200, response.body
    assert len(dify.requests) == before + 1
    sent = dify.requests[-1]
    assert sent.path == "/v1/parameters"
    assert sent.query["user"] == user
    assert sent.header("Authorization") == f"Bearer {dify.api_key}"
    return response


async def assert_rejected(
    fetch: Fetch,
    gateway: RunningGateway,
    dify: FakeDify,
    headers: Headers,
    status: int = 401,
    code: str = "unauthorized",
) -> dict[str, Any]:
    before = len(dify.requests)
    response = await call(fetch, gateway, headers)
    assert response.code == status, response.body
    assert response.headers["Content-Type"].startswith("application/json")
    body: dict[str, Any] = json.loads(response.body)
    assert body["error"] == code
    assert isinstance(body["message"], str) and body["message"]
    text = response.body.decode()
    for secret in credentials(headers):
        assert secret not in text
    assert JWT_SHAPE.search(text) is None
    assert len(dify.requests) == before, "Dify must not be called without a valid session"
    return body


async def burst(url: str, headers: Headers, count: int) -> list[HTTPResponse]:
    """``count`` requests at once (a client of its own: the shared one queues beyond 10)."""
    client = AsyncHTTPClient(force_instance=True, max_clients=count + 4)
    try:
        return list(
            await asyncio.gather(
                *(client.fetch(url, headers=headers, raise_error=False, request_timeout=20) for _ in range(count))
            )
        )
    finally:
        client.close()


# -- tokens the fake would never mint -----------------------------------------------------


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def claims_of(supabase: FakeSupabase, sub: str = ALICE) -> dict[str, Any]:
    claims: dict[str, Any] = jwt.decode(supabase.mint(sub), options={"verify_signature": False})
    return claims


def es256(supabase: FakeSupabase, claims: dict[str, Any], *, key: Any = None, kid: str | None = "") -> str:
    """``claims`` signed ES256 by ``key`` (default: the fake's signing key) under ``kid``
    (default: the fake's kid; ``None``: no kid at all)."""
    signing = supabase.fake.signing_key("ES256")
    headers = None if kid is None else {"kid": kid or signing.kid}
    token = jwt.encode(claims, key or signing.private_key, algorithm="ES256", headers=headers)
    if kid is None:  # PyJWT adds no kid unless told to; make sure none is there
        assert "kid" not in jwt.get_unverified_header(token)
    return token


def es256_any(supabase: FakeSupabase, claims: dict[str, Any], **header: Any) -> str:
    """``claims`` signed ES256 by the fake's key as they are: `jwt.encode` refuses ill-typed
    registered claims (an ``iss`` that is not a string), which an attacker's token may carry."""
    signing = supabase.fake.signing_key("ES256")
    payload = json.dumps(claims).encode()
    return jwt.PyJWS().encode(payload, signing.private_key, algorithm="ES256", headers={"kid": signing.kid, **header})


def unsigned(header: dict[str, Any], claims: dict[str, Any]) -> str:
    return f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims).encode())}.c2ln"


def hs256_raw(header: dict[str, Any], claims: dict[str, Any], secret: bytes) -> str:
    """HS256 by hand: PyJWT refuses to use public key material as an HMAC secret."""
    signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims).encode())}"
    signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64url(signature)}"


def public_pem(supabase: FakeSupabase) -> bytes:
    return (
        supabase.fake.signing_key("ES256")
        .private_key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )


def algorithm_confusion(supabase: FakeSupabase) -> str:
    """An HS256 token whose HMAC key is the project's *public* key, naming its kid."""
    return hs256_raw({"alg": "HS256", "typ": "JWT", "kid": supabase.kid}, claims_of(supabase), public_pem(supabase))


def alg_none(supabase: FakeSupabase) -> str:
    header = b64url(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    return f"{header}.{b64url(json.dumps(claims_of(supabase)).encode())}."


def tampered_signature(supabase: FakeSupabase) -> str:
    head, payload, signature = supabase.mint(ALICE).split(".")
    middle = len(signature) // 2
    flipped = "A" if signature[middle] != "A" else "B"
    return f"{head}.{payload}.{signature[:middle]}{flipped}{signature[middle + 1 :]}"


def tampered_payload(supabase: FakeSupabase) -> str:
    head, _, signature = supabase.mint(ALICE).split(".")
    forged = {**claims_of(supabase), "sub": BOB}
    return f"{head}.{b64url(json.dumps(forged).encode())}.{signature}"


def without(claims: dict[str, Any], name: str) -> dict[str, Any]:
    return {k: v for k, v in claims.items() if k != name}


def foreign_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def base64_cookie(text: str) -> Headers:
    """The default session cookie holding ``text`` in @supabase/ssr's base64 encoding."""
    return cookies([("sb-127-auth-token", "base64-" + b64url(text.encode()))])


def good_session(supabase: FakeSupabase) -> Headers:
    return cookie_session(supabase, supabase.mint(BOB))


# Each: a request that carries no valid session, whatever the verification mode. The third item
# says whether the token can be refused without asking Supabase (no key needed).
BAD_SESSIONS: list[tuple[str, Build, bool]] = [
    ("no session", lambda s: {}, True),
    ("unrelated cookie and basic auth", lambda s: {"Cookie": "theme=dark", "Authorization": "Basic dTpw"}, True),
    ("malformed bearer", lambda s: bearer("not-a-jwt"), True),
    ("malformed three segments", lambda s: bearer("aaaa.bbbb.cccc"), True),
    ("expired", lambda s: bearer(s.mint(ALICE, ttl=-120)), True),
    ("wrong aud", lambda s: bearer(s.mint(ALICE, aud="anon")), True),
    ("wrong iss", lambda s: bearer(s.mint(ALICE, iss="https://other-project.supabase.co/auth/v1")), True),
    ("missing sub", lambda s: bearer(es256(s, without(claims_of(s), "sub"))), True),
    ("empty sub", lambda s: bearer(es256(s, {**claims_of(s), "sub": ""})), True),
    ("missing exp", lambda s: bearer(s.mint(ALICE, exp=None)), True),
    ("tampered signature", lambda s: bearer(tampered_signature(s)), False),
    ("tampered payload", lambda s: bearer(tampered_payload(s)), False),
    ("foreign key, known kid", lambda s: bearer(es256(s, claims_of(s), key=foreign_key())), False),
    ("foreign key, unknown kid", lambda s: bearer(es256(s, claims_of(s), key=foreign_key(), kid="rogue")), False),
    ("es256 without kid", lambda s: bearer(es256(s, claims_of(s), kid=None)), False),
    ("alg none", lambda s: bearer(alg_none(s)), False),
    ("hs256 signed with the public key", lambda s: bearer(algorithm_confusion(s)), False),
    ("hs256 signed with another secret", lambda s: bearer(jwt.encode(claims_of(s), "x" * 40, "HS256")), False),
    ("cookie base64 garbage", lambda s: cookies([("sb-127-auth-token", "base64-!!!")]), True),
    ("cookie not json", lambda s: cookies([("sb-127-auth-token", "not-json")]), True),
    ("cookie base64 not json", lambda s: base64_cookie("{not json"), True),
    ("cookie json without access_token", lambda s: cookies([("sb-127-auth-token", "%7B%22a%22%3A1%7D")]), True),
    ("cookie base64 json without access_token", lambda s: base64_cookie('{"refresh_token":"r"}'), True),
    ("cookie access_token not a jwt", lambda s: base64_cookie('{"access_token":"nope"}'), True),
    ("bad bearer wins over a good cookie", lambda s: {**good_session(s), **bearer("not-a-jwt")}, True),
    # Every header field and claim gatehouse reads, of a JSON type it must not be (issue 11).
    ("alg is a list (the fuzzer's repro)", lambda s: bearer("eyJhbGciOltdfQ.e30."), True),
    ("alg is a list in the cookie", lambda s: base64_cookie('{"access_token":"eyJhbGciOltdfQ.e30."}'), True),
    ("alg is an object", lambda s: bearer(unsigned({"alg": {"ES256": 1}, "kid": s.kid}, claims_of(s))), True),
    ("alg is a number", lambda s: bearer(unsigned({"alg": 256, "kid": s.kid}, claims_of(s))), True),
    ("kid is a list", lambda s: bearer(unsigned({"alg": "ES256", "kid": [s.kid]}, claims_of(s))), True),
    ("kid is an object", lambda s: bearer(unsigned({"alg": "ES256", "kid": {"k": s.kid}}, claims_of(s))), True),
    ("typ is a list", lambda s: bearer(es256_any(s, claims_of(s), typ=["JWT"])), True),
    ("sub is a number", lambda s: bearer(es256_any(s, {**claims_of(s), "sub": 12345})), True),
    ("sub is a list", lambda s: bearer(es256_any(s, {**claims_of(s), "sub": [ALICE]})), True),
    ("exp is a string", lambda s: bearer(es256_any(s, {**claims_of(s), "exp": str(claims_of(s)["exp"])})), True),
    ("exp is true", lambda s: bearer(es256_any(s, {**claims_of(s), "exp": True})), True),
    ("exp is an object", lambda s: bearer(es256_any(s, {**claims_of(s), "exp": {"at": 1}})), True),
    ("iss is a list", lambda s: bearer(es256_any(s, {**claims_of(s), "iss": [claims_of(s)["iss"]]})), True),
    ("aud is an object", lambda s: bearer(es256_any(s, {**claims_of(s), "aud": {"authenticated": 1}})), True),
    ("aud lists a number", lambda s: bearer(es256_any(s, {**claims_of(s), "aud": ["authenticated", 1]})), True),
    ("iat is a list", lambda s: bearer(es256_any(s, {**claims_of(s), "iat": []})), True),
    ("exp overflows a float", lambda s: bearer(es256_any(s, {**claims_of(s), "exp": 10**400})), True),
    ("exp is NaN", lambda s: bearer(es256_any(s, {**claims_of(s), "exp": float("nan")})), True),
    ("nbf is a string", lambda s: bearer(es256_any(s, {**claims_of(s), "nbf": "0"})), True),
]


# -- Bearer tokens -----------------------------------------------------------------------


@pytest.mark.gen_test
async def test_es256_bearer_token_is_accepted_as_its_sub(
    chat_gateway: RunningGateway, supabase: FakeSupabase, dify: FakeDify, fetch: Fetch
) -> None:
    await assert_accepted(fetch, chat_gateway, dify, bearer(supabase.mint(ALICE)), ALICE)
    await assert_accepted(fetch, chat_gateway, dify, bearer(supabase.mint(BOB)), BOB)
    assert supabase.jwks_fetches == 1


@pytest.mark.gen_test
async def test_rs256_bearer_token_is_accepted(
    chat_gateway: RunningGateway, supabase: FakeSupabase, dify: FakeDify, fetch: Fetch
) -> None:
    supabase.rotate_key("RS256")
    token = supabase.mint(ALICE, alg="RS256")
    assert jwt.get_unverified_header(token)["alg"] == "RS256"
    await assert_accepted(fetch, chat_gateway, dify, bearer(token), ALICE)


@pytest.mark.gen_test
async def test_hs256_token_is_accepted_with_the_jwt_secret_and_needs_no_jwks(
    chat_gateway: RunningGateway, supabase: FakeSupabase, dify: FakeDify, fetch: Fetch
) -> None:
    token = supabase.mint(ALICE, alg="HS256")
    assert jwt.get_unverified_header(token)["alg"] == "HS256"
    await assert_accepted(fetch, chat_gateway, dify, bearer(token), ALICE)
    assert supabase.jwks_fetches == 0


@pytest.mark.gen_test
async def test_hs256_tokens_are_refused_without_a_jwt_secret(
    start_chat_gateway: StartChat,
    supabase_settings: MakeSettings,
    supabase: FakeSupabase,
    dify: FakeDify,
    fetch: Fetch,
) -> None:
    gateway = start_chat_gateway(supabase=supabase_settings(jwt_secret=None))
    await assert_rejected(fetch, gateway, dify, bearer(supabase.mint(ALICE, alg="HS256")))
    await assert_rejected(fetch, gateway, dify, bearer(algorithm_confusion(supabase)))
    pem_text = public_pem(supabase)
    jwk_text = json.dumps(supabase.fake.jwks()["keys"][0]).encode()
    for material in (pem_text, jwk_text):  # HMAC keyed by what the JWKS publishes
        token = hs256_raw({"alg": "HS256", "typ": "JWT"}, claims_of(supabase), material)
        await assert_rejected(fetch, gateway, dify, bearer(token))
    await assert_accepted(fetch, gateway, dify, bearer(supabase.mint(ALICE)), ALICE)  # ES256 still works


# -- @supabase/ssr cookies ---------------------------------------------------------------


@pytest.mark.gen_test
@pytest.mark.parametrize("variant", ["base64", "raw", "chunked", "raw_chunked"])
async def test_cookies_minted_by_supabase_ssr_authenticate(
    variant: str, start_chat_gateway: StartChat, dify: FakeDify, fetch: Fetch
) -> None:
    fake = FakeSupabase.from_interop_fixture()
    try:
        gateway = start_chat_gateway(
            supabase=SupabaseSettings(url=fake.url, anon_key=fake.anon_key, jwt_issuer=f"{SSR['supabase_url']}/auth/v1")
        )
        fixture = SSR[variant]
        pairs = [tuple(line.split(";", 1)[0].split("=", 1)) for line in fixture["set_cookie"]]
        assert len(pairs) == len(fixture["cookie_lengths"])
        assert all(name.startswith(SSR["storage_key"]) for name, _ in pairs)
        header = "; ".join(f"{name}={value}" for name, value in pairs)
        await assert_accepted(fetch, gateway, dify, {"Cookie": header}, fixture["session"]["user"]["id"])
        assert fake.jwks_fetches == 1
    finally:
        await fake.aclose()


@pytest.mark.gen_test
@pytest.mark.parametrize("encoding", ["base64", "raw"])
@pytest.mark.parametrize("chunk_size", [3180, 400])
async def test_cookies_encoded_like_supabase_ssr_authenticate(
    encoding: str, chunk_size: int, chat_gateway: RunningGateway, supabase: FakeSupabase, dify: FakeDify, fetch: Fetch
) -> None:
    token = supabase.mint(ALICE)
    pairs = supabase.ssr_cookie(supabase.session_json(token), encoding=encoding, chunk_size=chunk_size)
    if chunk_size == 3180:
        assert [name for name, _ in pairs] == ["sb-127-auth-token"]
    else:
        assert len(pairs) >= 3 and pairs[0][0] == "sb-127-auth-token.0"
    await assert_accepted(fetch, chat_gateway, dify, cookies(pairs), ALICE)
    # Chunks arrive in whatever order the browser likes, among other cookies.
    await assert_accepted(fetch, chat_gateway, dify, cookies([("theme", "dark"), *reversed(pairs)]), ALICE)


@pytest.mark.gen_test
@pytest.mark.parametrize("encoding", ["base64", "raw"])
async def test_a_gap_in_the_chunks_is_401(
    encoding: str, chat_gateway: RunningGateway, supabase: FakeSupabase, dify: FakeDify, fetch: Fetch
) -> None:
    pairs = supabase.ssr_cookie(supabase.session_json(supabase.mint(ALICE)), encoding=encoding, chunk_size=400)
    assert len(pairs) >= 3
    await assert_rejected(fetch, chat_gateway, dify, cookies([pairs[0], pairs[2]]))
    await assert_rejected(fetch, chat_gateway, dify, cookies(pairs[1:]))  # no .0: no session at all
    await assert_accepted(fetch, chat_gateway, dify, cookies(pairs), ALICE)
    # Joining stops at the first gap (combineChunks): a stray chunk after one is not appended.
    (whole,) = supabase.ssr_cookie(supabase.session_json(supabase.mint(BOB)), encoding=encoding)
    stray = ("sb-127-auth-token.2", pairs[2][1])
    await assert_accepted(fetch, chat_gateway, dify, cookies([("sb-127-auth-token.0", whole[1]), stray]), BOB)


@pytest.mark.gen_test
async def test_only_the_configured_cookie_name_is_read(
    chat_gateway: RunningGateway,
    start_chat_gateway: StartChat,
    supabase_settings: MakeSettings,
    supabase: FakeSupabase,
    dify: FakeDify,
    fetch: Fetch,
) -> None:
    alice = supabase.session_json(supabase.mint(ALICE))
    custom = supabase.ssr_cookie(alice, storage_key="sb-custom-auth-token")
    assert [name for name, _ in custom] == ["sb-custom-auth-token"]
    # Another sb-*-auth-token is not guessed at: it may have been planted from a sibling subdomain.
    await assert_rejected(fetch, chat_gateway, dify, cookies(custom))
    # A custom storage key is named in SUPABASE_COOKIE_NAME; then the default name is not read.
    configured = start_chat_gateway(supabase=supabase_settings(cookie="sb-custom-auth-token"))
    await assert_accepted(fetch, configured, dify, cookies(custom), ALICE)
    chunked = supabase.ssr_cookie(alice, storage_key="sb-custom-auth-token", chunk_size=400)
    await assert_accepted(fetch, configured, dify, cookies(chunked), ALICE)
    default = supabase.ssr_cookie(supabase.session_json(supabase.mint(BOB)))
    await assert_rejected(fetch, configured, dify, cookies(default))


@pytest.mark.gen_test
async def test_code_verifier_cookie_is_not_a_session(
    chat_gateway: RunningGateway, supabase: FakeSupabase, dify: FakeDify, fetch: Fetch
) -> None:
    verifier = ("sb-127-auth-token-code-verifier", "base64-" + b64url(b'"pkce-verifier-value"'))
    body = await assert_rejected(fetch, chat_gateway, dify, cookies([verifier]))
    assert "no session" in body["message"]
    session = supabase.ssr_cookie(supabase.session_json(supabase.mint(ALICE)))
    await assert_accepted(fetch, chat_gateway, dify, cookies([verifier, *session]), ALICE)


@pytest.mark.gen_test
async def test_bearer_wins_over_the_cookie(
    chat_gateway: RunningGateway, supabase: FakeSupabase, dify: FakeDify, fetch: Fetch
) -> None:
    cookie = cookie_session(supabase, supabase.mint(BOB))
    await assert_accepted(fetch, chat_gateway, dify, {**cookie, **bearer(supabase.mint(ALICE))}, ALICE)
    await assert_rejected(fetch, chat_gateway, dify, {**cookie, **bearer(supabase.mint(ALICE, ttl=-120))})
    await assert_accepted(fetch, chat_gateway, dify, cookie, BOB)


# -- bad sessions ------------------------------------------------------------------------


@pytest.mark.gen_test
@pytest.mark.parametrize("mode", ["local", "remote"])
@pytest.mark.parametrize(("case", "build", "keyless"), BAD_SESSIONS, ids=[c for c, _, _ in BAD_SESSIONS])
async def test_bad_sessions_are_401(
    case: str,
    build: Build,
    keyless: bool,
    mode: str,
    start_chat_gateway: StartChat,
    supabase_settings: MakeSettings,
    supabase: FakeSupabase,
    dify: FakeDify,
    fetch: Fetch,
) -> None:
    gateway = start_chat_gateway(supabase=supabase_settings(auth_mode=mode))
    body = await assert_rejected(fetch, gateway, dify, build(supabase))
    if case == "no session":
        assert "no session" in body["message"]
    if mode == "remote" and keyless:
        assert supabase.user_calls == 0, "a token refused by its claims alone must not reach Supabase"
    # Positive control: the same gateway accepts a good token.
    await assert_accepted(fetch, gateway, dify, bearer(supabase.mint(CAROL)), CAROL)


# -- the JWKS ----------------------------------------------------------------------------


@pytest.mark.gen_test
async def test_jwks_is_fetched_once_for_many_requests(
    chat_gateway: RunningGateway, supabase: FakeSupabase, dify: FakeDify, fetch: Fetch
) -> None:
    for user in (ALICE, BOB, CAROL) * 4:
        await assert_accepted(fetch, chat_gateway, dify, bearer(supabase.mint(user)), user)
    await assert_rejected(fetch, chat_gateway, dify, bearer(tampered_signature(supabase)))
    assert supabase.jwks_fetches == 1


@pytest.mark.gen_test
async def test_jwks_max_age_is_honoured(
    chat_gateway: RunningGateway,
    supabase: FakeSupabase,
    dify: FakeDify,
    fetch: Fetch,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(auth.supabase, "JWKS_MIN_MAX_AGE", 0.0)
    supabase.jwks_cache_control = "public, max-age=1"
    token = bearer(supabase.mint(ALICE))
    await assert_accepted(fetch, chat_gateway, dify, token, ALICE)
    await assert_accepted(fetch, chat_gateway, dify, token, ALICE)
    assert supabase.jwks_fetches == 1
    await asyncio.sleep(1.1)
    await assert_accepted(fetch, chat_gateway, dify, token, ALICE)
    assert supabase.jwks_fetches == 2
    await assert_accepted(fetch, chat_gateway, dify, token, ALICE)
    assert supabase.jwks_fetches == 2


@pytest.mark.gen_test
@pytest.mark.parametrize("cache_control", ["no-store", "no-cache, max-age=0", "max-age=0"])
async def test_an_uncacheable_jwks_is_still_kept_for_a_while(
    cache_control: str, chat_gateway: RunningGateway, supabase: FakeSupabase, dify: FakeDify, fetch: Fetch
) -> None:
    supabase.jwks_cache_control = cache_control
    for _ in range(5):
        await assert_accepted(fetch, chat_gateway, dify, bearer(supabase.mint(ALICE)), ALICE)
    assert supabase.jwks_fetches == 1


@pytest.mark.gen_test
async def test_unknown_kid_refetches_once_then_cools_down(
    chat_gateway: RunningGateway, supabase: FakeSupabase, dify: FakeDify, fetch: Fetch
) -> None:
    await assert_accepted(fetch, chat_gateway, dify, bearer(supabase.mint(ALICE)), ALICE)
    assert supabase.jwks_fetches == 1
    old = supabase.mint(BOB)  # signed by the key about to be rotated out of first place
    rotated = supabase.rotate_key()
    token = supabase.mint(ALICE)
    assert jwt.get_unverified_header(token)["kid"] == rotated
    await assert_accepted(fetch, chat_gateway, dify, bearer(token), ALICE)
    assert supabase.jwks_fetches == 2
    await assert_accepted(fetch, chat_gateway, dify, bearer(supabase.mint(BOB)), BOB)
    await assert_accepted(fetch, chat_gateway, dify, bearer(old), BOB)  # the old key is still served
    assert supabase.jwks_fetches == 2
    # Within the cooldown, an unknown kid (made up, or genuinely new) costs Supabase nothing.
    await assert_rejected(fetch, chat_gateway, dify, bearer(supabase.mint(ALICE, headers={"kid": "made-up"})))
    supabase.rotate_key()
    await assert_rejected(fetch, chat_gateway, dify, bearer(supabase.mint(ALICE)))
    assert supabase.jwks_fetches == 2


@pytest.mark.gen_test
async def test_unknown_kid_refetches_again_after_the_cooldown(
    chat_gateway: RunningGateway,
    supabase: FakeSupabase,
    dify: FakeDify,
    fetch: Fetch,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(auth.supabase, "JWKS_UNKNOWN_KID_COOLDOWN", 0.3)
    await assert_accepted(fetch, chat_gateway, dify, bearer(supabase.mint(ALICE)), ALICE)
    supabase.rotate_key()
    await assert_accepted(fetch, chat_gateway, dify, bearer(supabase.mint(ALICE)), ALICE)
    supabase.rotate_key()
    await assert_rejected(fetch, chat_gateway, dify, bearer(supabase.mint(BOB)))
    assert supabase.jwks_fetches == 2
    await asyncio.sleep(0.35)
    await assert_accepted(fetch, chat_gateway, dify, bearer(supabase.mint(BOB)), BOB)
    assert supabase.jwks_fetches == 3


@pytest.mark.gen_test
async def test_concurrent_first_requests_share_one_jwks_fetch(
    chat_gateway: RunningGateway, supabase: FakeSupabase, dify: FakeDify
) -> None:
    supabase.delay = 0.3
    responses = await burst(chat_gateway.url + PARAMETERS, bearer(supabase.mint(ALICE)), 20)
    assert [r.code for r in responses] == [200] * 20
    assert supabase.jwks_fetches == 1
    assert {r.query["user"] for r in dify.requests} == {ALICE} and len(dify.requests) == 20


@pytest.mark.gen_test
@pytest.mark.parametrize("status", [500, 503])
async def test_jwks_unavailable_is_503_not_401(
    status: int,
    chat_gateway: RunningGateway,
    supabase: FakeSupabase,
    dify: FakeDify,
    fetch: Fetch,
    logs: LogCapture,
) -> None:
    supabase.status_override = status
    token = bearer(supabase.mint(ALICE))
    await assert_rejected(fetch, chat_gateway, dify, token, 503, "auth_unavailable")
    assert supabase.jwks_fetches == 1
    warnings = [r for r in logs.records() if r["message"] == "supabase unavailable"]
    assert warnings and warnings[0]["level"] == "WARNING" and str(status) in warnings[0]["reason"]
    # A token that is bad on its face is still a 401.
    await assert_rejected(fetch, chat_gateway, dify, bearer("not-a-jwt"))
    # Supabase back: the next request fetches the keys.
    supabase.status_override = None
    await assert_accepted(fetch, chat_gateway, dify, token, ALICE)
    assert supabase.jwks_fetches == 2


@pytest.mark.gen_test
async def test_jwks_unreachable_is_503(
    chat_gateway: RunningGateway, supabase: FakeSupabase, dify: FakeDify, fetch: Fetch
) -> None:
    token = bearer(supabase.mint(ALICE))
    await supabase.aclose()
    await assert_rejected(fetch, chat_gateway, dify, token, 503, "auth_unavailable")
    cookie = cookie_session(supabase, supabase.mint(ALICE))
    await assert_rejected(fetch, chat_gateway, dify, cookie, 503, "auth_unavailable")


@pytest.mark.gen_test
@pytest.mark.parametrize("outage", ["503", "closed"])
async def test_known_keys_are_kept_when_a_refresh_fails(
    outage: str,
    chat_gateway: RunningGateway,
    supabase: FakeSupabase,
    dify: FakeDify,
    fetch: Fetch,
    logs: LogCapture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(auth.supabase, "JWKS_MIN_MAX_AGE", 0.0)
    supabase.jwks_cache_control = "max-age=0"  # stale at once: every request refreshes
    token = bearer(supabase.mint(ALICE))
    await assert_accepted(fetch, chat_gateway, dify, token, ALICE)
    await assert_accepted(fetch, chat_gateway, dify, token, ALICE)
    assert supabase.jwks_fetches == 2  # the keys really did expire
    if outage == "503":
        supabase.status_override = 503
    else:
        await supabase.aclose()
    await assert_accepted(fetch, chat_gateway, dify, token, ALICE)
    await assert_rejected(fetch, chat_gateway, dify, bearer(tampered_signature(supabase)))
    # The refresh runs behind the requests: give it a moment to fail and say so.
    for _ in range(40):
        if any(r["message"] == "supabase jwks refresh failed; using the keys already known" for r in logs.records()):
            break
        await asyncio.sleep(0.05)
    else:
        raise AssertionError("the failed refresh was not logged")
    if outage == "503":
        assert supabase.jwks_fetches == 3  # one failed refresh; then no retry for JWKS_RETRY_SECONDS


# -- remote mode -------------------------------------------------------------------------


@pytest.mark.gen_test
async def test_remote_mode_asks_supabase_once_then_caches(
    start_chat_gateway: StartChat,
    supabase_settings: MakeSettings,
    supabase: FakeSupabase,
    dify: FakeDify,
    fetch: Fetch,
) -> None:
    gateway = start_chat_gateway(supabase=supabase_settings(auth_mode="remote"))
    token = supabase.mint(ALICE)
    await assert_accepted(fetch, gateway, dify, bearer(token), ALICE)
    assert supabase.user_calls == 1
    await assert_accepted(fetch, gateway, dify, bearer(token), ALICE)
    await assert_accepted(fetch, gateway, dify, cookie_session(supabase, token), ALICE)
    assert supabase.user_calls == 1
    assert supabase.jwks_fetches == 0
    (asked,) = supabase.calls("/auth/v1/user")
    assert asked.method == "GET"
    assert asked.headers["apikey"] == supabase.anon_key
    assert asked.headers["authorization"] == f"Bearer {token}"
    assert all(dify.api_key not in value for value in asked.headers.values())
    # Another token is another question.
    await assert_accepted(fetch, gateway, dify, bearer(supabase.mint(BOB)), BOB)
    assert supabase.user_calls == 2


@pytest.mark.gen_test
async def test_remote_mode_refuses_a_revoked_session(
    start_chat_gateway: StartChat,
    supabase_settings: MakeSettings,
    supabase: FakeSupabase,
    dify: FakeDify,
    fetch: Fetch,
) -> None:
    gateway = start_chat_gateway(supabase=supabase_settings(auth_mode="remote"))
    session_id = str(uuid.uuid4())
    token = supabase.mint(ALICE, session_id=session_id)
    supabase.revoke(session_id)
    await assert_rejected(fetch, gateway, dify, bearer(token))
    await assert_rejected(fetch, gateway, dify, cookie_session(supabase, token))
    assert supabase.user_calls == 2  # a refusal is not cached as a success
    # Local mode cannot see revocation: the same token is still good there.
    local = start_chat_gateway()
    await assert_accepted(fetch, local, dify, bearer(token), ALICE)


@pytest.mark.gen_test
async def test_remote_mode_sees_revocation_once_the_cache_expires(
    start_chat_gateway: StartChat,
    supabase_settings: MakeSettings,
    supabase: FakeSupabase,
    dify: FakeDify,
    fetch: Fetch,
) -> None:
    gateway = start_chat_gateway(supabase=supabase_settings(auth_mode="remote", user_cache_seconds=0.5))
    session_id = str(uuid.uuid4())
    token = bearer(supabase.mint(ALICE, session_id=session_id))
    await assert_accepted(fetch, gateway, dify, token, ALICE)
    supabase.revoke(session_id)
    await assert_accepted(fetch, gateway, dify, token, ALICE)  # the cached answer
    assert supabase.user_calls == 1
    await asyncio.sleep(0.6)
    await assert_rejected(fetch, gateway, dify, token)
    assert supabase.user_calls == 2


@pytest.mark.gen_test
async def test_remote_mode_never_trusts_a_cached_answer_past_exp(
    start_chat_gateway: StartChat,
    supabase_settings: MakeSettings,
    supabase: FakeSupabase,
    dify: FakeDify,
    fetch: Fetch,
) -> None:
    gateway = start_chat_gateway(supabase=supabase_settings(auth_mode="remote", user_cache_seconds=30))
    exp = int(time.time()) + 2
    token = bearer(supabase.mint(ALICE, exp=exp))
    await assert_accepted(fetch, gateway, dify, token, ALICE)
    assert supabase.user_calls == 1
    await asyncio.sleep(exp - time.time() + 0.1)
    await assert_rejected(fetch, gateway, dify, token)
    assert supabase.user_calls == 1, "an expired token is refused here, without asking Supabase"


@pytest.mark.gen_test
async def test_remote_mode_refuses_banned_and_deleted_users(
    start_chat_gateway: StartChat,
    supabase_settings: MakeSettings,
    supabase: FakeSupabase,
    dify: FakeDify,
    fetch: Fetch,
) -> None:
    gateway = start_chat_gateway(supabase=supabase_settings(auth_mode="remote"))
    alice, bob = supabase.mint(ALICE), supabase.mint(BOB)
    supabase.ban(ALICE)
    supabase.delete_user(BOB)
    await assert_rejected(fetch, gateway, dify, bearer(alice))
    await assert_rejected(fetch, gateway, dify, bearer(bob))
    assert supabase.user_calls == 2
    await assert_accepted(fetch, gateway, dify, bearer(supabase.mint(CAROL)), CAROL)
    supabase.ban(ALICE, banned=False)
    await assert_accepted(fetch, gateway, dify, bearer(alice), ALICE)


@pytest.mark.gen_test
@pytest.mark.parametrize("outage", [500, 502, 503, 429, "closed"])
async def test_remote_mode_supabase_down_is_503(
    outage: int | str,
    start_chat_gateway: StartChat,
    supabase_settings: MakeSettings,
    supabase: FakeSupabase,
    dify: FakeDify,
    fetch: Fetch,
    logs: LogCapture,
) -> None:
    gateway = start_chat_gateway(supabase=supabase_settings(auth_mode="remote"))
    token = bearer(supabase.mint(ALICE))
    if isinstance(outage, int):
        supabase.status_override = outage
    else:
        await supabase.aclose()
    await assert_rejected(fetch, gateway, dify, token, 503, "auth_unavailable")
    assert any(r["message"] == "supabase unavailable" and r["level"] == "WARNING" for r in logs.records())
    if isinstance(outage, int):
        assert supabase.user_calls == 1
        supabase.status_override = None  # back: the failure was not cached
        await assert_accepted(fetch, gateway, dify, token, ALICE)
        assert supabase.user_calls == 2


@pytest.mark.gen_test
async def test_remote_mode_wrong_anon_key_is_503_and_logged(
    start_chat_gateway: StartChat,
    supabase_settings: MakeSettings,
    supabase: FakeSupabase,
    dify: FakeDify,
    fetch: Fetch,
    logs: LogCapture,
) -> None:
    gateway = start_chat_gateway(supabase=supabase_settings(auth_mode="remote", anon_key="wrong"))
    await assert_rejected(fetch, gateway, dify, bearer(supabase.mint(ALICE)), 503, "auth_unavailable")
    assert supabase.user_calls == 1
    assert supabase.calls("/auth/v1/user")[0].headers["apikey"] == "wrong"
    errors = [r for r in logs.records() if r["level"] == "ERROR"]
    assert [r["message"] for r in errors] == ["supabase refused the gateway's SUPABASE_ANON_KEY"]


@pytest.mark.gen_test
async def test_remote_mode_concurrent_requests_share_one_call(
    start_chat_gateway: StartChat, supabase_settings: MakeSettings, supabase: FakeSupabase, dify: FakeDify
) -> None:
    # No cache at all: only the shared in-flight call can keep this to one question.
    gateway = start_chat_gateway(supabase=supabase_settings(auth_mode="remote", user_cache_seconds=0))
    supabase.delay = 0.5
    responses = await burst(gateway.url + PARAMETERS, bearer(supabase.mint(ALICE)), 50)
    assert [r.code for r in responses] == [200] * 50
    assert supabase.user_calls == 1
    assert len(dify.requests) == 50 and {r.query["user"] for r in dify.requests} == {ALICE}


# -- CSRF --------------------------------------------------------------------------------


async def rename(fetch: Fetch, gateway: RunningGateway, conversation_id: str, headers: Headers) -> HTTPResponse:
    response: HTTPResponse = await fetch(
        f"{gateway.url}/api/chat/conversations/{conversation_id}/name",
        method="POST",
        body=json.dumps({"name": "Renamed"}),
        headers={"Content-Type": "application/json", **headers},
    )
    return response


@pytest.mark.gen_test
@pytest.mark.parametrize(
    "cross_site",
    [{"Origin": EVIL}, {"Sec-Fetch-Site": "cross-site"}, {"Origin": EVIL, "Sec-Fetch-Site": "cross-site"}],
    ids=["origin", "sec-fetch-site", "both"],
)
async def test_cross_site_cookie_session_is_403_but_bearer_passes(
    cross_site: Headers, chat_gateway: RunningGateway, supabase: FakeSupabase, dify: FakeDify, fetch: Fetch
) -> None:
    conversation = dify.dify.new_conversation(ALICE, {}, "Old name")
    token = supabase.mint(ALICE)
    response = await rename(fetch, chat_gateway, conversation.id, {**cookie_session(supabase, token), **cross_site})
    assert response.code == 403
    body = json.loads(response.body)
    assert body["error"] == "csrf_rejected" and body["message"]
    assert dify.requests == [] and conversation.name == "Old name"

    response = await rename(fetch, chat_gateway, conversation.id, {**bearer(token), **cross_site})
    assert response.code == 200, response.body
    assert conversation.name == "Renamed"
    (sent,) = dify.requests
    assert sent.path == f"/v1/conversations/{conversation.id}/name" and sent.json["user"] == ALICE

    # Positive control: the cookie session from the app's own origin may rename.
    own = {**cookie_session(supabase, token), "Origin": chat_gateway.url, "Sec-Fetch-Site": "same-origin"}
    assert (await rename(fetch, chat_gateway, conversation.id, own)).code == 200
    assert len(dify.requests) == 2


# -- secrets -----------------------------------------------------------------------------


@pytest.mark.gen_test
async def test_no_credential_reaches_a_response_or_a_log_line(
    start_chat_gateway: StartChat,
    supabase_settings: MakeSettings,
    supabase: FakeSupabase,
    dify: FakeDify,
    fetch: Fetch,
    logs: LogCapture,
) -> None:
    gateways = [
        start_chat_gateway(),
        start_chat_gateway(supabase=supabase_settings(auth_mode="remote")),
        start_chat_gateway(supabase=supabase_settings(auth_mode="remote", anon_key="sb_secret_wrong-key-9f8e7d")),
    ]
    sent: list[Headers] = [build(supabase) for _, build, _ in BAD_SESSIONS]
    session_id = str(uuid.uuid4())
    revoked = supabase.mint(ALICE, session_id=session_id, alg="HS256")
    supabase.revoke(session_id)
    sent += [bearer(revoked), cookie_session(supabase, supabase.mint(BOB), encoding="raw", chunk_size=400)]
    sent += [bearer(supabase.mint(CAROL)), cookie_session(supabase, supabase.mint(ALICE))]
    bodies: list[str] = []
    for gateway in gateways:
        for headers in sent:
            response = await call(fetch, gateway, headers)
            assert response.code in (200, 401, 503), response.body
            if response.code != 200:
                bodies.append(response.body.decode())
    assert len(bodies) > 3 * len(BAD_SESSIONS)
    assert logs.lines, "the run logs something"
    secrets = {secret for headers in sent for secret in credentials(headers) if len(secret) >= 8}
    secrets |= {JWT_SECRET, supabase.anon_key, "sb_secret_wrong-key-9f8e7d", dify.api_key}
    for text in [*bodies, logs.text]:
        assert JWT_SHAPE.search(text) is None
        for secret in secrets:
            assert secret not in text
            assert urllib.parse.unquote(secret) not in text
