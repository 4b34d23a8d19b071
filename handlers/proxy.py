"""``/api/proxy/<path>``: the authenticated catch-all to the private backend.

Top to bottom: validate the raw path -> authenticate (unless the path is public) with a
next-auth / Auth.js session or, when Supabase is configured, a Supabase one (a cookie session
on an unsafe method must also pass the CSRF rule, ``auth/csrf.py``; a next-auth access token
about to expire is refreshed first, ``auth/refresh.py``) -> build the upstream request ->
relay, with the body handling every forwarding route shares (``handlers/relaying.py``).
"""

from __future__ import annotations

from auth.session import Unauthenticated
from handlers.errors import ApiError
from handlers.relaying import RelayingHandler, Target
from upstream.paths import InvalidPath, parse_backend_path
from upstream.request import upstream_headers, upstream_url

__all__ = ["ProxyHandler"]

PREFIX = "/api/proxy/"


class ProxyHandler(RelayingHandler):
    SUPPORTED_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")
    route = "proxy"
    upstream = "backend"

    async def target(self) -> Target:
        try:
            path = parse_backend_path(self.request.path[len(PREFIX) :])
        except InvalidPath as exc:
            raise ApiError(400, "invalid_path", str(exc)) from None
        settings = self.ctx.settings
        token = None if path.is_under(settings.public_paths) else await self.access_token()
        assert settings.backend is not None
        return Target(
            upstream_url(settings.backend, path, self.request.query),
            upstream_headers(self.request, self.request_id, token),
        )

    async def access_token(self) -> str:
        """The access token of the request's session: a next-auth / Auth.js one (refreshed when
        about to expire), or else, when ``SUPABASE_URL`` is set, a Supabase one (its own
        client refreshes it in the browser)."""
        try:
            session = self.backend.sessions.authenticate(self.request.headers)
        except Unauthenticated as exc:
            if self.ctx.supabase is None:
                raise ApiError(401, "unauthorized", str(exc)) from None
            return (await self.supabase_user()).access_token
        self.user = session.user
        if session.source == "cookie":  # an ambient credential: prove the request is ours
            self.check_csrf()
        return (await self.fresh_session(session)).access_token
