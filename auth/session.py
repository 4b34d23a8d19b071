"""The `Session` a request carries, and how a request yields one.

A request is authenticated, as next-auth's ``getToken`` does it, by a session cookie (joined
from ``.N`` chunks when split) or, when there is none, by ``Authorization: Bearer <url-encoded
JWE>``. Two cookie formats are read, each under its own name: next-auth v4
(``next-auth.session-token``) and Auth.js v5 (``authjs.session-token``), with the ``__Secure-``
prefix in production. A session remembers its format, so it is written back in the same one.

Decrypted tokens are remembered for a short while (auth/session_cache.py), so a browser's
requests do not each decrypt the same cookie; what a request is told is unchanged.
"""

from __future__ import annotations

import dataclasses
import time
import urllib.parse
from collections.abc import Mapping
from typing import Any, Literal, Protocol

from tornado.httputil import HTTPHeaders, parse_cookie

from auth.authjs import AuthJsV5Codec
from auth.cookies import AUTHJS_V5_CHUNK_SIZE, NEXTAUTH_V4_CHUNK_SIZE, names_present, read_chunked
from auth.jose import InvalidToken
from auth.nextauth import NextAuthV4Codec
from auth.refresh import access_expiry
from auth.session_cache import DEFAULT_MAX_ENTRIES, DEFAULT_TTL, SessionCache
from settings import cookie_name

__all__ = ["Session", "SessionFormat", "SessionReader", "Unauthenticated", "request_cookies", "session_formats"]


class Unauthenticated(Exception):
    """No usable session. ``str(exc)`` is a sentence safe to show the client."""


class Codec(Protocol):
    def decode(self, token: str, now: float | None = None) -> dict[str, Any]: ...
    def encode(self, claims: dict[str, Any], max_age: int = ..., now: float | None = None) -> str: ...


@dataclasses.dataclass(frozen=True)
class SessionFormat:
    """One kind of session cookie: its name, its codec (keys derived once) and chunk size."""

    cookie_name: str
    codec: Codec
    chunk_size: int


def session_formats(secrets: tuple[str, ...], production: bool) -> tuple[SessionFormat, ...]:
    """next-auth v4 (first secret only: v4 has no rotation) and Auth.js v5 (all secrets)."""
    v4, v5 = cookie_name("next-auth.session-token", production), cookie_name("authjs.session-token", production)
    return (
        SessionFormat(v4, NextAuthV4Codec(secrets[0]), NEXTAUTH_V4_CHUNK_SIZE),
        SessionFormat(v5, AuthJsV5Codec(secrets, v5), AUTHJS_V5_CHUNK_SIZE),
    )


@dataclasses.dataclass(frozen=True, slots=True)
class Session:
    access_token: str
    user: str | None  # the session's ``sub``, for logs
    claims: Mapping[str, Any]
    source: Literal["cookie", "bearer"]
    format: SessionFormat
    refresh_token: str | None = None
    expires_at: float | None = None  # the access token's, epoch seconds; None: unknown
    cookie_names: tuple[str, ...] = ()  # the cookies it came in, to rewrite or clear

    def expires_within(self, seconds: float) -> bool:
        return self.expires_at is not None and self.expires_at - seconds <= time.time()


def request_cookies(headers: HTTPHeaders) -> dict[str, str]:
    """All cookies of a request. Lenient like browsers: one malformed pair spoils nothing."""
    return parse_cookie("; ".join(headers.get_list("Cookie")))


class SessionReader:
    """Reads sessions in any of ``formats``, the first format whose cookie is present winning.

    Decrypted tokens are kept in ``cache`` (`SessionCache`: ``cache_entries`` at most, each for
    ``cache_ttl`` seconds at most and never past its ``exp``); ``cache_entries=0`` turns it off.
    """

    def __init__(
        self,
        formats: tuple[SessionFormat, ...],
        cache_entries: int = DEFAULT_MAX_ENTRIES,
        cache_ttl: float = DEFAULT_TTL,
    ) -> None:
        self.formats = formats
        self.cache: SessionCache | None = SessionCache(cache_entries, cache_ttl) if cache_entries > 0 else None

    def authenticate(self, headers: HTTPHeaders) -> Session:
        """The request's `Session`, or `Unauthenticated`."""
        cookies = request_cookies(headers)
        for fmt in self.formats:
            token = read_chunked(cookies, fmt.cookie_name)
            if token is not None:
                claims = self._decode(fmt, token)
                return _session(claims, "cookie", fmt, names_present(cookies, fmt.cookie_name))
        scheme, _, credentials = headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not credentials.strip():
            raise Unauthenticated("Sign in to continue: no session was sent.")
        token = urllib.parse.unquote(credentials.strip())
        for fmt in self.formats:
            try:
                claims = self._claims(fmt, token)
            except InvalidToken:
                continue
            return _session(claims, "bearer", fmt, ())
        raise Unauthenticated("The session is invalid or has expired; sign in again.")

    def _decode(self, fmt: SessionFormat, token: str) -> Mapping[str, Any]:
        try:
            return self._claims(fmt, token)
        except InvalidToken:
            raise Unauthenticated("The session is invalid or has expired; sign in again.") from None

    def _claims(self, fmt: SessionFormat, token: str) -> Mapping[str, Any]:
        """``token``'s claims in ``fmt`` (read-only when cached), or `InvalidToken`."""
        if self.cache is None:
            return fmt.codec.decode(token)
        return self.cache.decode(fmt.cookie_name, token, fmt.codec.decode)


def _session(
    claims: Mapping[str, Any], source: Literal["cookie", "bearer"], fmt: SessionFormat, names: tuple[str, ...]
) -> Session:
    access_token = claims.get("accessToken") or claims.get("access_token")
    if not isinstance(access_token, str) or not access_token:
        raise Unauthenticated("The session holds no access token; sign in again.")
    sub = claims.get("sub")
    refresh_token = claims.get("refreshToken") or claims.get("refresh_token")
    return Session(
        access_token=access_token,
        user=sub if isinstance(sub, str) else None,
        claims=claims,
        source=source,
        format=fmt,
        refresh_token=refresh_token if isinstance(refresh_token, str) and refresh_token else None,
        expires_at=access_expiry(claims, access_token),
        cookie_names=names,
    )
