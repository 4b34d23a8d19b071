"""What every handler shares for the life of the process, built once at startup.

Each feature exists only when its upstream is configured (``settings.py``): `BackendFeature`
for ``/api/proxy`` and ``/api/auth``, `ChatFeature` for ``/api/chat``. ``server.make_app``
registers a feature's routes only when it is present, so its handlers may rely on it.
``supabase`` is there whenever ``SUPABASE_URL`` is: the chat's sign-in, and a second kind of
session ``/api/proxy`` accepts.
"""

from __future__ import annotations

import dataclasses

from auth.csrf import CsrfPolicy
from auth.refresh import Refresher
from auth.session import SessionReader, session_formats
from auth.supabase import SupabaseAuth
from handlers.ratelimit import RateLimiter
from settings import Settings
from upstream.client import UpstreamClient
from upstream.dify import DifyClient
from upstream.relay import RelayLimits

__all__ = ["BackendFeature", "ChatFeature", "Context"]


@dataclasses.dataclass(frozen=True)
class BackendFeature:
    """The private backend's sessions: next-auth / Auth.js cookies, refreshed at the backend."""

    sessions: SessionReader
    refresher: Refresher


@dataclasses.dataclass(frozen=True)
class ChatFeature:
    """Chat in front of Dify, for users signed in with Supabase."""

    dify: DifyClient
    limiter: RateLimiter


@dataclasses.dataclass(frozen=True)
class Context:
    settings: Settings
    upstream: UpstreamClient
    relay_limits: RelayLimits
    csrf: CsrfPolicy
    supabase: SupabaseAuth | None
    backend: BackendFeature | None
    chat: ChatFeature | None

    @classmethod
    def build(cls, settings: Settings) -> Context:
        upstream = UpstreamClient(
            connect_timeout=settings.upstream_connect_timeout,
            keepalive_connections=settings.upstream_keepalive_connections,
            keepalive_seconds=settings.upstream_keepalive_seconds,
        )
        supabase = None
        if settings.supabase is not None:
            supabase = SupabaseAuth(settings.supabase, upstream, timeout=settings.upstream_response_timeout)
        return cls(
            settings=settings,
            upstream=upstream,
            relay_limits=RelayLimits(
                response_timeout=settings.upstream_response_timeout,
                idle_timeout=settings.stream_idle_timeout,
                heartbeat_interval=settings.sse_heartbeat_interval,
            ),
            csrf=CsrfPolicy(
                allowed_origins=settings.allowed_origins,
                header_required=settings.csrf_header_required,
                https=settings.production,
            ),
            supabase=supabase,
            backend=_backend_feature(settings, upstream),
            chat=_chat_feature(settings, upstream) if supabase is not None else None,
        )

    async def close(self) -> None:
        if self.supabase is not None:
            await self.supabase.close()
        self.upstream.close()


def _backend_feature(settings: Settings, upstream: UpstreamClient) -> BackendFeature | None:
    if settings.backend is None:
        return None
    if not settings.session_secrets:
        raise ValueError("a session secret is required to serve the backend")
    return BackendFeature(
        sessions=SessionReader(session_formats(settings.session_secrets, settings.production)),
        refresher=Refresher(
            upstream,
            settings.backend_endpoint(settings.auth_refresh_path),
            timeout=settings.upstream_response_timeout,
            grace=settings.refresh_grace,
        ),
    )


def _chat_feature(settings: Settings, upstream: UpstreamClient) -> ChatFeature | None:
    if settings.dify_api_key is None:
        return None
    return ChatFeature(
        dify=DifyClient(settings.dify_api_url, settings.dify_api_key, upstream, settings.upstream_response_timeout),
        limiter=RateLimiter(per_minute=settings.chat_rate_per_minute),
    )
