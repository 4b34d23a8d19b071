"""The demo web app (``demo/web/``), served at ``/`` in demo mode only: production serves no pages.

Every file is read once, when the routes are built at startup; a request is a dictionary lookup
(so no path from the browser ever reaches the file system) and one write. ``/demo/config.json``
tells the page where the demo Supabase is and its anon key: both public by Supabase's design, as
a Next.js app's ``NEXT_PUBLIC_SUPABASE_URL`` and ``NEXT_PUBLIC_SUPABASE_ANON_KEY`` are. Nothing
else of the configuration reaches the page.

Each answer carries a strict Content-Security-Policy: scripts, styles and connections from
gatehouse's own origin only (plus the demo Supabase, which the page signs in to), no inline
script, no framing.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from handlers.base import BaseHandler
from handlers.context import Context
from handlers.errors import ApiError
from settings import origin_of

__all__ = ["WEB_ROOT", "Asset", "DemoPageHandler", "demo_routes", "load_assets"]

WEB_ROOT = Path(__file__).resolve().parent.parent / "demo" / "web"
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".svg": "image/svg+xml",
    ".json": "application/json",
}


@dataclasses.dataclass(frozen=True)
class Asset:
    body: bytes
    content_type: str


def load_assets(root: Path | None = None) -> dict[str, Asset]:
    """Every file under ``root`` (default `WEB_ROOT`) of a known type, by its path relative to it."""
    root = root or WEB_ROOT
    return {
        path.relative_to(root).as_posix(): Asset(path.read_bytes(), CONTENT_TYPES[path.suffix])
        for path in sorted(root.rglob("*"))
        if path.is_file() and path.suffix in CONTENT_TYPES
    }


def content_security_policy(connect: tuple[str, ...]) -> str:
    sources = " ".join(("'self'", *connect))
    return "; ".join(
        (
            "default-src 'self'",
            "script-src 'self'",
            "style-src 'self'",
            "img-src 'self'",
            f"connect-src {sources}",
            "form-action 'self'",
            "frame-ancestors 'none'",
            "base-uri 'none'",
            "object-src 'none'",
        )
    )


class DemoPageHandler(BaseHandler):
    """``/`` (the page) and ``/demo/<file>`` (its scripts, styles and configuration)."""

    SUPPORTED_METHODS = ("GET", "HEAD")
    route = "demo_page"

    def initialize(self, ctx: Context, assets: dict[str, Asset], csp: str) -> None:  # type: ignore[override]
        super().initialize(ctx)
        self.assets, self.csp = assets, csp

    def get(self, name: str = "index.html") -> None:
        asset = self.assets.get(name)
        if asset is None:
            raise ApiError(404, "not_found", "No such route.")
        self.set_header("Content-Type", asset.content_type)
        self.set_header("Content-Security-Policy", self.csp)
        self.set_header("X-Frame-Options", "DENY")
        self.set_header("Referrer-Policy", "same-origin")
        self.set_header("Cache-Control", "no-cache")
        self.write(asset.body)

    head = get  # Tornado sends the headers only


def demo_routes(args: dict[str, Any]) -> list[Any]:
    """The demo app's routes, its files read now (at startup)."""
    ctx: Context = args["ctx"]
    supabase = ctx.settings.supabase
    assets = load_assets()
    config = {
        "supabaseUrl": supabase.url if supabase else None,
        "supabaseAnonKey": supabase.anon_key if supabase else None,
    }
    assets["config.json"] = Asset(json.dumps(config).encode(), CONTENT_TYPES[".json"])
    supabase_origin = origin_of(supabase.url) if supabase else None
    page = {**args, "assets": assets, "csp": content_security_policy((supabase_origin,) if supabase_origin else ())}
    return [(r"/", DemoPageHandler, page), (r"/demo/([A-Za-z0-9_./-]+)", DemoPageHandler, page)]
