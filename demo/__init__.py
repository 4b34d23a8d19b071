"""Demo mode: in-process upstreams so `make run` works with no configuration.

Never used in production (``ENV=production`` without ``BACKEND_URL`` refuses to start).
"""

from __future__ import annotations

import dataclasses
import secrets

from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets

from auth.nextauth import NextAuthV4Codec
from demo.backend import DEMO_USER, make_backend_app
from settings import BackendURL, Settings

__all__ = ["start_demo"]


async def start_demo(settings: Settings) -> tuple[Settings, str]:
    """Start the demo backend on a loopback port; the settings that point at it, and a banner
    with a ready session cookie for the demo user and curl lines to try."""
    backend_app, tokens = make_backend_app()
    sockets = bind_sockets(0, "127.0.0.1")
    HTTPServer(backend_app).add_sockets(sockets)
    port = sockets[0].getsockname()[1]
    secret = settings.session_secret or secrets.token_urlsafe(32)
    settings = dataclasses.replace(settings, backend=BackendURL("http", f"127.0.0.1:{port}", ""), session_secret=secret)
    access, refresh = tokens.issue(DEMO_USER["id"])
    cookie = NextAuthV4Codec(secret).encode(
        {
            "sub": DEMO_USER["id"],
            "name": DEMO_USER["name"],
            "email": DEMO_USER["email"],
            "access_token": access,
            "refresh_token": refresh,
            "expires_at": tokens.expires_at(access),
        }
    )
    base = f"http://{settings.host}:{settings.port}"
    banner = "\n".join(
        (
            "",
            f"gatehouse demo: listening on {base}, demo backend on 127.0.0.1:{port}",
            "A session cookie for the demo user (valid while this process runs):",
            "",
            f"export GATEHOUSE_COOKIE='{settings.session_cookie_name}={cookie}'",
            "",
            "Then try:",
            f'  curl -s -b "$GATEHOUSE_COOKIE" {base}/api/proxy/me',
            f'  curl -sN -b "$GATEHOUSE_COOKIE" "{base}/api/proxy/completion?prompt=hello"',
            "See README.md for the whole walkthrough.",
            "",
        )
    )
    return settings, banner
