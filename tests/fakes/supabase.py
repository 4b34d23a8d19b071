"""A fake Supabase Auth (GoTrue) on a real socket (127.0.0.1): `demo.supabase` served for tests.

`FakeSupabase.url` is the project URL (``http://127.0.0.1:<port>``; GoTrue is under ``/auth/v1``), the
issuer is ``<url>/auth/v1`` unless overridden, and the ``apikey`` it accepts is `FakeSupabase.anon_key`.
Routes, error bodies (legacy or ``X-Supabase-Api-Version: 2024-01-01`` style) and token claims are
documented in `demo.supabase`.

Test controls: `mint` / `revoke` / `session_json` / `ssr_cookie` / `add_user` / `delete_user` / `ban`
(delegated to `FakeSupabase.fake`, the `demo.supabase.SupabaseAuthFake`), `rotate_key` (a new ES256 or
RS256 key that the JWKS serves and later mints use), `remove_key`, `status_override` (force a status on
every route, e.g. 503), `delay` (seconds before every answer), `jwks_cache_control`, counters
`jwks_fetches` / `user_calls`, `requests` (`demo.supabase.AuthRequest`), and `close` / ``await aclose()``
to stop listening for real. `FakeSupabase.from_interop_fixture` adopts the @supabase/ssr fixture's ES256
key, issuer, anon key and user (tests/fixtures/interop/fixtures.json "supabase_ssr"), so the cookies the
real library minted verify against it.
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import Mapping
from typing import Any, Literal

from tornado.httpserver import HTTPServer
from tornado.testing import bind_unused_port

from demo.supabase import AuthRequest, SupabaseAuthFake, SupabaseUser, make_supabase_app

__all__ = ["FIXTURES", "JWT_SECRET", "FakeSupabase"]

FIXTURES = pathlib.Path(__file__).resolve().parent.parent / "fixtures" / "interop" / "fixtures.json"
JWT_SECRET = "gatehouse-test-supabase-jwt-secret-0123456789abcdef"  # the legacy HS256 secret


class FakeSupabase:
    """Serve a `SupabaseAuthFake` on 127.0.0.1 in the current IOLoop."""

    def __init__(
        self,
        *,
        anon_key: str = "test-anon-key",
        jwk: Mapping[str, Any] | None = None,
        kid: str = "test-es256",
        issuer: str | None = None,
        jwt_secret: str | None = JWT_SECRET,
        demo_user: bool = True,
    ) -> None:
        sock, self.port = bind_unused_port()
        self.fake = SupabaseAuthFake(
            anon_key=anon_key,
            issuer=issuer,
            base_url=self.url,
            jwk=jwk,
            kid=kid,
            jwt_secret=jwt_secret,
            demo_user=demo_user,
        )
        self.server = HTTPServer(make_supabase_app(self.fake))
        self.server.add_sockets([sock])

    @classmethod
    def from_interop_fixture(cls, **kwargs: Any) -> FakeSupabase:
        """A fake holding the fixture's private JWK, issuer, anon key and user (``ada@example.com``)."""
        fixture = json.loads(FIXTURES.read_text())["supabase_ssr"]
        kwargs.setdefault("anon_key", fixture["anon_key"])
        fake = cls(jwk=fixture["jwk_private"], issuer=f"{fixture['supabase_url']}/auth/v1", **kwargs)
        user = fixture["base64"]["session"]["user"]
        fake.add_user(
            user["email"], id=user["id"], user_metadata=user["user_metadata"], app_metadata=user["app_metadata"]
        )
        return fake

    # ---- addresses ---------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def auth_url(self) -> str:
        return f"{self.url}/auth/v1"

    @property
    def jwks_url(self) -> str:
        return f"{self.auth_url}/.well-known/jwks.json"

    @property
    def anon_key(self) -> str:
        return self.fake.anon_key

    @property
    def issuer(self) -> str:
        return self.fake.issuer

    @property
    def jwt_secret(self) -> str | None:
        return self.fake.jwt_secret

    @property
    def kid(self) -> str:
        """The kid of the newest ES256 key (the one `mint` uses)."""
        return self.fake.signing_key("ES256").kid

    # ---- tokens and users --------------------------------------------------------------------
    def mint(self, sub: str, **kwargs: Any) -> str:
        """`demo.supabase.SupabaseAuthFake.mint`: alg, ttl, session_id, kid, headers, claim overrides."""
        return self.fake.mint(sub, **kwargs)

    def revoke(self, session_id: str) -> None:
        self.fake.revoke(session_id)

    def session_json(self, token: str, refresh_token: str | None = None) -> dict[str, Any]:
        return self.fake.session_json(token, refresh_token)

    def ssr_cookie(self, session: Mapping[str, Any] | str, **kwargs: Any) -> list[tuple[str, str]]:
        """`demo.supabase.SupabaseAuthFake.ssr_cookie`: encoding, chunk_size, storage_key, percent_encode."""
        return self.fake.ssr_cookie(session, **kwargs)

    def add_user(self, email: str = "", password: str | None = None, **kwargs: Any) -> SupabaseUser:
        return self.fake.add_user(email, password, **kwargs)

    def delete_user(self, user_id: str) -> None:
        self.fake.delete_user(user_id)

    def ban(self, user_id: str, banned: bool = True) -> None:
        self.fake.ban(user_id, banned)

    def rotate_key(self, alg: Literal["ES256", "RS256"] = "ES256", kid: str | None = None) -> str:
        """Add a key (served by the JWKS from now on, used by later mints of ``alg``); its kid."""
        return self.fake.add_key(alg, kid).kid

    def remove_key(self, kid: str) -> None:
        self.fake.remove_key(kid)

    # ---- behaviour switches and counters -----------------------------------------------------
    @property
    def status_override(self) -> int | None:
        return self.fake.status_override

    @status_override.setter
    def status_override(self, value: int | None) -> None:
        self.fake.status_override = value

    @property
    def delay(self) -> float:
        return self.fake.delay

    @delay.setter
    def delay(self, value: float) -> None:
        self.fake.delay = value

    @property
    def jwks_cache_control(self) -> str:
        return self.fake.jwks_cache_control

    @jwks_cache_control.setter
    def jwks_cache_control(self, value: str) -> None:
        self.fake.jwks_cache_control = value

    @property
    def jwks_fetches(self) -> int:
        return self.fake.jwks_fetches

    @property
    def user_calls(self) -> int:
        return self.fake.user_calls

    @property
    def requests(self) -> list[AuthRequest]:
        return list(self.fake.requests)

    def calls(self, path: str) -> list[AuthRequest]:
        """Requests to ``path`` (e.g. ``/auth/v1/token``)."""
        return [r for r in self.requests if r.path == path]

    # ---- lifecycle ---------------------------------------------------------------------------
    def close(self) -> None:
        """Stop listening and cut every pending `delay` short."""
        self.fake.shutdown()
        self.server.stop()

    async def aclose(self) -> None:
        """`close`, then drop every open connection and wait for it."""
        self.close()
        await self.server.close_all_connections()
