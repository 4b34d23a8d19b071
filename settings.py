"""Gatehouse configuration: one frozen `Settings` built once, at startup.

Every value comes from the environment (or a ``.env`` file beside the process; the real
environment wins). Each variable is parsed and checked here, so a bad value stops the process
with one line naming the variable, and nothing reads ``os.environ`` at request time.

The seed projects' variable names are accepted as aliases (``NEXT_PUBLIC_BACKEND_URL``,
``NEXTAUTH_SECRET``, ``AUTH_SECRET``, ``NODE_ENV``), first name winning.

Features switch on with their upstream: ``BACKEND_URL`` (plus a session secret) serves
``/api/proxy`` and ``/api/auth``; ``DIFY_API_KEY`` (plus ``SUPABASE_URL``) serves ``/api/chat``.
With neither, and no ``SUPABASE_URL``, gatehouse runs in demo mode (development only).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
import urllib.parse
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TypeVar

__all__ = ["Settings", "SettingsError", "SupabaseSettings", "cookie_name", "load_settings", "origin_of", "read_dotenv"]

MIB = 1024 * 1024
_T = TypeVar("_T")


class SettingsError(ValueError):
    """A configuration value is missing or invalid. The message names the variable."""


def cookie_name(name: str, production: bool) -> str:
    """``name``, ``__Secure-`` prefixed in production (served over https), as next-auth names it."""
    return f"__Secure-{name}" if production else name


@functools.lru_cache(maxsize=256)  # browsers send the same few Origin and Referer values over and over
def origin_of(url: str) -> str | None:
    """``scheme://host[:port]`` of ``url``, lower-cased, default ports dropped; None if it has none."""
    try:
        parts = urllib.parse.urlsplit(url.strip())
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    default = {"http": 80, "https": 443}[parts.scheme]
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"{parts.scheme}://{host}" + (f":{port}" if port not in (None, default) else "")


@dataclasses.dataclass(frozen=True)
class BackendURL:
    """The private backend's base URL, split once so requests can be built from parts."""

    scheme: str
    netloc: str
    base_path: str  # "" or "/v1": no trailing slash

    def __str__(self) -> str:
        return f"{self.scheme}://{self.netloc}{self.base_path}"


@dataclasses.dataclass(frozen=True)
class SupabaseSettings:
    """The Supabase project whose sessions authenticate ``/api/chat``."""

    url: str  # no trailing slash
    anon_key: str | None = None
    jwt_secret: str | None = None  # legacy HS256 projects
    auth_mode: str = "local"  # local: verify signatures here; remote: ask Supabase (sees revocation)
    jwt_issuer: str = ""  # ``iss`` the tokens must carry; "" means ``<url>/auth/v1``
    user_cache_seconds: float = 30.0  # remote mode: how long a positive answer is reused
    cookie: str = ""  # the @supabase/ssr cookie's name; "" means the default for ``url``

    @property
    def issuer(self) -> str:
        return self.jwt_issuer or f"{self.url}/auth/v1"

    @property
    def jwks_url(self) -> str:
        return f"{self.url}/auth/v1/.well-known/jwks.json"

    @property
    def cookie_name(self) -> str:
        """``SUPABASE_COOKIE_NAME``, else ``@supabase/ssr``'s default storage key:
        ``sb-<first label of the host>-auth-token``."""
        host = urllib.parse.urlsplit(self.url).hostname or ""
        return self.cookie or f"sb-{host.split('.')[0]}-auth-token"


@dataclasses.dataclass(frozen=True)
class Settings:
    backend: BackendURL | None  # None only before demo mode fills it in
    session_secret: str | None
    production: bool
    host: str = "127.0.0.1"
    port: int = 8000
    public_paths: tuple[str, ...] = ("auth/password-reset", "auth/forgot-password")
    upstream_connect_timeout: float = 10.0
    upstream_response_timeout: float = 60.0
    upstream_keepalive_connections: int = 100  # idle connections kept per upstream origin; 0: none
    upstream_keepalive_seconds: float = 4.0  # below the 5 s idle timeout of Node and uvicorn
    stream_idle_timeout: float = 300.0
    sse_heartbeat_interval: float = 15.0
    max_body_bytes: int = 100 * MIB
    max_json_bytes: int = 1 * MIB  # JSON is parsed on the event loop: keep it small; <= max_body_bytes
    log_level: str = "INFO"
    server_impl: str = "gatehouse"  # the browser side: gatehouse's own connection, or "tornado"
    auth_refresh_path: str = "/auth/refresh"
    auth_login_path: str = "/auth/login"
    auth_logout_path: str | None = None  # not called unless configured
    refresh_leeway: float = 60.0
    refresh_grace: float = 30.0
    session_max_age: int = 30 * 24 * 60 * 60
    previous_secrets: tuple[str, ...] = ()  # AUTH_SECRET_1..3: Auth.js v5 secret rotation
    allowed_origins: frozenset[str] = frozenset()
    session_cookie_samesite: str = "Lax"  # "None" (always with Secure) for a front end on another site
    csrf_header_required: bool = False
    dify_api_url: str = "https://api.dify.ai/v1"
    dify_api_key: str | None = None  # set: /api/chat is served
    supabase: SupabaseSettings | None = None
    chat_max_body_bytes: int = 256 * 1024
    chat_rate_per_minute: int = 20  # per user; 0 turns the limit off
    demo: bool = False  # no upstream configured: `make run` starts in-process demo upstreams
    workers: int = 1  # processes sharing the listening socket, under one supervisor
    metrics_host: str = "127.0.0.1"
    metrics_port: int | None = None  # None: no metrics listener
    shutdown_delay: float = 0.0  # seconds /readyz says "draining" before the listener closes
    drain_timeout: float = 30.0  # seconds requests in flight get to end once the listener closes
    redis_url: str | None = None  # shared state across workers and instances; a secret (may hold a password)
    redis_timeout: float = 0.5  # the bound on every Redis call

    def __post_init__(self) -> None:
        # A JSON body is a body: its limit never exceeds MAX_BODY_BYTES, however built.
        object.__setattr__(self, "max_json_bytes", min(self.max_json_bytes, self.max_body_bytes))

    @property
    def session_secrets(self) -> tuple[str, ...]:
        """The secret that makes new sessions first, then older ones that still decode (v5)."""
        return (self.session_secret, *self.previous_secrets) if self.session_secret else ()

    def backend_endpoint(self, path: str) -> str:
        """The URL of one of the backend's own endpoints (``path`` from the settings)."""
        assert self.backend is not None
        return f"{self.backend}{path}"

    @property
    def session_cookie_name(self) -> str:
        """The cookie gatehouse issues (next-auth v4's, so a Next.js app can read it)."""
        return cookie_name("next-auth.session-token", self.production)


def read_dotenv(path: Path) -> dict[str, str]:
    """Parse a ``.env`` file: ``KEY=VALUE`` lines, ``#`` comments, optional ``export``
    prefix and matching single or double quotes. A missing file is an empty mapping."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    values: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        line = line.removeprefix("export ").lstrip()
        key, sep, value = line.partition("=")
        key = key.strip()
        if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
            raise SettingsError(f"{path}:{number}: expected KEY=VALUE")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        elif " #" in value:
            value = value.split(" #", 1)[0].rstrip()
        values[key] = value
    return values


def load_settings(environ: Mapping[str, str] | None = None, dotenv: Path | None = Path(".env")) -> Settings:
    """Build `Settings` from ``environ`` (default ``os.environ``) over the ``.env`` file.

    Raises `SettingsError` with a one-line message naming the offending variable.
    """
    env: dict[str, str] = read_dotenv(dotenv) if dotenv is not None else {}
    env.update(os.environ if environ is None else environ)
    reader = _Reader(env)

    environment = reader.choice(("ENV", "NODE_ENV"), ("development", "production", "test"), "development")
    production = environment == "production"
    backend = reader.get(("BACKEND_URL", "NEXT_PUBLIC_BACKEND_URL"), _parse_backend_url, None)
    secret = reader.get(("SESSION_SECRET", "NEXTAUTH_SECRET", "AUTH_SECRET"), _text, None)
    dify_key = reader.get(("DIFY_API_KEY",), _text, None)
    supabase = _supabase_settings(reader)
    demo = backend is None and dify_key is None and supabase is None
    if production and demo:
        raise SettingsError(
            "BACKEND_URL (or DIFY_API_KEY) is required when ENV=production (demo mode is for development only)"
        )
    if backend is not None and secret is None:
        raise SettingsError("SESSION_SECRET (or NEXTAUTH_SECRET / AUTH_SECRET) is required when BACKEND_URL is set")
    metrics_port = reader.get(("METRICS_PORT",), _int_in(0, 65535), None)
    if metrics_port and metrics_port == reader.get(("PORT",), _int_in(0, 65535), 8000):
        raise SettingsError("METRICS_PORT: must differ from PORT (metrics are never served on the public port)")
    if dify_key is not None and supabase is None:
        raise SettingsError("SUPABASE_URL is required when DIFY_API_KEY is set: chat users sign in with Supabase")

    defaults = Settings(backend=None, session_secret=None, production=False)
    return Settings(
        backend=backend,
        session_secret=secret,
        production=production,
        host=reader.get(("HOST",), _text, defaults.host),
        port=reader.get(("PORT",), _int_in(0, 65535), defaults.port),
        public_paths=reader.get(("PUBLIC_PATHS",), _path_prefixes, defaults.public_paths),
        upstream_connect_timeout=reader.get(
            ("UPSTREAM_CONNECT_TIMEOUT",), _positive_float, defaults.upstream_connect_timeout
        ),
        upstream_response_timeout=reader.get(
            ("UPSTREAM_RESPONSE_TIMEOUT",), _positive_float, defaults.upstream_response_timeout
        ),
        upstream_keepalive_connections=reader.get(
            ("UPSTREAM_KEEPALIVE_CONNECTIONS",), _int_in(0, 100_000), defaults.upstream_keepalive_connections
        ),
        upstream_keepalive_seconds=reader.get(
            ("UPSTREAM_KEEPALIVE_SECONDS",), _positive_float, defaults.upstream_keepalive_seconds
        ),
        stream_idle_timeout=reader.get(("STREAM_IDLE_TIMEOUT",), _positive_float, defaults.stream_idle_timeout),
        sse_heartbeat_interval=reader.get(
            ("SSE_HEARTBEAT_INTERVAL",), _positive_float, defaults.sse_heartbeat_interval
        ),
        max_body_bytes=reader.get(("MAX_BODY_BYTES",), _int_in(0, 2**53), defaults.max_body_bytes),
        max_json_bytes=reader.get(("MAX_JSON_BYTES",), _int_in(0, 2**53), defaults.max_json_bytes),
        log_level=reader.choice(("LOG_LEVEL",), ("DEBUG", "INFO", "WARNING", "ERROR"), defaults.log_level, upper=True),
        server_impl=reader.choice(("SERVER_IMPL",), ("gatehouse", "tornado"), defaults.server_impl),
        auth_refresh_path=reader.get(("AUTH_REFRESH_PATH",), _backend_path, defaults.auth_refresh_path),
        auth_login_path=reader.get(("AUTH_LOGIN_PATH",), _backend_path, defaults.auth_login_path),
        auth_logout_path=reader.get(("AUTH_LOGOUT_PATH",), _backend_path, defaults.auth_logout_path),
        refresh_leeway=reader.get(("REFRESH_LEEWAY",), _non_negative_float, defaults.refresh_leeway),
        refresh_grace=reader.get(("REFRESH_GRACE",), _non_negative_float, defaults.refresh_grace),
        session_max_age=reader.get(("SESSION_MAX_AGE",), _int_in(60, 400 * 24 * 60 * 60), defaults.session_max_age),
        previous_secrets=tuple(
            s for s in (reader.get((f"AUTH_SECRET_{n}",), _text, None) for n in (1, 2, 3)) if s is not None
        ),
        allowed_origins=reader.get(("ALLOWED_ORIGINS",), _origins, defaults.allowed_origins),
        session_cookie_samesite=reader.get(("SESSION_COOKIE_SAMESITE",), _samesite, defaults.session_cookie_samesite),
        csrf_header_required=reader.get(("CSRF_HEADER_REQUIRED",), _boolean, defaults.csrf_header_required),
        dify_api_url=reader.get(("DIFY_API_URL",), _service_url, defaults.dify_api_url),
        dify_api_key=dify_key,
        supabase=supabase,
        chat_max_body_bytes=reader.get(("CHAT_MAX_BODY_BYTES",), _int_in(1024, 2**53), defaults.chat_max_body_bytes),
        chat_rate_per_minute=reader.get(
            ("CHAT_RATE_PER_MINUTE",), _int_in(0, 1_000_000), defaults.chat_rate_per_minute
        ),
        demo=demo,
        workers=reader.get(("WORKERS",), _workers, defaults.workers),
        metrics_host=reader.get(("METRICS_HOST",), _text, defaults.metrics_host),
        metrics_port=metrics_port,
        shutdown_delay=reader.get(("SHUTDOWN_DELAY",), _non_negative_float, defaults.shutdown_delay),
        drain_timeout=reader.get(("DRAIN_TIMEOUT",), _non_negative_float, defaults.drain_timeout),
        redis_url=reader.get(("REDIS_URL",), _redis_url, defaults.redis_url, secret=True),
        redis_timeout=reader.get(("REDIS_TIMEOUT",), _positive_float, defaults.redis_timeout),
    )


def _supabase_settings(reader: _Reader) -> SupabaseSettings | None:
    url = reader.get(("SUPABASE_URL", "NEXT_PUBLIC_SUPABASE_URL"), _service_url, None)
    if url is None:
        return None
    anon_key = reader.get(("SUPABASE_ANON_KEY", "NEXT_PUBLIC_SUPABASE_ANON_KEY"), _text, None)
    mode = reader.choice(("SUPABASE_AUTH_MODE",), ("local", "remote"), "local")
    if mode == "remote" and anon_key is None:
        raise SettingsError("SUPABASE_ANON_KEY is required when SUPABASE_AUTH_MODE=remote")
    defaults = SupabaseSettings(url=url)
    return SupabaseSettings(
        url=url,
        anon_key=anon_key,
        jwt_secret=reader.get(("SUPABASE_JWT_SECRET",), _text, None),
        auth_mode=mode,
        jwt_issuer=reader.get(("SUPABASE_JWT_ISSUER",), _service_url, ""),
        user_cache_seconds=reader.get(
            ("SUPABASE_USER_CACHE_SECONDS",), _non_negative_float, defaults.user_cache_seconds
        ),
        cookie=reader.get(("SUPABASE_COOKIE_NAME",), _cookie_name, ""),
    )


class _Reader:
    """Looks a value up under its name and aliases and parses it, naming the variable on error."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self._env = env

    def get(self, names: tuple[str, ...], parse: Callable[[str], _T], default: _T, secret: bool = False) -> _T:
        """The first of ``names`` set, parsed; a ``secret`` value is never repeated in the error."""
        for name in names:
            raw = self._env.get(name)
            if raw is None or raw.strip() == "":
                continue
            try:
                return parse(raw.strip())
            except ValueError as exc:
                raise SettingsError(f"{name}: {exc}" + ("" if secret else f" (got {raw!r})")) from None
        return default

    def choice(self, names: tuple[str, ...], allowed: tuple[str, ...], default: str, upper: bool = False) -> str:
        def parse(raw: str) -> str:
            value = raw.upper() if upper else raw.lower()
            if value not in allowed:
                raise ValueError(f"must be one of {', '.join(allowed)}")
            return value

        return self.get(names, parse, default)


def _samesite(raw: str) -> str:
    value = raw.capitalize()
    if value not in ("Lax", "Strict", "None"):
        raise ValueError("must be Lax, Strict or None")
    return value


def _text(raw: str) -> str:
    return raw  # the reader has already stripped it and skipped it when empty


def _positive_float(raw: str) -> float:
    value = float(raw)
    if not value > 0 or value == float("inf"):
        raise ValueError("must be a positive number of seconds")
    return value


def _int_in(low: int, high: int) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        try:
            value = int(raw)
        except ValueError:
            raise ValueError("must be a whole number") from None
        if not low <= value <= high:
            raise ValueError(f"must be between {low} and {high}")
        return value

    return parse


def _workers(raw: str) -> int:
    """A count of worker processes, or ``auto``: one per CPU."""
    if raw.lower() == "auto":
        return os.cpu_count() or 1
    return _int_in(1, 1024)(raw)


def _redis_url(raw: str) -> str:
    # The message never repeats the value: it may carry a password.
    try:
        parts = urllib.parse.urlsplit(raw)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise ValueError("must be a redis:// or rediss:// URL with a valid port") from None
    if parts.scheme not in ("redis", "rediss") or not parts.hostname:
        raise ValueError("must be a redis:// or rediss:// URL")
    return raw


def _non_negative_float(raw: str) -> float:
    value = float(raw)
    if not 0 <= value < float("inf"):
        raise ValueError("must be zero or a positive number of seconds")
    return value


def _backend_path(raw: str) -> str:
    if not raw.startswith("/") or raw.startswith("//") or any(c in raw for c in "?#\\ "):
        raise ValueError("must be a path such as /auth/refresh")
    return raw


def _boolean(raw: str) -> bool:
    value = raw.lower()
    if value not in ("true", "false", "1", "0", "yes", "no"):
        raise ValueError("must be true or false")
    return value in ("true", "1", "yes")


def _origins(raw: str) -> frozenset[str]:
    origins = set()
    for item in (o.strip() for o in raw.split(",") if o.strip()):
        origin = origin_of(item)
        if origin is None or item.rstrip("/").lower() != origin:
            raise ValueError(f"{item!r} is not an origin like https://app.example.com")
        origins.add(origin)
    return frozenset(origins)


def _path_prefixes(raw: str) -> tuple[str, ...]:
    prefixes = tuple(p.strip().strip("/") for p in raw.split(",") if p.strip().strip("/"))
    for prefix in prefixes:
        if any(seg in ("", ".", "..") for seg in prefix.split("/")) or "?" in prefix or "%" in prefix:
            raise ValueError(f"{prefix!r} is not a plain path prefix")
    return prefixes


def _cookie_name(raw: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+", raw):
        raise ValueError("must be a cookie name such as sb-myapp-auth-token")
    return raw


def _service_url(raw: str) -> str:
    """An upstream service's base URL (Dify, Supabase), without a trailing slash."""
    return str(_parse_backend_url(raw))


def _parse_backend_url(raw: str) -> BackendURL:
    parts = urllib.parse.urlsplit(raw)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an absolute http:// or https:// URL")
    if parts.username is not None or parts.password is not None:
        raise ValueError("must not contain credentials")
    if parts.query or parts.fragment:
        raise ValueError("must not contain a query string or fragment")
    try:
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise ValueError("has an invalid port") from None
    return BackendURL(scheme=parts.scheme, netloc=parts.netloc, base_path=parts.path.rstrip("/"))
