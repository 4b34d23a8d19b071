"""Supabase sessions: who a chat request belongs to.

A request carries a Supabase access token (a JWT) either as ``Authorization: Bearer <jwt>``
or in the ``@supabase/ssr`` session cookie (``sb-<ref>-auth-token``, possibly split into
``.0``, ``.1``, ... chunks, its value ``base64-<base64url JSON>`` or percent-encoded raw JSON).
The explicit header wins over the ambient cookie.

The token is then verified one of two ways (``SUPABASE_AUTH_MODE``):

* ``local`` (default): the signature is checked here with PyJWT, against the project's JWKS
  (``ES256`` / ``RS256``; fetched without blocking, cached per its ``Cache-Control``, refetched
  once when a token names an unknown ``kid``) or ``SUPABASE_JWT_SECRET`` (legacy ``HS256``).
* ``remote``: Supabase itself answers, through the async supabase-py client's
  ``auth.get_user(jwt)``, which also sees signed-out and revoked sessions. Positive answers are
  reused for ``SUPABASE_USER_CACHE_SECONDS``, never past the token's ``exp``.

Either way ``exp``, ``aud`` ("authenticated") and ``iss`` (``SUPABASE_URL/auth/v1``) are checked
here: supabase-py checks neither. Every failure of the token is `Unauthenticated` (a 401);
Supabase being unreachable, or refusing our own configuration, is `AuthUnavailable` (a 503),
never taken for a bad token.

Calls to Supabase can be observed (for the metrics): a JWKS fetch through the client given (an
``observed`` one), a ``get_user`` call through ``observer`` (timed whole: its answer is small).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import dataclasses
import hashlib
import json
import logging
import time
import urllib.parse
from collections import OrderedDict
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal

import jwt
from tornado.httputil import HTTPHeaders

from auth.jose import is_number
from auth.session import Unauthenticated, request_cookies
from settings import SupabaseSettings
from upstream.client import CallObserver, UpstreamClient, UpstreamFailure

if TYPE_CHECKING:
    import httpx
    from supabase import AsyncClient

__all__ = ["AuthUnavailable", "JwksCache", "SupabaseAuth", "SupabaseUser", "read_ssr_cookie"]

log = logging.getLogger("gatehouse")

AUDIENCE = "authenticated"
ASYMMETRIC = frozenset(("ES256", "RS256"))
JWKS_DEFAULT_MAX_AGE = 600.0  # when the JWKS answer says nothing (Supabase sends max-age=600)
JWKS_MIN_MAX_AGE = 30.0  # a no-store JWKS must not mean a fetch per request
JWKS_MAX_MAX_AGE = 24 * 3600.0
JWKS_UNKNOWN_KID_COOLDOWN = 10.0  # tokens with made-up kids must not make us hammer Supabase
JWKS_TIMEOUT = 10.0  # a JWKS is small; a slow one must not hold a first request for a minute
JWKS_RETRY_SECONDS = 30.0  # after a failed refresh, the known keys serve this long before a retry
USER_CACHE_ENTRIES = 10_000
_INVALID = "The session is invalid or has expired; sign in again."


class AuthUnavailable(Exception):
    """Supabase could not say whether the session is valid (unreachable, failing, or it refused
    the gateway's own key). ``str(exc)`` is safe to log, never shown with a token in it."""


@dataclasses.dataclass(frozen=True, slots=True)
class SupabaseUser:
    id: str  # the user's UUID (``sub``)
    email: str | None
    expires_at: float  # the access token's ``exp``
    source: Literal["cookie", "bearer"]
    access_token: str = dataclasses.field(repr=False)  # verified; forwarded to the backend only


class SupabaseAuth:
    """Authenticates requests with Supabase sessions; one per process."""

    def __init__(
        self, settings: SupabaseSettings, client: UpstreamClient, timeout: float, observer: CallObserver | None = None
    ) -> None:
        self._settings = settings
        self._cookie_name = settings.cookie_name
        self._verifier: LocalVerifier | RemoteVerifier
        if settings.auth_mode == "remote":
            self._verifier = RemoteVerifier(settings, timeout, observer)
        else:
            jwks = JwksCache(client, settings.jwks_url, min(timeout, JWKS_TIMEOUT))
            self._verifier = LocalVerifier(settings, jwks)

    async def authenticate(self, headers: HTTPHeaders) -> SupabaseUser:
        """The request's user, or `Unauthenticated` / `AuthUnavailable`."""
        token, source = self.access_token(headers)
        claims = await self._verifier.verify(token)
        email = claims.get("email")
        return SupabaseUser(
            id=claims["sub"],
            email=email if isinstance(email, str) and email else None,
            expires_at=float(claims["exp"]),
            source=source,
            access_token=token,
        )

    def access_token(self, headers: HTTPHeaders) -> tuple[str, Literal["cookie", "bearer"]]:
        scheme, _, credentials = headers.get("Authorization", "").partition(" ")
        if scheme.lower() == "bearer" and credentials.strip():
            return credentials.strip(), "bearer"
        session = read_ssr_cookie(request_cookies(headers), self._cookie_name)
        if session is None:
            raise Unauthenticated("Sign in to continue: no session was sent.")
        return session, "cookie"

    async def close(self) -> None:
        if isinstance(self._verifier, RemoteVerifier):
            await self._verifier.close()


# -- the @supabase/ssr cookie ------------------------------------------------------------


def read_ssr_cookie(cookies: Mapping[str, str], name: str) -> str | None:
    """The access token in ``@supabase/ssr``'s session cookie ``name``, None when there is none,
    `Unauthenticated` when the cookie is there but holds no session. Only that name is read: a
    cookie of another name may have been planted from a sibling subdomain (cookie tossing)."""
    value = _joined(cookies, name)
    return None if value is None else _access_token_of(value)


def _joined(cookies: Mapping[str, str], name: str) -> str | None:
    """As ``@supabase/ssr``'s ``combineChunks``: the whole cookie, else ``.0``, ``.1``, ...
    up to the first gap. Each value was percent-encoded when set."""
    whole = cookies.get(name)
    if whole:
        return urllib.parse.unquote(whole)
    chunks: list[str] = []
    while (chunk := cookies.get(f"{name}.{len(chunks)}")) is not None:
        chunks.append(urllib.parse.unquote(chunk))
    return "".join(chunks) if chunks else None


def _access_token_of(value: str) -> str:
    if value.startswith("base64-"):
        encoded = value[len("base64-") :]
        try:
            value = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)).decode("utf-8")
        except (binascii.Error, ValueError):
            raise Unauthenticated(_INVALID) from None
    try:
        session = json.loads(value)
    except (ValueError, RecursionError):
        raise Unauthenticated(_INVALID) from None
    # Older auth-helpers stored [access_token, refresh_token, ...].
    token = session.get("access_token") if isinstance(session, dict) else None
    if token is None and isinstance(session, list) and session:
        token = session[0]
    if not isinstance(token, str) or not token:
        raise Unauthenticated(_INVALID)
    return token


# -- verification ----------------------------------------------------------------------


def checked_claims(token: str, issuer: str, key: Any = None, alg: str | None = None) -> dict[str, Any]:
    """The token's claims once ``exp``, ``aud``, ``iss`` and a ``sub`` are checked, and its
    signature with ``key`` (for exactly ``alg``: no algorithm confusion). Without a key the
    signature is left to Supabase (remote mode): the claims are trusted only once it has
    vouched for the token."""
    signed = key is not None
    try:
        claims = jwt.decode(
            token,
            key,
            algorithms=[alg] if alg is not None else None,
            audience=AUDIENCE,
            issuer=issuer,
            # PyJWT skips exp/aud/iss unless told to when the signature is not verified.
            options={
                "verify_signature": signed,
                "verify_exp": True,
                "verify_aud": True,
                "verify_iss": True,
                "require": ["exp", "sub", "aud", "iss"],
            },
        )
    except (jwt.PyJWTError, ValueError, TypeError, RecursionError):
        raise Unauthenticated(_INVALID) from None
    if not _claims_well_typed(claims):
        raise Unauthenticated(_INVALID)
    return claims


def _claims_well_typed(claims: Mapping[str, Any]) -> bool:
    """Whether each claim gatehouse reads has its RFC 7519 type. PyJWT checks values, not all
    types: it takes ``"exp": "9999999999"`` for a date and lets any ``sub`` through."""
    sub, exp, iss, aud = claims.get("sub"), claims.get("exp"), claims.get("iss"), claims.get("aud")
    return (
        isinstance(sub, str)
        and bool(sub)
        and is_number(exp)
        and all(is_number(claims[name]) for name in ("iat", "nbf") if name in claims)
        and isinstance(iss, str)
        and (isinstance(aud, str) or (isinstance(aud, list) and all(isinstance(a, str) for a in aud)))
    )


def _unverified_header(token: str) -> tuple[str, str | None]:
    """The ``alg`` and ``kid`` of ``token``'s JOSE header, or `Unauthenticated`. PyJWT parses
    the header but leaves its field types unchecked: an ``alg`` that is a list or an object must
    be a refusal like any other, never an error on a set lookup."""
    try:
        header = jwt.get_unverified_header(token)
    except (jwt.PyJWTError, ValueError, TypeError, RecursionError):
        raise Unauthenticated(_INVALID) from None
    alg, kid, typ = header.get("alg"), header.get("kid"), header.get("typ")
    if not isinstance(alg, str) or not isinstance(kid, str | None) or not isinstance(typ, str | None):
        raise Unauthenticated(_INVALID)
    return alg, kid


class LocalVerifier:
    """Checks signatures here: JWKS keys for ES256 / RS256, the shared secret for HS256."""

    def __init__(self, settings: SupabaseSettings, jwks: JwksCache) -> None:
        self._issuer = settings.issuer
        self._secret = settings.jwt_secret
        self._jwks = jwks

    async def verify(self, token: str) -> dict[str, Any]:
        alg, kid = _unverified_header(token)
        key: Any
        if alg == "HS256" and self._secret is not None:
            key = self._secret
        elif alg in ASYMMETRIC and kid is not None:
            jwk = await self._jwks.key(kid)
            if jwk is None or jwk.algorithm_name != alg:
                raise Unauthenticated(_INVALID)
            key = jwk.key
        else:  # "none", an algorithm we hold no key for, or a kid-less asymmetric token
            raise Unauthenticated(_INVALID)
        return checked_claims(token, self._issuer, key, alg)


class JwksCache:
    """The project's signing keys by ``kid``, fetched without blocking and shared by all requests.

    Keys are kept for the JWKS answer's ``max-age`` (clamped to 30 s .. 24 h). One fetch at a
    time: concurrent requests wait for the fetch in flight. Once the keys are stale, a token
    whose key is known is verified at once while they are refetched in the background (a slow
    Supabase delays no request); a failed refetch is logged and retried after
    ``JWKS_RETRY_SECONDS``. A token naming an unknown ``kid`` waits for one refetch (keys
    rotate), at most every ``JWKS_UNKNOWN_KID_COOLDOWN`` seconds. `AuthUnavailable` only when
    no key was ever loaded.
    """

    def __init__(self, client: UpstreamClient, url: str, timeout: float) -> None:
        self._client = client
        self._url = url
        self._timeout = timeout
        self._keys: dict[str, jwt.PyJWK] = {}
        self._fresh_until = 0.0
        self._fetched_at: float | None = None
        self._unknown_kid_fetch_at = -JWKS_UNKNOWN_KID_COOLDOWN
        self._inflight: asyncio.Future[None] | None = None

    async def key(self, kid: str) -> jwt.PyJWK | None:
        now = time.monotonic()
        if not self._keys:
            await asyncio.shield(self._refresh())  # AuthUnavailable: nothing to verify with
        elif kid in self._keys:
            if now >= self._fresh_until:
                self._refresh()  # stale but known: use it, refresh behind the request
        elif now - self._unknown_kid_fetch_at >= JWKS_UNKNOWN_KID_COOLDOWN:
            self._unknown_kid_fetch_at = now
            with contextlib.suppress(AuthUnavailable):  # logged in _fetched; the kid stays unknown
                await asyncio.shield(self._refresh())
        return self._keys.get(kid)

    def _refresh(self) -> asyncio.Future[None]:
        """The fetch in flight, started if there is none."""
        if self._inflight is None:
            self._inflight = asyncio.ensure_future(self._fetch())
            self._inflight.add_done_callback(self._fetched)
        return self._inflight

    def _fetched(self, future: asyncio.Future[None]) -> None:
        self._inflight = None
        error = None if future.cancelled() else future.exception()
        if error is not None and self._keys:
            self._fresh_until = time.monotonic() + JWKS_RETRY_SECONDS
            log.warning("supabase jwks refresh failed; using the keys already known", extra={"reason": str(error)})

    async def _fetch(self) -> None:
        try:
            response = await self._client.call(self._url, None, self._timeout, method="GET")
        except Exception as exc:
            raise AuthUnavailable(f"the Supabase JWKS could not be fetched: {type(exc).__name__}") from None
        if response.code != 200:
            raise AuthUnavailable(f"the Supabase JWKS answered {response.code}")
        try:
            document = json.loads(response.body)
            listed = document["keys"]
            if not isinstance(listed, list):
                raise TypeError
        except (ValueError, KeyError, TypeError):
            raise AuthUnavailable("the Supabase JWKS is not a key set") from None
        keys = {}
        for k in listed:  # one key gatehouse cannot use must not cost it the others
            if isinstance(k, dict) and isinstance(k.get("kid"), str) and k.get("alg", "") in ASYMMETRIC:
                with contextlib.suppress(jwt.PyJWTError, ValueError, TypeError):
                    keys[k["kid"]] = jwt.PyJWK(k)
        if not keys:
            raise AuthUnavailable("the Supabase JWKS holds no ES256 / RS256 key")
        self._keys = keys
        self._fresh_until = time.monotonic() + _max_age(response.headers.get("Cache-Control"))
        log.info("supabase jwks loaded", extra={"kids": sorted(keys)})


def _max_age(cache_control: str | None) -> float:
    seconds = JWKS_DEFAULT_MAX_AGE
    for directive in (cache_control or "").lower().split(","):
        name, _, value = directive.strip().partition("=")
        if name in ("no-store", "no-cache"):
            seconds = 0.0
        elif name == "max-age" and value.strip().isdigit():
            seconds = float(value.strip())
    return min(max(seconds, JWKS_MIN_MAX_AGE), JWKS_MAX_MAX_AGE)


class RemoteVerifier:
    """Asks Supabase (``GET /auth/v1/user``) through one shared async supabase-py client.

    Concurrent checks of one token share one call; positive answers are cached by a hash of
    the token for ``user_cache_seconds`` and never past its ``exp``.
    """

    def __init__(self, settings: SupabaseSettings, timeout: float, observer: CallObserver | None = None) -> None:
        assert settings.anon_key is not None
        self._observer = observer
        self._url = settings.url
        self._issuer = settings.issuer
        self._anon_key = settings.anon_key
        self._timeout = timeout
        self._cache_seconds = settings.user_cache_seconds
        import supabase  # noqa: F401  # now, at startup: importing it takes ~0.3 s of the event loop

        self._client: AsyncClient | None = None
        self._http: httpx.AsyncClient | None = None
        self._creating = asyncio.Lock()
        self._valid: OrderedDict[bytes, float] = OrderedDict()  # token hash -> valid until
        self._inflight: dict[bytes, asyncio.Future[None]] = {}

    async def verify(self, token: str) -> dict[str, Any]:
        """The token's claims, once Supabase has confirmed the session (or did so recently);
        claims that fail here never cost a call."""
        _unverified_header(token)  # ill-typed headers are refused here too, not left to Supabase
        claims = checked_claims(token, self._issuer)
        digest = hashlib.sha256(token.encode()).digest()
        until = self._valid.get(digest)
        if until is not None and time.time() < until:
            return claims
        inflight = self._inflight.get(digest)
        if inflight is None:
            inflight = self._inflight[digest] = asyncio.ensure_future(self._ask(token, claims, digest))
            inflight.add_done_callback(lambda f: (self._inflight.pop(digest, None), f.cancelled() or f.exception()))
        try:
            await asyncio.shield(inflight)
        finally:
            # The future keeps the error it failed with, whose traceback holds this frame: a
            # reference cycle through every request that awaited it, unless the frame lets go.
            del inflight
        return claims

    async def _ask(self, token: str, claims: Mapping[str, Any], digest: bytes) -> None:
        from supabase_auth.errors import AuthApiError

        client = await self._supabase()
        started = time.monotonic()
        try:
            answer = await client.auth.get_user(token)
        except AuthApiError as exc:
            self._observe(started, exc)
            if exc.status == 401 and exc.code is None:
                # Supabase's API gateway, not GoTrue: it refused SUPABASE_ANON_KEY, not the user.
                log.error("supabase refused the gateway's SUPABASE_ANON_KEY")
                raise AuthUnavailable("Supabase refused the gateway's API key") from None
            if 400 <= exc.status < 500 and exc.status != 429:
                raise Unauthenticated(_INVALID) from None
            raise AuthUnavailable(f"Supabase answered {exc.status}") from None
        except Exception as exc:  # unreachable, timed out, or an answer supabase-py cannot read
            self._observe(started, exc)
            raise AuthUnavailable(f"Supabase could not be asked: {type(exc).__name__}") from None
        self._observe(started, None)
        if answer is None or answer.user.id != claims["sub"]:
            raise Unauthenticated(_INVALID)
        if self._cache_seconds > 0:
            self._valid[digest] = min(time.time() + self._cache_seconds, float(claims["exp"]))
            self._valid.move_to_end(digest)
            while len(self._valid) > USER_CACHE_ENTRIES:
                self._valid.popitem(last=False)

    def _observe(self, started: float, error: Exception | None) -> None:
        """Report a ``get_user`` call to the observer: an answer (its status, from supabase-py's
        error when it raised one for it) or a failure."""
        if self._observer is None:
            return
        status = 200 if error is None else getattr(error, "status", 0)
        if isinstance(status, int) and status > 0:
            self._observer.answered(time.monotonic() - started, status)
        else:
            self._observer.failed(_failure_of(error))

    async def _supabase(self) -> AsyncClient:
        async with self._creating:  # one shared client, however many requests arrive first
            if self._client is None:
                import httpx
                from supabase import AsyncClientOptions, acreate_client

                self._http = httpx.AsyncClient(timeout=self._timeout, follow_redirects=False)
                options = AsyncClientOptions(
                    auto_refresh_token=False,  # one client serves every user: it holds no session
                    persist_session=False,
                    httpx_client=self._http,
                )
                self._client = await acreate_client(self._url, self._anon_key, options=options)
        return self._client

    async def close(self) -> None:
        if self._http is not None:
            await self._http.aclose()


def _failure_of(error: BaseException | None) -> UpstreamFailure:
    """How a ``get_user`` call that got no answer failed, from the httpx error supabase-py wraps."""
    import httpx

    cause = error.__cause__ if error is not None and error.__cause__ is not None else error
    if isinstance(cause, httpx.TimeoutException):
        return "timeout"
    if isinstance(cause, httpx.ConnectError):
        return "connect"
    if isinstance(cause, httpx.NetworkError):
        return "reset"
    return "protocol"
