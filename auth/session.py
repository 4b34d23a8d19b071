"""The `Session` a request carries, and how a request yields one.

A request is authenticated, as next-auth's ``getToken`` does it, by the session cookie
(joined from ``.N`` chunks when split) or, when there is no cookie, by
``Authorization: Bearer <url-encoded JWE>``.
"""

from __future__ import annotations

import dataclasses
import time
import urllib.parse
from collections.abc import Mapping
from typing import Any, Literal

from tornado.httputil import HTTPHeaders, parse_cookie

from auth.cookies import names_present, read_chunked
from auth.jose import InvalidToken
from auth.nextauth import NextAuthV4Codec
from auth.refresh import access_expiry

__all__ = ["NextAuthSessions", "Session", "Unauthenticated", "request_cookies"]


class Unauthenticated(Exception):
    """No usable session. ``str(exc)`` is a sentence safe to show the client."""


@dataclasses.dataclass(frozen=True, slots=True)
class Session:
    access_token: str
    user: str | None  # the session's ``sub``, for logs
    claims: Mapping[str, Any]
    source: Literal["cookie", "bearer"]
    refresh_token: str | None = None
    expires_at: float | None = None  # the access token's, epoch seconds; None: unknown
    cookie_names: tuple[str, ...] = ()  # the cookies it came in, to rewrite or clear

    def expires_within(self, seconds: float) -> bool:
        return self.expires_at is not None and self.expires_at - seconds <= time.time()


def request_cookies(headers: HTTPHeaders) -> dict[str, str]:
    """All cookies of a request. Lenient like browsers: one malformed pair spoils nothing."""
    return parse_cookie("; ".join(headers.get_list("Cookie")))


class NextAuthSessions:
    """Reads next-auth v4 sessions under one secret and cookie name."""

    def __init__(self, secret: str, cookie_name: str) -> None:
        self.codec = NextAuthV4Codec(secret)
        self.cookie_name = cookie_name

    def authenticate(self, headers: HTTPHeaders) -> Session:
        """The request's `Session`, or `Unauthenticated`."""
        source: Literal["cookie", "bearer"] = "cookie"
        cookies = request_cookies(headers)
        token = read_chunked(cookies, self.cookie_name)
        if token is None:
            scheme, _, credentials = headers.get("Authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not credentials.strip():
                raise Unauthenticated("Sign in to continue: no session was sent.")
            token, source = urllib.parse.unquote(credentials.strip()), "bearer"
        try:
            claims = self.codec.decode(token)
        except InvalidToken:
            raise Unauthenticated("The session is invalid or has expired; sign in again.") from None
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
            refresh_token=refresh_token if isinstance(refresh_token, str) and refresh_token else None,
            expires_at=access_expiry(claims, access_token),
            cookie_names=names_present(cookies, self.cookie_name) if source == "cookie" else (),
        )
