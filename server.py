"""Gatehouse: the entry point and the application factory.

``make_app(settings)`` builds the Tornado application (tests serve it in-process);
``python server.py`` loads the settings, configures logging and the file descriptor limit,
binds the listening sockets, and then either serves them itself (``WORKERS=1``) or hands them
to a supervisor that runs ``WORKERS`` processes serving them (``ops/supervisor.py``). A serving
process sets up its event loop, starts the demo upstreams when no upstream is configured (demo
mode always runs one process), serves, and on SIGTERM / SIGINT drains (``ops/drain.py``).

With ``METRICS_PORT``, the metrics listener (``METRICS_HOST``:``METRICS_PORT``) is bound with the
gateway's socket and served, and drained, alongside it by every serving process. With workers,
their figures are kept in files of a directory ``main`` creates before any fork and before
``prometheus_client`` is imported (``ops/metrics_files.py``): any worker answers a scrape with
the sum over all of them. ``prometheus_client`` is imported only when metrics are on.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import os
import resource
import signal
import socket
import sys
from typing import TYPE_CHECKING, Any, Protocol

from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets
from tornado.web import Application

from frontdoor.connection import ConnectionParams
from frontdoor.server import FrontDoor
from handlers.access_log import JsonLineFormatter, log_request, set_worker
from handlers.auth import LoginHandler, LogoutHandler, SessionHandler
from handlers.base import NotFoundHandler
from handlers.chat import ENDPOINTS, ChatHandler, DifyApiHandler
from handlers.context import Context
from handlers.demo_page import demo_routes
from handlers.health import HealthHandler, ReadyHandler
from handlers.metrics import make_metrics_app
from handlers.preflight import GatewayApplication
from handlers.proxy import ProxyHandler
from ops import metrics_files
from ops.drain import DrainTimings, Listener, drain
from ops.gc_tuning import tune_gc
from ops.lifecycle import Lifecycle
from ops.log_stream import TurnFlushedStreamHandler
from ops.supervisor import Supervisor
from settings import Settings, SettingsError, load_settings

if TYPE_CHECKING:  # at run time only with metrics on (`open_metrics`): they import prometheus_client
    from ops.metrics import GatewayMetrics
    from ops.metrics_exposition import Exposition

__all__ = ["main", "make_app", "make_metrics_server", "make_server", "open_metrics"]

log = logging.getLogger("gatehouse")
_DRAIN_SIGNALS = {signal.SIGTERM, signal.SIGINT}
# Tornado's default of 128 pending connections resets clients when thousands of streams open at
# once (the benchmark opens 1,000 per second); the kernel caps this at net.core.somaxconn.
LISTEN_BACKLOG = 4096
IDLE_TIMEOUT = 75.0  # a kept-alive browser connection with no request (above load balancers' 60 s)
METRICS_BACKLOG = 128  # a few scrapers, not browsers
METRICS_MAX_BODY = 64 * 1024  # a scrape has no body


def make_app(settings: Settings, ctx: Context | None = None, lifecycle: Lifecycle | None = None) -> Application:
    """The gateway's routes, all sharing one `Context` and one `Lifecycle` (the drain's state,
    in the application's settings: ``lifecycle``); a feature's routes only when it is
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
    return GatewayApplication(
        routes,
        default_handler_class=NotFoundHandler,
        default_handler_args=args,
        preflight_args=args,  # CORS preflights, on any path (handlers/preflight.py)
        cors=ctx.cors,
        log_function=log_request,
        compress_response=False,  # never gzip text/event-stream; bodies are relayed as they came
        serve_traceback=False,
        lifecycle=lifecycle or Lifecycle(),
    )


class Server(Listener, Protocol):
    """What serving and draining need of either server: gatehouse's `FrontDoor`, or Tornado's
    ``HTTPServer`` (`TornadoServer`)."""

    def add_sockets(self, sockets: list[socket.socket]) -> None: ...


class TornadoServer(HTTPServer):
    """Tornado's ``HTTPServer``, drained as well as its public API allows. It stops accepting
    as gatehouse's own server does, but it cannot tell an idle keep-alive connection from a
    busy one, so idle ones stay open until the requests in hand are done (an answer during the
    drain says ``Connection: close``, and a well-behaved client does not reuse its connection),
    and are closed then. It is busy while a handler is (`Lifecycle.requests`)."""

    lifecycle: Lifecycle

    def drain(self) -> None:
        """Nothing to do here: the handlers close what they answer (see the class)."""

    @property
    def busy(self) -> bool:
        return bool(self.lifecycle.requests)


def make_server(app: Application, settings: Settings) -> Server:
    """The browser side: gatehouse's own HTTP/1.1 connection (``frontdoor/``), or with
    ``SERVER_IMPL=tornado`` Tornado's ``HTTPServer``, for comparison and as a fallback. Both
    serve the same Application; neither trusts a client's X-Forwarded-*."""
    if settings.server_impl == "tornado":
        server = TornadoServer(
            app,
            xheaders=False,
            max_body_size=settings.max_body_bytes,  # every route enforces its own limit
            idle_connection_timeout=IDLE_TIMEOUT,
        )
        server.lifecycle = app.settings["lifecycle"]
        return server
    params = ConnectionParams(idle_timeout=IDLE_TIMEOUT, max_body_size=settings.max_body_bytes)
    return FrontDoor(app, params, backlog=LISTEN_BACKLOG)


def open_metrics(directory: str | None) -> tuple[GatewayMetrics, Exposition]:
    """This process's metrics and their exposition: in memory (``directory`` None: one
    process), or in the workers' shared ``directory``. Imports ``prometheus_client``."""
    from ops.metrics import GatewayMetrics
    from ops.metrics_exposition import Exposition

    if directory is None:
        metrics = GatewayMetrics.in_memory()
        assert metrics.registry is not None
        return metrics, Exposition(registry=metrics.registry)
    return GatewayMetrics.in_files(), Exposition(directory=directory)


def make_metrics_server(exposition: Exposition) -> FrontDoor:
    """The metrics listener: gatehouse's own server connection, whatever ``SERVER_IMPL`` says
    (it drains as the drain needs, idle scrapers' connections included)."""
    params = ConnectionParams(idle_timeout=IDLE_TIMEOUT, max_body_size=METRICS_MAX_BODY)
    return FrontDoor(make_metrics_app(exposition), params, backlog=METRICS_BACKLOG)


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
    # No line carries them, and each costs every record a lookup (the logging HOWTO's
    # "Optimization"): the caller's file and line (a stack walk), thread and process names.
    logging._srcfile = None
    logging.logThreads = False
    logging.logMultiprocessing = False
    handler = TurnFlushedStreamHandler(sys.stdout)
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


@dataclasses.dataclass(frozen=True)
class MetricsPlan:
    """Where a serving process exposes its metrics, and where it keeps them."""

    sockets: list[socket.socket]  # bound to METRICS_HOST:METRICS_PORT by `main`
    directory: str | None  # the workers' shared files (ops/metrics_files.py); None: in memory

    @property
    def address(self) -> str:
        host, port = self.sockets[0].getsockname()[:2]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclasses.dataclass(frozen=True)
class Process:
    """One serving process: which worker it is, and the signals that drain it."""

    worker: int  # 0..workers-1
    workers: int
    fd_limit: int
    signals: tuple[signal.Signals, ...]  # under a supervisor, SIGTERM only (see ops/supervisor.py)
    # Alone, a second signal exits at once. Under a supervisor that is the supervisor's to do
    # (SIGKILL): a worker's second SIGTERM is a duplicate (e.g. systemd signalling the whole
    # cgroup as the supervisor forwards its own), so it drains on.
    second_signal_exits: bool = True
    metrics: MetricsPlan | None = None  # None: METRICS_PORT unset, no metrics kept


async def serve(settings: Settings, sockets: list[socket.socket], process: Process, loop_name: str) -> None:
    """Serve ``sockets`` until a signal, then drain (``ops/drain.py``); a second signal exits
    at once. The signals arrive blocked (`main`): one sent before serving began waits until
    its handler is in place, then starts the drain."""
    signalled = asyncio.Event()

    def on_signal(signum: signal.Signals) -> None:
        if signalled.is_set():
            if not process.second_signal_exits:
                return
            log.warning("second signal: exiting now", extra={"signal": signum.name})
            sys.stdout.flush()
            os._exit(1)  # at once: no drain, no cleanup; the kernel closes every connection
        log.info("signal received", extra={"signal": signum.name})
        signalled.set()

    loop = asyncio.get_running_loop()
    for signum in process.signals:
        loop.add_signal_handler(signum, on_signal, signum)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _DRAIN_SIGNALS)

    demo_banner = None
    if settings.demo:
        from demo import start_demo

        settings, demo_banner = await start_demo(settings)
    metrics, exposition = open_metrics(process.metrics.directory) if process.metrics else (None, None)
    ctx = Context.build(settings, metrics)
    lifecycle = Lifecycle()
    server = make_server(make_app(settings, ctx, lifecycle), settings)
    tune_gc()
    server.add_sockets(sockets)
    listeners: list[Listener] = [server]  # every listener of this process is drained alike
    if process.metrics is not None and exposition is not None:
        metrics_server = make_metrics_server(exposition)
        metrics_server.add_sockets(process.metrics.sockets)
        listeners.append(metrics_server)
    log.info(
        "listening",
        extra={
            "host": settings.host,
            "port": settings.port,
            "worker": process.worker,
            "workers": process.workers,
            "pid": os.getpid(),
            "event_loop": loop_name,
            "server": settings.server_impl,
            "fd_limit": process.fd_limit,
            "demo": settings.demo,
            "backend": str(settings.backend) if settings.backend else None,
            "chat": ctx.chat is not None,
            "dify": settings.dify_api_url if ctx.chat else None,
            "supabase_auth": settings.supabase.auth_mode if settings.supabase else None,
            "metrics": process.metrics.address if process.metrics else None,
        },
    )
    if demo_banner:
        print(demo_banner, flush=True)
    await signalled.wait()
    await drain(
        lifecycle,
        listeners,
        DrainTimings(settings.shutdown_delay, settings.drain_timeout),
        settled=lambda: ctx.upstream.active_fetches == 0,  # e.g. Dify stop calls still under way
    )
    await ctx.close()


def run_worker(settings: Settings, sockets: list[socket.socket], process: Process) -> int:
    """One serving process, from its event loop to its exit status."""
    set_worker(process.worker)
    loop_name = install_uvloop()  # here, after any fork: no event loop ever crosses one
    try:
        asyncio.run(serve(settings, sockets, process, loop_name))
    except OSError as exc:  # e.g. a demo upstream's port
        print(f"gatehouse: cannot start: {exc}", file=sys.stderr)
        return 1
    return 0


def main() -> int:
    try:
        settings = load_settings()
    except SettingsError as exc:
        print(f"gatehouse: configuration error: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level)
    fd_limit = raise_fd_limit()
    # Blocked from before the socket listens until a serving process can drain: a SIGTERM
    # sent as soon as the port answers must drain, not kill (each `serve` unblocks them).
    signal.pthread_sigmask(signal.SIG_BLOCK, _DRAIN_SIGNALS)
    workers = settings.workers
    if workers > 1 and settings.demo:
        # The demo upstreams live in the serving process; one process keeps the demo whole.
        log.warning("demo mode runs one process: WORKERS is ignored", extra={"workers": workers})
        workers = 1
    try:
        # Bound here, before any fork: every worker serves these same sockets.
        sockets = bind_sockets(settings.port, settings.host, backlog=LISTEN_BACKLOG)
        metrics_sockets = (
            bind_sockets(settings.metrics_port, settings.metrics_host, backlog=METRICS_BACKLOG)
            if settings.metrics_port is not None
            else []
        )
    except OSError as exc:  # e.g. the port is taken
        print(f"gatehouse: cannot start: {exc}", file=sys.stderr)
        return 1
    if workers == 1:
        metrics_files.in_memory()
        plan = MetricsPlan(metrics_sockets, None) if metrics_sockets else None
        return run_worker(settings, sockets, Process(0, 1, fd_limit, (signal.SIGTERM, signal.SIGINT), metrics=plan))
    if settings.redis_url is None:
        log.warning(
            "WORKERS > 1 without REDIS_URL: refresh single flight and the chat rate limit are per worker",
            extra={"workers": workers},
        )
    # Before any fork, and before anything imports prometheus_client: it reads the variable once.
    plan = MetricsPlan(metrics_sockets, metrics_files.prepare()) if metrics_sockets else None
    log.info(
        "supervisor",
        extra={
            "workers": workers,
            "pid": os.getpid(),
            "host": settings.host,
            "port": settings.port,
            "metrics": plan.address if plan else None,
            "metrics_dir": plan.directory if plan else None,
        },
    )
    worker = functools.partial(_worker_process, settings, sockets, workers, fd_limit, plan)
    # Its metrics files are folded into the archives when a worker exits (ops/metrics_files.py).
    on_exit = functools.partial(metrics_files.retire, plan.directory) if plan and plan.directory else None
    try:
        return Supervisor(workers, worker, sockets + metrics_sockets, on_exit=on_exit).run()
    finally:
        if plan is not None and plan.directory is not None:
            metrics_files.remove(plan.directory)


def _worker_process(
    settings: Settings,
    sockets: list[socket.socket],
    workers: int,
    fd_limit: int,
    metrics: MetricsPlan | None,
    index: int,
) -> int:
    return run_worker(settings, sockets, Process(index, workers, fd_limit, (signal.SIGTERM,), False, metrics))


if __name__ == "__main__":
    sys.exit(main())
