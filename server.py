"""Gatehouse: the entry point and the application factory.

``make_app(settings)`` builds the Tornado application (tests serve it in-process);
``python server.py`` loads the settings, configures logging, the event loop and the file
descriptor limit, starts the demo upstreams when no ``BACKEND_URL`` is configured, listens,
and drains on SIGTERM / SIGINT.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import signal
import socket
import sys
from typing import Any, Protocol

from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets
from tornado.web import Application

from frontdoor.connection import ConnectionParams
from frontdoor.server import FrontDoor
from handlers.access_log import JsonLineFormatter, log_request
from handlers.auth import LoginHandler, LogoutHandler, SessionHandler
from handlers.base import NotFoundHandler
from handlers.chat import ENDPOINTS, ChatHandler, DifyApiHandler
from handlers.context import Context
from handlers.demo_page import demo_routes
from handlers.health import HealthHandler, ReadyHandler
from handlers.proxy import ProxyHandler
from settings import Settings, SettingsError, load_settings

__all__ = ["main", "make_app", "make_server"]

log = logging.getLogger("gatehouse")
SHUTDOWN_GRACE_SECONDS = 10.0
# Tornado's default of 128 pending connections resets clients when thousands of streams open at
# once (the benchmark opens 1,000 per second); the kernel caps this at net.core.somaxconn.
LISTEN_BACKLOG = 4096
IDLE_TIMEOUT = 75.0  # a kept-alive browser connection with no request (above load balancers' 60 s)


def make_app(settings: Settings, ctx: Context | None = None) -> Application:
    """The gateway's routes, all sharing one `Context`; a feature's routes only when it is
    configured (any other path is a JSON 404)."""
    ctx = ctx or Context.build(settings)
    args: dict[str, Any] = {"ctx": ctx}
    routes: list[Any] = [(r"/healthz", HealthHandler, args), (r"/readyz", ReadyHandler, args)]
    if ctx.backend is not None:
        routes += [
            (r"/api/proxy/.*", ProxyHandler, args),
            (r"/api/auth/login", LoginHandler, args),
            (r"/api/auth/logout", LogoutHandler, args),
            (r"/api/auth/session", SessionHandler, args),
        ]
    if ctx.chat is not None:
        routes.append((r"/api/chat", ChatHandler, args))
        routes += [(path, DifyApiHandler, {**args, "endpoint": endpoint}) for path, endpoint in ENDPOINTS.items()]
    if settings.demo:
        routes += demo_routes(args)
    return Application(
        routes,
        default_handler_class=NotFoundHandler,
        default_handler_args=args,
        log_function=log_request,
        compress_response=False,  # never gzip text/event-stream; bodies are relayed as they came
        serve_traceback=False,
    )


class Server(Protocol):
    """What serving needs of either server: Tornado's ``HTTPServer`` or gatehouse's `FrontDoor`."""

    def add_sockets(self, sockets: list[socket.socket]) -> None: ...
    def stop(self) -> None: ...
    async def close_all_connections(self) -> None: ...


def make_server(app: Application, settings: Settings) -> Server:
    """The browser side: gatehouse's own HTTP/1.1 connection (``frontdoor/``), or with
    ``SERVER_IMPL=tornado`` Tornado's ``HTTPServer``, for comparison and as a fallback. Both
    serve the same Application; neither trusts a client's X-Forwarded-*."""
    if settings.server_impl == "tornado":
        return HTTPServer(
            app,
            xheaders=False,
            max_body_size=settings.max_body_bytes,  # every route enforces its own limit
            idle_connection_timeout=IDLE_TIMEOUT,
        )
    params = ConnectionParams(idle_timeout=IDLE_TIMEOUT, max_body_size=settings.max_body_bytes)
    return FrontDoor(app, params, backlog=LISTEN_BACKLOG)


class _WithholdRequestDetails(logging.Filter):
    """Tornado logs a malformed request with the offending line, such as a whole ``Cookie``
    header (``Malformed HTTP message from ...: Invalid header value '...'``). Keep the event,
    drop the details: they can hold a session cookie."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg.startswith("Malformed HTTP message") if isinstance(record.msg, str) else False:
            record.msg, record.args = "Malformed HTTP message from a client (details withheld)", ()
        return True


def configure_logging(level: str) -> None:
    logging.getLogger("tornado.general").addFilter(_WithholdRequestDetails())
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonLineFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


def raise_fd_limit() -> int:
    """Lift the soft open-file limit to the hard one: each stream holds two sockets."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1_048_576)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            return target
        except (ValueError, OSError):
            pass
    return soft


def install_uvloop() -> str:
    try:
        import uvloop
    except ImportError:
        return "asyncio"
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return "uvloop"


async def serve(settings: Settings, loop_name: str, fd_limit: int) -> None:
    demo_banner = None
    if settings.demo:
        from demo import start_demo

        settings, demo_banner = await start_demo(settings)
    ctx = Context.build(settings)
    server = make_server(make_app(settings, ctx), settings)
    server.add_sockets(bind_sockets(settings.port, settings.host, backlog=LISTEN_BACKLOG))
    log.info(
        "listening",
        extra={
            "host": settings.host,
            "port": settings.port,
            "event_loop": loop_name,
            "server": settings.server_impl,
            "fd_limit": fd_limit,
            "demo": settings.demo,
            "backend": str(settings.backend) if settings.backend else None,
            "chat": ctx.chat is not None,
            "dify": settings.dify_api_url if ctx.chat else None,
            "supabase_auth": settings.supabase.auth_mode if settings.supabase else None,
        },
    )
    if demo_banner:
        print(demo_banner, flush=True)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutting down")
    server.stop()  # no new connections; requests in flight get a grace period, then are cut
    deadline = loop.time() + SHUTDOWN_GRACE_SECONDS
    while ctx.upstream.active_fetches and loop.time() < deadline:  # noqa: ASYNC110 - polling a counter
        await asyncio.sleep(0.1)
    await server.close_all_connections()
    await ctx.close()


def main() -> int:
    try:
        settings = load_settings()
    except SettingsError as exc:
        print(f"gatehouse: configuration error: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level)
    loop_name = install_uvloop()
    fd_limit = raise_fd_limit()
    try:
        asyncio.run(serve(settings, loop_name, fd_limit))
    except OSError as exc:  # e.g. the port is taken
        print(f"gatehouse: cannot start: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
