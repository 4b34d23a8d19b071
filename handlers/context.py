"""What every handler shares for the life of the process, built once at startup.

Each feature exists only when its upstream is configured (``settings.py``): `BackendFeature`
for ``/api/proxy`` and ``/api/auth``, `ChatFeature` for ``/api/chat``. ``server.make_app``
registers a feature's routes only when it is present, so its handlers may rely on it.
``supabase`` is there whenever ``SUPABASE_URL`` is: the chat's sign-in, and a second kind of
session ``/api/proxy`` accepts. ``redis`` is there whenever ``REDIS_URL`` is: the refresher's
cross-process single flight and the chat's rate limit go through it, and ``redis_status``
says whether it answers. ``metrics`` is there whenever ``METRICS_PORT`` is: `Context.build`
connects the lower layers' hooks to it (each upstream's calls, the refresher's results, Redis's
errors); the handlers record requests, relays and streams themselves.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from auth.csrf import CsrfPolicy
from auth.refresh import Refresher
from auth.session import SessionReader, session_formats
from auth.supabase import SupabaseAuth
from handlers.cors import CorsPolicy
from handlers.ratelimit import RateLimiter
from settings import Settings
from shared.buckets import SharedBuckets
from shared.flight import SharedFlight
from shared.redis import RedisLink, Status
from upstream.client import UpstreamClient
from upstream.dify import DifyClient
from upstream.relay import RelayLimits

if TYPE_CHECKING:  # imported by server.serve only when metrics are on: it imports prometheus_client
    from ops.metrics import GatewayMetrics

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
    cors: CorsPolicy
    supabase: SupabaseAuth | None
    backend: BackendFeature | None
    chat: ChatFeature | None
    redis: RedisLink | None = None
    metrics: GatewayMetrics | None = None

    @property
    def redis_status(self) -> Status | None:
        """For ``/readyz``: ``"ok"`` while Redis answers, ``"unavailable"`` during an outage
        (requests then use per-process state; readiness is not affected), None without ``REDIS_URL``."""
        return None if self.redis is None else self.redis.status

    @classmethod
    def build(cls, settings: Settings, metrics: GatewayMetrics | None = None) -> Context:
        """Everything the handlers share, with ``metrics`` (None: none are kept) connected."""
        client = UpstreamClient(
            connect_timeout=settings.upstream_connect_timeout,
            keepalive_connections=settings.upstream_keepalive_connections,
            keepalive_seconds=settings.upstream_keepalive_seconds,
        )

        def client_for(upstream: str, configured: object) -> UpstreamClient:
            """The client, its calls measured as ``upstream``'s (one connection pool for all),
            once ``configured``: an upstream that is not has no series."""
            return client if metrics is None or not configured else client.observed(metrics.upstream(upstream))

        # The gateway's own calls to the backend (login, logout) go through `Context.upstream`.
        upstream = client_for("backend", settings.backend)
        supabase = None
        if settings.supabase is not None:
            supabase = SupabaseAuth(
                settings.supabase,
                client_for("supabase", True),
                timeout=settings.upstream_response_timeout,
                observer=None if metrics is None else metrics.upstream("supabase"),
            )
        redis = RedisLink(settings.redis_url, settings.redis_timeout) if settings.redis_url else None
        if redis is not None and metrics is not None:
            redis.on_error = metrics.redis_error
        backend = _backend_feature(settings, client_for("refresh", settings.backend), redis)
        if backend is not None and metrics is not None:
            backend.refresher.on_result = metrics.refresh_result
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
            cors=CorsPolicy(settings.allowed_origins),
            supabase=supabase,
            backend=backend,
            chat=_chat_feature(settings, client_for("dify", settings.dify_api_key), redis) if supabase else None,
            redis=redis,
            metrics=metrics,
        )

    async def close(self) -> None:
        if self.supabase is not None:
            await self.supabase.close()
        if self.redis is not None:
            await self.redis.close()
        self.upstream.close()


def _backend_feature(settings: Settings, upstream: UpstreamClient, redis: RedisLink | None) -> BackendFeature | None:
    if settings.backend is None:
        return None
    if not settings.session_secret:
        raise ValueError("a session secret is required to serve the backend")
    # Every instance shares SESSION_SECRET (it must decrypt every cookie), so every instance
    # derives the same names and sealing keys from it.
    shared = SharedFlight(redis, settings.session_secret, "refresh") if redis is not None else None
    return BackendFeature(
        sessions=SessionReader(session_formats(settings.session_secrets, settings.production)),
        refresher=Refresher(
            upstream,
            settings.backend_endpoint(settings.auth_refresh_path),
            timeout=settings.upstream_response_timeout,
            grace=settings.refresh_grace,
            shared=shared,
        ),
    )


def _chat_feature(settings: Settings, upstream: UpstreamClient, redis: RedisLink | None) -> ChatFeature | None:
    if settings.dify_api_key is None:
        return None
    return ChatFeature(
        dify=DifyClient(settings.dify_api_url, settings.dify_api_key, upstream, settings.upstream_response_timeout),
        limiter=RateLimiter(
            per_minute=settings.chat_rate_per_minute,
            shared=SharedBuckets(redis, "chat") if redis is not None else None,
        ),
    )
