"""What every handler shares for the life of the process, built once at startup."""

from __future__ import annotations

import dataclasses

from auth.csrf import CsrfPolicy
from auth.refresh import Refresher
from auth.session import SessionReader, session_formats
from settings import Settings
from upstream.client import UpstreamClient
from upstream.relay import RelayLimits

__all__ = ["Context"]


@dataclasses.dataclass(frozen=True)
class Context:
    settings: Settings
    sessions: SessionReader
    upstream: UpstreamClient
    relay_limits: RelayLimits
    csrf: CsrfPolicy
    refresher: Refresher

    @classmethod
    def build(cls, settings: Settings) -> Context:
        if not settings.session_secrets:
            raise ValueError("a session secret is required to serve requests")
        upstream = UpstreamClient(connect_timeout=settings.upstream_connect_timeout)
        return cls(
            settings=settings,
            sessions=SessionReader(session_formats(settings.session_secrets, settings.production)),
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
            refresher=Refresher(
                upstream,
                settings.backend_endpoint(settings.auth_refresh_path),
                timeout=settings.upstream_response_timeout,
                grace=settings.refresh_grace,
            ),
        )
