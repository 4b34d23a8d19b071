"""Demo mode: in-process upstreams so `make run` works with no configuration.

Three fakes start on loopback ports: a private backend (``demo/backend.py``), a Dify chat app
(``demo/dify.py``, which streams a canned answer word by word) and a Supabase Auth server
(``demo/supabase.py``). Gatehouse is pointed at them with fresh random secrets, serves the demo
web app at ``/`` (``demo/web/``, ``handlers/demo_page.py``), and the banner prints a session
cookie and a Supabase access token for the demo user, with curl lines to try.

The fakes listen on the three ports after gatehouse's own (8001, 8002 and 8003 beside the
default 8000) when those are free, else on any free port; the banner says where. Fixed ports
let a Next.js app beside gatehouse (``examples/nextjs``) find the demo backend's login and the
demo Supabase with no configuration. The demo Supabase's anon key is fixed too: an anon key is
public by Supabase's design (the browser sends it).

Never used in production (``ENV=production`` without any upstream refuses to start).
"""

from __future__ import annotations

import dataclasses
import secrets

from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets
from tornado.web import Application

from auth.nextauth import NextAuthV4Codec
from demo.backend import DEMO_USER, DemoBackend
from demo.dify import DifyFake
from demo.supabase import DEMO_USER_ID, SupabaseAuthFake, make_supabase_app
from settings import BackendURL, Settings, SupabaseSettings

__all__ = ["DEMO_ANON_KEY", "DemoUpstreams", "launch_demo", "start_demo"]

DEMO_TOKEN_SECONDS = 24 * 3600
DEMO_ANON_KEY = "demo-anon-key"


def _serve(app: Application, preferred: int) -> tuple[int, HTTPServer]:
    """Serve ``app`` on 127.0.0.1, on port ``preferred`` if it is free, else on any free port."""
    try:
        sockets = bind_sockets(preferred, "127.0.0.1") if 0 < preferred < 65536 else []
    except OSError:
        sockets = []
    sockets = sockets or bind_sockets(0, "127.0.0.1")
    server = HTTPServer(app)
    server.add_sockets(sockets)
    return int(sockets[0].getsockname()[1]), server


@dataclasses.dataclass
class DemoUpstreams:
    """The running demo upstreams, the settings that point gatehouse at them, and the banner."""

    backend: DemoBackend
    dify: DifyFake
    supabase: SupabaseAuthFake
    settings: Settings
    banner: str
    servers: tuple[HTTPServer, ...]

    @property
    def backend_url(self) -> str:
        return str(self.settings.backend)

    @property
    def dify_url(self) -> str:
        return self.settings.dify_api_url

    def stop(self) -> None:
        """Stop listening and wake every stream the fakes are sending."""
        self.dify.shutdown()
        self.supabase.shutdown()
        for server in self.servers:
            server.stop()


async def launch_demo(settings: Settings) -> DemoUpstreams:
    """Start the demo upstreams beside gatehouse's ``settings.port``."""
    backend = DemoBackend()
    backend_port, backend_server = _serve(backend.app, settings.port + 1)
    dify = DifyFake(f"app-demo-{secrets.token_urlsafe(16)}")
    dify_port, dify_server = _serve(dify.app, settings.port + 2)
    supabase = SupabaseAuthFake(anon_key=DEMO_ANON_KEY)
    supabase_port, supabase_server = _serve(make_supabase_app(supabase), settings.port + 3)
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
    tokens = backend.tokens
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
            f"gatehouse demo: open {base}/ in a browser (the demo app), or use curl.",
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
    servers = (backend_server, dify_server, supabase_server)
    return DemoUpstreams(backend, dify, supabase, settings, banner, servers)


async def start_demo(settings: Settings) -> tuple[Settings, str]:
    """Start the demo upstreams; the settings that point at them, and a banner with a ready
    session cookie and Supabase token for the demo user and curl lines to try."""
    demo = await launch_demo(settings)
    return demo.settings, demo.banner
