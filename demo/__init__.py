"""Demo mode: in-process upstreams so `make run` works with no configuration.

Three fakes start on loopback ports: a private backend (``demo/backend.py``), a Dify chat app
(``demo/dify.py``, which streams a canned answer word by word) and a Supabase Auth server
(``demo/supabase.py``). Gatehouse is pointed at them with fresh random secrets, and the banner
prints a session cookie and a Supabase access token for the demo user, with curl lines to try.

Never used in production (``ENV=production`` without any upstream refuses to start).
"""

from __future__ import annotations

import dataclasses
import secrets

from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets
from tornado.web import Application

from auth.nextauth import NextAuthV4Codec
from demo.backend import DEMO_USER, make_backend_app
from demo.dify import DifyFake
from demo.supabase import DEMO_USER_ID, SupabaseAuthFake, make_supabase_app
from settings import BackendURL, Settings, SupabaseSettings

__all__ = ["start_demo"]

DEMO_TOKEN_SECONDS = 24 * 3600


def _serve(app: Application) -> int:
    """Serve ``app`` on a free loopback port; the port."""
    sockets = bind_sockets(0, "127.0.0.1")
    HTTPServer(app).add_sockets(sockets)
    return int(sockets[0].getsockname()[1])


async def start_demo(settings: Settings) -> tuple[Settings, str]:
    """Start the demo upstreams; the settings that point at them, and a banner with a ready
    session cookie and Supabase token for the demo user and curl lines to try."""
    backend_app, tokens = make_backend_app()
    backend_port = _serve(backend_app)
    dify = DifyFake(f"app-demo-{secrets.token_urlsafe(16)}")
    dify_port = _serve(dify.app)
    supabase = SupabaseAuthFake(anon_key=f"demo-anon-{secrets.token_urlsafe(8)}")
    supabase_port = _serve(make_supabase_app(supabase))
    supabase.base_url = f"http://127.0.0.1:{supabase_port}"

    secret = settings.session_secret or secrets.token_urlsafe(32)
    settings = dataclasses.replace(
        settings,
        backend=BackendURL("http", f"127.0.0.1:{backend_port}", ""),
        session_secret=secret,
        dify_api_url=f"http://127.0.0.1:{dify_port}/v1",
        dify_api_key=dify.api_key,
        supabase=SupabaseSettings(url=supabase.base_url, anon_key=supabase.anon_key),
    )
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
    supabase_token = supabase.mint(DEMO_USER_ID, ttl=DEMO_TOKEN_SECONDS)
    base = f"http://{settings.host}:{settings.port}"
    banner = "\n".join(
        (
            "",
            f"gatehouse demo: listening on {base}",
            f"  demo backend 127.0.0.1:{backend_port}, demo Dify 127.0.0.1:{dify_port}, "
            f"demo Supabase 127.0.0.1:{supabase_port}",
            "A session cookie and a Supabase access token for the demo user (valid while this process runs):",
            "",
            f"export GATEHOUSE_COOKIE='{settings.session_cookie_name}={cookie}'",
            f"export SUPABASE_TOKEN='{supabase_token}'",
            "",
            "Then try:",
            f'  curl -s -b "$GATEHOUSE_COOKIE" {base}/api/proxy/me',
            f'  curl -sN -b "$GATEHOUSE_COOKIE" "{base}/api/proxy/completion?prompt=hello"',
            '  curl -sN -H "Authorization: Bearer $SUPABASE_TOKEN" -H "Content-Type: application/json" \\',
            f'       -d \'{{"message": "hello"}}\' {base}/api/chat',
            "See README.md for the whole walkthrough.",
            "",
        )
    )
    return settings, banner
