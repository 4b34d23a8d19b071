"""A session's life after it is read: refreshed when its access token is about to expire, and
written back to the cookie it came in (``SessionWriteBack``, a part of every handler).

The refresh itself, single flight and the grace cache, is ``auth/refresh.py``'s; this module
decides when to refresh and what the browser's cookies become.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from tornado.web import RequestHandler

from auth.cookies import write_plan
from auth.refresh import RefreshRejected, RefreshUnavailable, apply_tokens
from auth.session import Session, SessionFormat
from handlers.context import Context
from handlers.errors import ApiError

__all__ = ["SessionWriteBack"]


class SessionWriteBack(RequestHandler):
    ctx: Context

    async def fresh_session(self, session: Session) -> Session:
        """``session``, refreshed first when its access token expires within
        ``REFRESH_LEEWAY`` (auth/refresh.py), the new session written back to the cookie it came in.

        A refresh the backend rejects ends the session: its cookies are cleared and the answer
        is 401 ``session_expired``. A refresh that cannot be done now is a 502; the session is kept.
        """
        settings, backend = self.ctx.settings, self.ctx.backend
        assert backend is not None  # sessions exist only where the backend is served
        # A Bearer session has nowhere to take the rotated tokens back to: refreshing it would
        # spend its refresh token and leave the client holding a dead one (getToken does not either).
        if session.source != "cookie" or session.refresh_token is None:
            return session
        if not session.expires_within(settings.refresh_leeway):
            return session
        try:
            tokens = await backend.refresher.refresh(session.refresh_token)
        except RefreshRejected:
            self.write_session_cookie(session.format, None, session.cookie_names)
            raise ApiError(401, "session_expired", "The session has expired; sign in again.") from None
        except RefreshUnavailable:
            raise ApiError(502, "bad_gateway", "The session could not be refreshed now; try again.") from None
        claims = apply_tokens(session.claims, tokens)
        value = session.format.codec.encode(claims, settings.session_max_age)
        self.write_session_cookie(session.format, value, session.cookie_names)
        return dataclasses.replace(
            session,
            access_token=tokens.access_token,
            refresh_token=tokens.refresh_token,
            expires_at=tokens.expires_at,
            claims=claims,
        )

    def write_session_cookie(self, fmt: SessionFormat, value: str | None, present: tuple[str, ...]) -> None:
        """Set ``fmt``'s session cookie to ``value`` (chunked as next-auth / Auth.js chunk it), or
        clear it with ``None``; either way no stale chunk stays. Cookies set here survive an
        error response."""
        settings = self.ctx.settings
        samesite = settings.session_cookie_samesite
        # Browsers drop a SameSite=None cookie that is not Secure.
        secure = settings.production or samesite == "None"
        attributes: dict[str, Any] = {"path": "/", "httponly": True, "samesite": samesite, "secure": secure}
        for name, chunk in write_plan(fmt.cookie_name, value, present, fmt.chunk_size):
            if chunk is None:
                self.clear_cookie(name, **attributes)
            else:
                self.set_cookie(name, chunk, max_age=settings.session_max_age, **attributes)
