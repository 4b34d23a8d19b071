"""An in-process fake Supabase Auth (GoTrue) server, for demo mode and for tests.

It speaks what gatehouse meets on the wire (``/work/shared/reference/wire-formats.md`` sections 3 and 4,
and GoTrue's own ``internal/api/auth.go`` / ``errors.go``):

* ``GET /auth/v1/.well-known/jwks.json`` (public, no ``apikey``): ``{"keys": [...]}`` with the public
  half of every asymmetric key (EC: ``kty crv x y kid alg use``; RSA: ``kty n e kid alg use``) and
  ``Cache-Control`` from `SupabaseAuthFake.jwks_cache_control` (``max-age=600``). HS256 is never published.
* ``GET /auth/v1/user`` (``apikey`` + ``Authorization: Bearer <jwt>``): the GoTrue user object, or
  401 ``no_authorization`` ("This endpoint requires a valid Bearer token"), 403 ``bad_jwt`` ("invalid JWT:
  unable to parse or verify signature, <reason>", the reason worded like golang-jwt v5, e.g. ``token has
  invalid claims: token is expired``), 400 ``bad_jwt`` (sub not a UUID), 403 ``user_not_found``,
  403 ``session_not_found`` (revoked ``session_id``), 403 ``user_banned``. Only ``exp``/``nbf`` are checked
  (GoTrue checks neither ``aud`` nor ``iss``).
* ``POST /auth/v1/token?grant_type=password`` ``{"email", "password"}``: a session; else 400
  ``invalid_credentials`` ("Invalid login credentials").
  ``POST /auth/v1/token?grant_type=refresh_token`` ``{"refresh_token"}``: a rotated session (same
  ``session_id``); unknown token or revoked session: 400 ``refresh_token_not_found`` ("Invalid Refresh
  Token: Refresh Token Not Found"); a token already rotated: 400 ``refresh_token_already_used`` ("Invalid
  Refresh Token: Already Used", and, as GoTrue's reuse detection does, the session is revoked).
* ``POST /auth/v1/logout?scope=global|local|others`` (authenticated like ``/user``): 204; ``local`` revokes
  the token's session, ``global`` (GoTrue's default) every session of the user, ``others`` the rest.

Every route except the JWKS needs the ``apikey`` header (or ``?apikey=``) equal to ``anon_key``, else
Supabase's API gateway answers 401 ``{"message": "No API key found in request", "hint": ...}`` or
``{"message": "Invalid API key", "hint": ...}``.

GoTrue error bodies depend on the request's ``X-Supabase-Api-Version`` header: a date >= 2024-01-01
(supabase-py sends ``2024-01-01``) gets ``{"code": "<error_code>", "message": ...}`` and the response
header ``X-Supabase-Api-Version: 2024-01-01``; no header, an older date or garbage gets the legacy
``{"code": <status>, "error_code": ..., "msg": ...}``.

`SupabaseAuthFake.status_override` forces every route to answer that status (500: GoTrue's
``unexpected_failure``; anything else: a gateway-style ``{"message": ...}``), `SupabaseAuthFake.delay`
delays every answer (wakes early on `SupabaseAuthFake.shutdown`).

Access tokens carry Supabase's exact claims (`SupabaseAuthFake.mint`). `ssr_cookie` produces the cookies
@supabase/ssr 0.12 writes for a session (``base64-`` + unpadded base64url of the JSON, or raw JSON; chunked
by ``createChunks`` over the ``encodeURIComponent`` form, 3180 chars, never splitting an escape or a UTF-8
sequence).

Like Supabase's API gateway, every answer allows any origin (``Access-Control-Allow-Origin: *``, no
credentials: supabase-js sends the anon key and the session as headers, never cookies), and a CORS
preflight (``OPTIONS``) is answered 204 without an ``apikey``, so a page (demo mode's, or the Next.js
example's) signs in from the browser as supabase-js does.

Whoever serves `make_supabase_app` sets `SupabaseAuthFake.base_url` (the issuer defaults to
``<base_url>/auth/v1``); if nobody did, the first request's host is used.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import json
import re
import secrets
import time
import uuid
from collections import deque
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Literal
from urllib.parse import quote, unquote_to_bytes, urlsplit

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm
from tornado.web import Application

from demo.common import PathOnlyLogging

__all__ = [
    "DEMO_EMAIL",
    "DEMO_PASSWORD",
    "DEMO_USER_ID",
    "MAX_CHUNK_SIZE",
    "SupabaseAuthFake",
    "SupabaseUser",
    "create_chunks",
    "encode_uri_component",
    "make_supabase_app",
    "ssr_cookie",
    "ssr_cookie_value",
    "storage_key_for",
]

DEMO_USER_ID = "6f1d2c3b-4a5e-4f60-8a7b-9c0d1e2f3a4b"
DEMO_EMAIL = "demo@example.com"
DEMO_PASSWORD = "demo"
MAX_CHUNK_SIZE = 3180  # @supabase/ssr's MAX_CHUNK_SIZE
API_VERSION_HEADER = "X-Supabase-Api-Version"
API_VERSION_2024 = "2024-01-01"

Json = dict[str, Any]
Alg = Literal["ES256", "RS256", "HS256"]
_VERIFY_FAILURE = {
    "ES256": "crypto/ecdsa: verification error",
    "RS256": "crypto/rsa: verification error",
    "HS256": "signature is invalid",
}
_BEARER = re.compile(r"^(?:B|b)earer (\S+$)")  # GoTrue's bearerRegexp
# What Supabase's gateway allows a browser to send (supabase-js's headers).
CORS_ALLOW_HEADERS = "authorization, apikey, content-type, x-client-info, x-supabase-api-version"


def _timestamp(epoch: float) -> str:
    """GoTrue's timestamp style: RFC 3339, microseconds, ``Z``."""
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# --------------------------------------------------------------------------------------------------
# @supabase/ssr cookie encoding
# --------------------------------------------------------------------------------------------------
def storage_key_for(supabase_url: str) -> str:
    """``sb-<first label of the host>-auth-token``, as supabase-js names its storage key."""
    host = urlsplit(supabase_url).hostname or ""
    return f"sb-{host.split('.')[0]}-auth-token"


def encode_uri_component(value: str) -> str:
    """JavaScript's ``encodeURIComponent``: UTF-8, upper-case hex, ``A-Za-z0-9-_.!~*'()`` kept."""
    return quote(value, safe="!~*'()")


def ssr_cookie_value(session: Mapping[str, Any] | str, encoding: Literal["base64", "raw"] = "base64") -> str:
    """The un-chunked cookie value @supabase/ssr stores for ``session`` (a dict, or its JSON text as-is)."""
    text = session if isinstance(session, str) else json.dumps(session, separators=(",", ":"), ensure_ascii=False)
    if encoding == "raw":
        return text
    return "base64-" + base64.urlsafe_b64encode(text.encode()).rstrip(b"=").decode()


def create_chunks(key: str, value: str, chunk_size: int = MAX_CHUNK_SIZE) -> list[tuple[str, str]]:
    """@supabase/ssr's ``createChunks``: the (decoded) values its ``setAll`` receives.

    The split is measured on ``encodeURIComponent(value)``: a chunk never ends inside a ``%XX`` escape
    nor inside a multi-byte UTF-8 sequence, so it may be shorter than ``chunk_size`` once encoded."""
    encoded = encode_uri_component(value)
    if len(encoded) <= chunk_size:
        return [(key, value)]
    chunks: list[str] = []
    while encoded:
        head = encoded[:chunk_size]
        last_escape = head.rfind("%")
        if last_escape > chunk_size - 3:
            head = head[:last_escape]
        decoded = ""
        while head:
            try:
                decoded = unquote_to_bytes(head).decode("utf-8")
                break
            except UnicodeDecodeError:
                if len(head) > 3 and head[-3] == "%":
                    head = head[:-3]
                else:
                    raise
        chunks.append(decoded)
        encoded = encoded[len(head) :]
    return [(f"{key}.{i}", chunk) for i, chunk in enumerate(chunks)]


def ssr_cookie(
    session: Mapping[str, Any] | str,
    storage_key: str,
    *,
    encoding: Literal["base64", "raw"] = "base64",
    chunk_size: int = MAX_CHUNK_SIZE,
    percent_encode: bool = True,
) -> list[tuple[str, str]]:
    """The ``(name, value)`` cookies @supabase/ssr 0.12 writes for ``session``.

    ``percent_encode=True`` (default) gives the values as they travel in ``Set-Cookie`` / ``Cookie``
    headers (``cookie.serialize`` applies ``encodeURIComponent``; base64 values are unchanged by it);
    ``False`` gives what ``setAll`` receives (raw JSON for ``encoding="raw"``)."""
    chunks = create_chunks(storage_key, ssr_cookie_value(session, encoding), chunk_size)
    if percent_encode:
        return [(name, encode_uri_component(value)) for name, value in chunks]
    return chunks


# --------------------------------------------------------------------------------------------------
# The fake's state
# --------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class SupabaseUser:
    id: str
    email: str = ""
    password: str | None = None  # None: cannot sign in with a password
    phone: str = ""
    user_metadata: Json = dataclasses.field(default_factory=dict)
    app_metadata: Json = dataclasses.field(default_factory=lambda: {"provider": "email", "providers": ["email"]})
    is_anonymous: bool = False
    banned: bool = False
    created_at: float = dataclasses.field(default_factory=time.time)
    last_sign_in_at: float | None = None

    def to_json(self) -> Json:
        """The user object GoTrue returns (``GET /user`` and inside sessions)."""
        created = _timestamp(self.created_at)
        signed_in = _timestamp(self.last_sign_in_at or self.created_at)
        return {
            "id": self.id,
            "aud": "authenticated",
            "role": "authenticated",
            "email": self.email,
            "email_confirmed_at": created,
            "phone": self.phone,
            "confirmed_at": created,
            "last_sign_in_at": signed_in,
            "app_metadata": self.app_metadata,
            "user_metadata": self.user_metadata,
            "identities": [],
            "created_at": created,
            "updated_at": signed_in,
            "is_anonymous": self.is_anonymous,
        }


@dataclasses.dataclass
class SigningKey:
    kid: str
    alg: Literal["ES256", "RS256"]
    private_key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey

    def public_jwk(self) -> Json:
        if isinstance(self.private_key, ec.EllipticCurvePrivateKey):
            jwk = ECAlgorithm.to_jwk(self.private_key.public_key(), as_dict=True)
            public = {k: jwk[k] for k in ("kty", "crv", "x", "y")}
        else:
            jwk = RSAAlgorithm.to_jwk(self.private_key.public_key(), as_dict=True)
            public = {k: jwk[k] for k in ("kty", "n", "e")}
        return {**public, "kid": self.kid, "alg": self.alg, "use": "sig"}


@dataclasses.dataclass
class AuthRequest:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # lower-case names
    at: float  # time.monotonic()


@dataclasses.dataclass
class _RefreshToken:
    user_id: str
    session_id: str | None
    used: bool = False


class GoTrueError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


class SupabaseAuthFake:
    """State of one fake Supabase project: signing keys, users, sessions, refresh tokens, counters."""

    def __init__(
        self,
        *,
        anon_key: str = "demo-anon-key",
        issuer: str | None = None,
        base_url: str | None = None,
        jwk: Mapping[str, Any] | None = None,
        kid: str = "demo-es256",
        jwt_secret: str | None = None,
        demo_user: bool = True,
    ) -> None:
        self.anon_key = anon_key
        self.base_url = base_url
        self._issuer = issuer
        self.jwt_secret = jwt_secret
        self.keys: list[SigningKey] = []
        if jwk is not None:
            self.add_jwk(jwk)
        else:
            self.add_key("ES256", kid)
        self.users: dict[str, SupabaseUser] = {}
        self.sessions: dict[str, str] = {}  # session id -> user id, for every session the fake issued
        self.revoked: set[str] = set()
        self.refresh_tokens: dict[str, _RefreshToken] = {}
        self.requests: deque[AuthRequest] = deque(maxlen=1000)  # bounded: a demo runs for long
        self.jwks_fetches = 0
        self.user_calls = 0
        self.jwks_cache_control = "max-age=600"
        self.status_override: int | None = None
        self.delay = 0.0
        self.access_token_ttl = 3600
        self._closing = asyncio.Event()
        if demo_user:
            self.add_user(DEMO_EMAIL, DEMO_PASSWORD, id=DEMO_USER_ID, user_metadata={"name": "Demo User"})

    # ---- keys -------------------------------------------------------------------------------
    @property
    def issuer(self) -> str:
        if self._issuer is not None:
            return self._issuer
        if self.base_url is None:
            raise RuntimeError("SupabaseAuthFake: set base_url (or pass issuer=) before minting tokens")
        return f"{self.base_url.rstrip('/')}/auth/v1"

    @issuer.setter
    def issuer(self, value: str | None) -> None:
        self._issuer = value

    def add_key(self, alg: Literal["ES256", "RS256"] = "ES256", kid: str | None = None) -> SigningKey:
        """Generate a key; it signs the following mints of ``alg`` and the JWKS serves it."""
        private: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
        if alg == "ES256":
            private = ec.generate_private_key(ec.SECP256R1())
        else:
            private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        key = SigningKey(kid or f"{alg.lower()}-{secrets.token_hex(4)}", alg, private)
        self.keys.append(key)
        return key

    def add_jwk(self, jwk: Mapping[str, Any]) -> SigningKey:
        """Adopt a private JWK (EC P-256 or RSA, with ``kid``), e.g. the interop fixture's."""
        parsed = jwt.PyJWK(dict(jwk))
        private = parsed.key
        if isinstance(private, ec.EllipticCurvePrivateKey):
            alg: Literal["ES256", "RS256"] = "ES256"
        elif isinstance(private, rsa.RSAPrivateKey):
            alg = "RS256"
        else:
            raise ValueError("add_jwk needs a private EC or RSA JWK")
        key = SigningKey(str(jwk.get("kid") or f"{alg.lower()}-{secrets.token_hex(4)}"), alg, private)
        self.keys.append(key)
        return key

    def remove_key(self, kid: str) -> None:
        """Stop serving (and accepting) a key: tokens it signed now fail with ``bad_jwt``."""
        self.keys = [k for k in self.keys if k.kid != kid]

    def signing_key(self, alg: Literal["ES256", "RS256"], kid: str | None = None) -> SigningKey:
        for key in reversed(self.keys):
            if (kid is None and key.alg == alg) or key.kid == kid:
                return key
        if kid is None and alg == "RS256":
            return self.add_key("RS256")
        raise KeyError(f"no {alg} key {kid or ''}".strip())

    def jwks(self) -> Json:
        return {"keys": [key.public_jwk() for key in self.keys]}

    # ---- users and tokens -------------------------------------------------------------------
    def add_user(
        self,
        email: str = "",
        password: str | None = None,
        *,
        id: str | None = None,
        phone: str = "",
        user_metadata: Json | None = None,
        app_metadata: Json | None = None,
    ) -> SupabaseUser:
        user = SupabaseUser(id or str(uuid.uuid4()), email, password, phone, dict(user_metadata or {}))
        if app_metadata is not None:
            user.app_metadata = dict(app_metadata)
        self.users[user.id] = user
        return user

    def delete_user(self, user_id: str) -> None:
        self.users.pop(user_id, None)

    def ban(self, user_id: str, banned: bool = True) -> None:
        self.users[user_id].banned = banned

    def mint(
        self,
        sub: str,
        *,
        alg: Alg = "ES256",
        ttl: int | None = None,
        session_id: str | None = None,
        kid: str | None = None,
        headers: Mapping[str, Any] | None = None,
        **claims: Any,
    ) -> str:
        """An access token for ``sub`` with Supabase's claims (an unknown ``sub`` becomes a user).

        ``ttl`` defaults to 3600 s (negative: already expired); ``session_id`` defaults to a new uuid4
        (``""`` means "no session", which GoTrue does not check). ``claims`` override, a ``None``
        value removes the claim. ``kid`` picks a specific key; ``headers`` are merged into the JWT header
        (e.g. ``{"kid": "unknown"}``). HS256 needs `jwt_secret` and has no ``kid``."""
        now = int(time.time())
        user = self.users.get(sub)
        if user is None and sub:
            user = self.add_user(str(claims.get("email") or ""), id=sub)
        sid = str(uuid.uuid4()) if session_id is None else session_id
        if sid:
            self.sessions[sid] = sub
        iat = int(claims.get("iat") or now)
        payload: Json = {
            "iss": self.issuer,
            "sub": sub,
            "aud": "authenticated",
            "exp": iat + (self.access_token_ttl if ttl is None else ttl),
            "iat": iat,
            "email": user.email if user else "",
            "phone": user.phone if user else "",
            "app_metadata": user.app_metadata if user else {},
            "user_metadata": user.user_metadata if user else {},
            "role": "authenticated",
            "aal": "aal1",
            "amr": [{"method": "password", "timestamp": iat}],
            "session_id": sid,
            "is_anonymous": user.is_anonymous if user else False,
        }
        for name, value in claims.items():
            if value is None:
                payload.pop(name, None)
            else:
                payload[name] = value
        header: Json = {}
        if alg == "HS256":
            if not self.jwt_secret:
                raise RuntimeError("SupabaseAuthFake: HS256 needs jwt_secret")
            key: Any = self.jwt_secret
        else:
            signing = self.signing_key(alg, kid)
            key, header["kid"] = signing.private_key, signing.kid
        header.update(headers or {})
        return jwt.encode(payload, key, algorithm=alg, headers=header or None)

    def revoke(self, session_id: str) -> None:
        """Sign a session out: ``/user`` answers ``session_not_found``, its refresh tokens die."""
        self.revoked.add(session_id)

    def session_json(self, token: str, refresh_token: str | None = None) -> Json:
        """The session GoTrue returns and @supabase/ssr stores; registers ``refresh_token`` (or a new one)."""
        claims = jwt.decode(token, options={"verify_signature": False})
        sub = str(claims.get("sub", ""))
        user = self.users.get(sub)
        user_json = user.to_json() if user else SupabaseUser(sub, str(claims.get("email", ""))).to_json()
        if refresh_token is None:
            refresh_token = secrets.token_urlsafe(9)
        if refresh_token not in self.refresh_tokens:
            self.refresh_tokens[refresh_token] = _RefreshToken(sub, claims.get("session_id") or None)
        exp, iat = int(claims["exp"]), int(claims.get("iat", time.time()))
        return {
            "access_token": token,
            "token_type": "bearer",
            "expires_in": exp - iat,
            "expires_at": exp,
            "refresh_token": refresh_token,
            "user": user_json,
        }

    def issue_session(self, user_id: str, session_id: str | None = None) -> Json:
        """A fresh access token + refresh token for ``user_id`` as a session dict."""
        return self.session_json(self.mint(user_id, session_id=session_id))

    def ssr_cookie(
        self,
        session: Mapping[str, Any] | str,
        *,
        encoding: Literal["base64", "raw"] = "base64",
        chunk_size: int = MAX_CHUNK_SIZE,
        storage_key: str | None = None,
        percent_encode: bool = True,
    ) -> list[tuple[str, str]]:
        """`ssr_cookie` with the storage key derived from `base_url` unless given."""
        if storage_key is None:
            if self.base_url is None:
                raise RuntimeError("SupabaseAuthFake: set base_url or pass storage_key")
            storage_key = storage_key_for(self.base_url)
        return ssr_cookie(session, storage_key, encoding=encoding, chunk_size=chunk_size, percent_encode=percent_encode)

    # ---- GoTrue's checks --------------------------------------------------------------------
    def verify(self, token: str) -> tuple[Json, SupabaseUser]:
        """GoTrue's ``requireAuthentication`` minus the bearer parsing; raises `GoTrueError`."""

        def bad(reason: str) -> GoTrueError:
            return GoTrueError(403, "bad_jwt", f"invalid JWT: unable to parse or verify signature, {reason}")

        if token.count(".") != 2:
            raise bad("token is malformed: token contains an invalid number of segments")
        segment = token.split(".", 1)[0]
        try:
            raw_header = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
        except ValueError:
            raise bad("token is malformed: could not base64 decode header") from None
        try:
            header = json.loads(raw_header)
        except ValueError:
            raise bad("token is malformed: could not JSON decode header") from None
        if not isinstance(header, dict):
            raise bad("token is malformed: could not JSON decode header")
        alg, kid = header.get("alg"), header.get("kid")
        if alg not in _VERIFY_FAILURE:
            raise bad(f"token is unverifiable: signing method {alg} is invalid")
        key: Any = None
        if isinstance(kid, str):
            key = next((k.private_key.public_key() for k in self.keys if k.kid == kid), None)
        if key is None and alg == "HS256" and self.jwt_secret:
            key = self.jwt_secret
        if key is None:
            shown = "<nil>" if kid is None else kid
            keyfunc = f"unrecognized JWT kid {shown} for algorithm {alg}"
            raise bad(f"token is unverifiable: error while executing keyfunc: {keyfunc}")
        try:
            claims: Json = jwt.decode(
                token,
                key,
                algorithms=[str(alg)],
                options={"verify_aud": False, "verify_iss": False, "verify_iat": False, "verify_sub": False},
            )
        except jwt.ExpiredSignatureError:
            raise bad("token has invalid claims: token is expired") from None
        except jwt.ImmatureSignatureError:
            raise bad("token has invalid claims: token is not valid yet") from None
        except jwt.InvalidSignatureError:
            raise bad(f"token signature is invalid: {_VERIFY_FAILURE[str(alg)]}") from None
        except jwt.DecodeError as exc:
            part = "signature" if "padding" in str(exc) or "signature" in str(exc).lower() else "claims"
            raise bad(f"token is malformed: could not base64 decode {part}") from None
        except (jwt.PyJWTError, ValueError, TypeError) as exc:
            raise bad(f"token is malformed: {exc}") from None
        sub = claims.get("sub")
        if not sub:
            raise GoTrueError(403, "bad_jwt", "invalid claim: missing sub claim")
        try:
            uuid.UUID(str(sub))
        except ValueError:
            raise GoTrueError(400, "bad_jwt", "invalid claim: sub claim must be a UUID") from None
        user = self.users.get(str(sub))
        if user is None:
            raise GoTrueError(403, "user_not_found", "User from sub claim in JWT does not exist")
        session_id = claims.get("session_id")
        if session_id and session_id != "00000000-0000-0000-0000-000000000000":
            try:
                uuid.UUID(str(session_id))
            except ValueError:
                raise GoTrueError(403, "bad_jwt", "invalid claim: session_id claim must be a UUID") from None
            if session_id in self.revoked:
                raise GoTrueError(403, "session_not_found", "Session from session_id claim in JWT does not exist")
        if user.banned:
            raise GoTrueError(403, "user_banned", "User is banned")
        return claims, user

    def password_grant(self, body: Json) -> Json:
        email, password = body.get("email"), body.get("password")
        user = next((u for u in self.users.values() if email and u.email == email), None)
        if user is None or user.password is None or password != user.password:
            raise GoTrueError(400, "invalid_credentials", "Invalid login credentials")
        if user.banned:
            raise GoTrueError(400, "user_banned", "User is banned")
        user.last_sign_in_at = time.time()
        return self.issue_session(user.id)

    def refresh_grant(self, body: Json) -> Json:
        token = str(body.get("refresh_token") or "")
        record = self.refresh_tokens.get(token)
        if record is None or (record.session_id is not None and record.session_id in self.revoked):
            raise GoTrueError(400, "refresh_token_not_found", "Invalid Refresh Token: Refresh Token Not Found")
        if record.used:
            if record.session_id is not None:
                self.revoke(record.session_id)
            raise GoTrueError(400, "refresh_token_already_used", "Invalid Refresh Token: Already Used")
        user = self.users.get(record.user_id)
        if user is None:
            raise GoTrueError(400, "refresh_token_not_found", "Invalid Refresh Token: Refresh Token Not Found")
        if user.banned:
            raise GoTrueError(400, "user_banned", "Invalid Refresh Token: User Banned")
        record.used = True
        return self.issue_session(user.id, session_id=record.session_id)

    def logout(self, claims: Json, scope: str) -> None:
        if scope not in ("global", "local", "others"):
            raise GoTrueError(400, "validation_failed", f"Unsupported logout scope {scope!r}")
        own, user_id = claims.get("session_id") or None, str(claims["sub"])
        if scope != "others" and own:
            self.revoke(own)
        if scope != "local":
            for sid, owner in self.sessions.items():
                if owner == user_id and sid != own:
                    self.revoke(sid)

    # ---- lifecycle --------------------------------------------------------------------------
    async def pause(self, seconds: float) -> None:
        """Sleep, but wake at once when the fake shuts down."""
        if seconds > 0 and not self._closing.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), seconds)

    def shutdown(self) -> None:
        self._closing.set()


# --------------------------------------------------------------------------------------------------
# HTTP
# --------------------------------------------------------------------------------------------------
def _api_version_2024(value: str | None) -> bool:
    """GoTrue's DetermineClosestAPIVersion: a valid date on or after 2024-01-01."""
    if not value or not re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
        return False
    try:
        return datetime.strptime(value, "%Y-%m-%d") >= datetime(2024, 1, 1)
    except ValueError:
        return False


class _Handler(PathOnlyLogging):
    needs_apikey = True
    counter: str | None = None

    def initialize(self, fake: SupabaseAuthFake) -> None:
        self.fake = fake

    def set_default_headers(self) -> None:
        self.set_header("Access-Control-Allow-Origin", "*")
        self.set_header("Access-Control-Expose-Headers", API_VERSION_HEADER)

    def answer_preflight(self) -> None:
        self.set_header("Access-Control-Allow-Methods", "GET, POST, PUT, DELETE, OPTIONS")
        self.set_header("Access-Control-Allow-Headers", CORS_ALLOW_HEADERS)
        self.set_header("Access-Control-Max-Age", "600")
        self.set_status(204)
        self.finish()

    async def prepare(self) -> None:
        if self.request.method == "OPTIONS":
            self.answer_preflight()
            return
        fake = self.fake
        fake.requests.append(
            AuthRequest(
                self.request.method or "",
                self.request.path,
                {k: self.get_query_argument(k) for k in self.request.query_arguments},
                {k.lower(): v for k, v in self.request.headers.items()},
                time.monotonic(),
            )
        )
        if self.counter:
            setattr(fake, self.counter, getattr(fake, self.counter) + 1)
        if fake.base_url is None:
            fake.base_url = f"{self.request.protocol}://{self.request.host}"
        await fake.pause(fake.delay)
        if fake.status_override is not None:
            status = fake.status_override
            if status == 500:
                self.gotrue_error(
                    GoTrueError(
                        500, "unexpected_failure", "Unexpected failure, please check server logs for more information"
                    )
                )
            else:
                self.send_json({"message": "An invalid response was received from the upstream server"}, status)
            return
        if self.needs_apikey:
            key = self.request.headers.get("apikey") or self.get_query_argument("apikey", None)
            if not key:
                hint = "No `apikey` request header or url param was found."
                self.send_json({"message": "No API key found in request", "hint": hint}, 401)
            elif key != fake.anon_key:
                hint = "Double check your Supabase `anon` or `service_role` API key."
                self.send_json({"message": "Invalid API key", "hint": hint}, 401)

    def send_json(self, payload: Any, status: int = 200) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(payload))

    def gotrue_error(self, error: GoTrueError) -> None:
        if _api_version_2024(self.request.headers.get(API_VERSION_HEADER)):
            self.set_header(API_VERSION_HEADER, API_VERSION_2024)
            self.send_json({"code": error.code, "message": error.message}, error.status)
        else:
            self.send_json({"code": error.status, "error_code": error.code, "msg": error.message}, error.status)

    def body_json(self) -> Json:
        try:
            body = json.loads(self.request.body or b"{}")
        except ValueError:
            raise GoTrueError(400, "bad_json", "Could not parse request body as JSON") from None
        return body if isinstance(body, dict) else {}

    def authenticate(self) -> tuple[Json, SupabaseUser]:
        match = _BEARER.match(self.request.headers.get("Authorization", ""))
        if match is None:
            raise GoTrueError(401, "no_authorization", "This endpoint requires a valid Bearer token")
        return self.fake.verify(match.group(1))


class _Jwks(_Handler):
    needs_apikey = False
    counter = "jwks_fetches"

    def get(self) -> None:
        self.set_header("Cache-Control", self.fake.jwks_cache_control)
        self.send_json(self.fake.jwks())


class _User(_Handler):
    counter = "user_calls"

    def get(self) -> None:
        try:
            _, user = self.authenticate()
        except GoTrueError as error:
            self.gotrue_error(error)
            return
        self.send_json(user.to_json())


class _Token(_Handler):
    def post(self) -> None:
        grant = self.get_query_argument("grant_type", "")
        try:
            body = self.body_json()
            if grant == "password":
                session = self.fake.password_grant(body)
            elif grant == "refresh_token":
                session = self.fake.refresh_grant(body)
            else:
                raise GoTrueError(400, "validation_failed", "unsupported_grant_type")
        except GoTrueError as error:
            self.gotrue_error(error)
            return
        self.send_json(session)


class _Logout(_Handler):
    def post(self) -> None:
        try:
            claims, _ = self.authenticate()
            self.fake.logout(claims, self.get_query_argument("scope", "global"))
        except GoTrueError as error:
            self.gotrue_error(error)
            return
        self.set_status(204)
        self.finish()


class _NotFound(_Handler):
    needs_apikey = False

    async def prepare(self) -> None:
        if self.request.method == "OPTIONS":
            self.answer_preflight()
            return
        self.send_json({"code": 404, "error_code": "not_found", "msg": "Not Found"}, 404)


def make_supabase_app(fake: SupabaseAuthFake) -> Application:
    """The GoTrue routes of `fake` (mounted under ``/auth/v1``, as on a Supabase project URL)."""
    args = {"fake": fake}
    return Application(
        [
            (r"/auth/v1/\.well-known/jwks\.json", _Jwks, args),
            (r"/auth/v1/user", _User, args),
            (r"/auth/v1/token", _Token, args),
            (r"/auth/v1/logout", _Logout, args),
        ],
        default_handler_class=_NotFound,
        default_handler_args=args,
        log_function=lambda _: None,
    )
