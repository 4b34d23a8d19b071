"""Standalone sessions: ``/api/auth/login``, ``/api/auth/logout``, ``/api/auth/session``.

Gatehouse can issue sessions itself, without a Next.js front end: login forwards the browser's
JSON credentials to ``BACKEND_URL + AUTH_LOGIN_PATH`` and, on success, sets gatehouse's own
session cookie in the next-auth v4 format (a Next.js app sharing the secret can read it), holding
the tokens; the browser only ever sees ``{"user": ...}``. Logout clears every session cookie
(and tells ``AUTH_LOGOUT_PATH`` when configured). Session answers who is signed in and until
when, never a token. Login and logout are unsafe requests: they pass the CSRF rule whether or
not a cookie is present (a forged login would sign the victim into the attacker's account).
Login also takes ``Content-Type: application/json`` only (415 otherwise): a cross-site HTML form
can send ``text/plain`` whose body happens to be JSON, but never ``application/json`` (that needs
a CORS preflight), so this refuses forged logins a second way.
"""

from __future__ import annotations

import datetime
import json
import logging
import time
from typing import Any

from auth.cookies import names_present
from auth.refresh import RefreshUnavailable, parse_tokens
from auth.session import Session, Unauthenticated, request_cookies
from handlers.base import NO_BODY_LIMIT, BaseHandler
from handlers.errors import ApiError
from handlers.json_body import parse_json

__all__ = ["LoginHandler", "LogoutHandler", "SessionHandler"]

log = logging.getLogger("gatehouse")
_USER_FIELDS = ("id", "name", "email", "image")


def public_user(claims: dict[str, Any]) -> dict[str, Any]:
    """The user as the browser may see it: profile fields only (an allow-list of scalars), from
    the backend's ``user`` object or else the session's own claims (next-auth's ``picture``
    becomes ``image``). Anything else, tokens nested at any depth included, stays server-side."""
    source = claims.get("user")
    if not isinstance(source, dict):
        source = {"id": claims.get("sub"), "image": claims.get("picture"), **claims}
    return {
        k: source[k]
        for k in _USER_FIELDS
        if isinstance(source.get(k), (str, int, float)) and not isinstance(source.get(k), bool)
    }


class _AuthHandler(BaseHandler):
    def body_limit(self) -> int:
        # Login and logout (POST) take JSON; the session (GET) takes no body.
        return self.ctx.settings.max_json_bytes if self.request.method == "POST" else NO_BODY_LIMIT

    def set_default_headers(self) -> None:
        super().set_default_headers()
        self.set_header("Cache-Control", "no-store")  # who is signed in is never cacheable


class LoginHandler(_AuthHandler):
    SUPPORTED_METHODS = ("POST",)
    route = "auth_login"

    async def post(self) -> None:
        self.check_csrf()
        media_type = self.request.headers.get("Content-Type", "").split(";", 1)[0].strip().lower()
        if media_type != "application/json":
            raise ApiError(415, "unsupported_media_type", "Send the credentials as application/json.")
        settings = self.ctx.settings
        credentials = self.body() or b""
        if not isinstance(parse_json(credentials), dict):
            raise ApiError(400, "invalid_json", "Send the credentials as a JSON object.")
        try:
            answer = await self.ctx.upstream.call(
                settings.backend_endpoint(settings.auth_login_path),
                credentials,  # byte for byte
                settings.upstream_response_timeout,
            )
        except Exception:
            raise ApiError(502, "bad_gateway", "The sign-in service could not be reached.") from None
        if answer.code in (400, 401, 403):
            raise ApiError(401, "invalid_credentials", "Those credentials were not accepted.")
        try:
            if answer.code not in (200, 201):
                raise RefreshUnavailable(f"the backend answered {answer.code}")
            data = json.loads(answer.body)
            tokens = parse_tokens(data)
        except (ValueError, RefreshUnavailable):
            raise ApiError(502, "bad_gateway", "The sign-in service gave an answer gatehouse cannot use.") from None
        user = public_user({"user": data["user"] if isinstance(data.get("user"), dict) else {}})
        claims: dict[str, Any] = {
            "sub": str(user.get("id") or user.get("sub") or user.get("email") or ""),
            **{k: user[k] for k in ("name", "email", "image") if k in user},
            "user": user,
            "access_token": tokens.access_token,
            "refresh_token": tokens.refresh_token,
        }
        if tokens.expires_at is not None:
            claims["expires_at"] = int(tokens.expires_at)
        issued = self.backend.sessions.formats[0]  # next-auth v4: what a Next.js app reads
        present = names_present(request_cookies(self.request.headers), issued.cookie_name)
        self.write_session_cookie(issued, issued.codec.encode(claims, settings.session_max_age), present)
        self.user = claims["sub"]
        self.send_json({"user": user})


class LogoutHandler(_AuthHandler):
    SUPPORTED_METHODS = ("POST",)
    route = "auth_logout"

    async def post(self) -> None:
        self.check_csrf()
        session: Session | None
        try:
            session = self.backend.sessions.authenticate(self.request.headers)
            self.user = session.user
        except Unauthenticated:
            session = None
        settings = self.ctx.settings
        if session is not None and settings.auth_logout_path is not None:
            body = json.dumps({"refresh_token": session.refresh_token}).encode()
            try:
                await self.ctx.upstream.call(
                    settings.backend_endpoint(settings.auth_logout_path),
                    body,
                    settings.upstream_response_timeout,
                    headers={"Authorization": f"Bearer {session.access_token}"},
                )
            except Exception:
                # Signing out must not depend on the backend: the cookie goes either way.
                log.warning("backend logout failed", extra={"request_id": self.request_id})
        cookies = request_cookies(self.request.headers)
        cleared = False
        for fmt in self.backend.sessions.formats:
            present = names_present(cookies, fmt.cookie_name)
            if present:
                self.write_session_cookie(fmt, None, present)
                cleared = True
        if not cleared:
            self.write_session_cookie(self.backend.sessions.formats[0], None, ())
        self.send_json({"signed_out": True})


class SessionHandler(_AuthHandler):
    SUPPORTED_METHODS = ("GET",)
    route = "auth_session"

    async def get(self) -> None:
        try:
            session = self.backend.sessions.authenticate(self.request.headers)
        except Unauthenticated as exc:
            raise ApiError(401, "unauthorized", str(exc)) from None
        if session.source == "cookie":  # another site's read must not refresh the session either
            self.check_csrf()
        session = await self.fresh_session(session)  # as any use of the session would
        self.user = session.user
        exp = session.claims.get("exp")
        if not isinstance(exp, (int, float)):  # refreshed just now: the new cookie's lifetime
            exp = time.time() + self.ctx.settings.session_max_age
        expires = datetime.datetime.fromtimestamp(int(exp), datetime.UTC).isoformat().replace("+00:00", "Z")
        self.send_json({"user": public_user(dict(session.claims)), "expires": expires})
