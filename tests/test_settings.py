"""Configuration: variables, aliases, .env, and startup errors that name the variable."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from settings import SettingsError, load_settings

ROOT = Path(__file__).resolve().parent.parent


def start_process(env: dict[str, str], cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    """Run ``server.py`` as an operator would; these configurations must fail at once."""
    return subprocess.run(
        [sys.executable, str(ROOT / "server.py")],
        env={"PATH": os.environ["PATH"], **env},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=20,
    )


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"PORT": "eighty"}, "PORT"),
        ({"PORT": "70000"}, "PORT"),
        ({"BACKEND_URL": "ftp://files.example", "SESSION_SECRET": "s"}, "BACKEND_URL"),
        ({"BACKEND_URL": "http://user:pw@api.example", "SESSION_SECRET": "s"}, "BACKEND_URL"),
        ({"BACKEND_URL": "http://api.example"}, "SESSION_SECRET"),
        ({"ENV": "production"}, "BACKEND_URL"),
        ({"NODE_ENV": "production", "SESSION_SECRET": "s"}, "BACKEND_URL"),
        ({"ENV": "staging"}, "ENV"),
        ({"UPSTREAM_CONNECT_TIMEOUT": "-1"}, "UPSTREAM_CONNECT_TIMEOUT"),
        ({"UPSTREAM_RESPONSE_TIMEOUT": "soon"}, "UPSTREAM_RESPONSE_TIMEOUT"),
        ({"MAX_BODY_BYTES": "1e9"}, "MAX_BODY_BYTES"),
        ({"LOG_LEVEL": "verbose"}, "LOG_LEVEL"),
        ({"PUBLIC_PATHS": "auth/../admin"}, "PUBLIC_PATHS"),
        ({"ALLOWED_ORIGINS": "app.example.com"}, "ALLOWED_ORIGINS"),
        ({"ALLOWED_ORIGINS": "https://app.example.com/path"}, "ALLOWED_ORIGINS"),
        ({"CSRF_HEADER_REQUIRED": "sometimes"}, "CSRF_HEADER_REQUIRED"),
        ({"AUTH_REFRESH_PATH": "auth/refresh"}, "AUTH_REFRESH_PATH"),
        ({"AUTH_REFRESH_PATH": "//evil.example/refresh"}, "AUTH_REFRESH_PATH"),
        ({"REFRESH_LEEWAY": "-5"}, "REFRESH_LEEWAY"),
        ({"REFRESH_GRACE": "a while"}, "REFRESH_GRACE"),
        ({"SESSION_MAX_AGE": "0"}, "SESSION_MAX_AGE"),
        ({"MAX_JSON_BYTES": "lots"}, "MAX_JSON_BYTES"),
        ({"DIFY_API_KEY": "app-key"}, "SUPABASE_URL"),
        ({"DIFY_API_KEY": "app-key", "SUPABASE_URL": "abcdef.supabase.co"}, "SUPABASE_URL"),
        ({"SUPABASE_URL": "https://x.supabase.co", "SUPABASE_AUTH_MODE": "remote"}, "SUPABASE_ANON_KEY"),
        ({"SUPABASE_URL": "https://x.supabase.co", "SUPABASE_AUTH_MODE": "sometimes"}, "SUPABASE_AUTH_MODE"),
        ({"SUPABASE_URL": "https://x.supabase.co", "SUPABASE_USER_CACHE_SECONDS": "-1"}, "SUPABASE_USER_CACHE_SECONDS"),
        ({"SUPABASE_URL": "https://x.supabase.co", "SUPABASE_JWT_ISSUER": "issuer"}, "SUPABASE_JWT_ISSUER"),
        ({"DIFY_API_URL": "ftp://dify.example/v1"}, "DIFY_API_URL"),
        ({"CHAT_RATE_PER_MINUTE": "-1"}, "CHAT_RATE_PER_MINUTE"),
        ({"CHAT_MAX_BODY_BYTES": "100"}, "CHAT_MAX_BODY_BYTES"),
        ({"WORKERS": "0"}, "WORKERS"),
        ({"WORKERS": "many"}, "WORKERS"),
        ({"METRICS_PORT": "metrics"}, "METRICS_PORT"),
        ({"METRICS_PORT": "8000"}, "METRICS_PORT"),
        ({"PORT": "9100", "METRICS_PORT": "9100"}, "METRICS_PORT"),
        ({"SHUTDOWN_DELAY": "-1"}, "SHUTDOWN_DELAY"),
        ({"DRAIN_TIMEOUT": "forever"}, "DRAIN_TIMEOUT"),
        ({"REDIS_URL": "http://127.0.0.1:6379"}, "REDIS_URL"),
        ({"REDIS_URL": "redis://127.0.0.1:99999"}, "REDIS_URL"),
        ({"REDIS_TIMEOUT": "0"}, "REDIS_TIMEOUT"),
        ({"SESSION_COOKIE_SAMESITE": "lenient"}, "SESSION_COOKIE_SAMESITE"),
    ],
)
def test_invalid_configuration_stops_with_one_line_naming_the_variable(env: dict[str, str], variable: str) -> None:
    result = start_process(env)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("gatehouse: configuration error: ")
    assert variable in lines[0]
    assert "Traceback" not in result.stderr + result.stdout


def test_secret_values_are_not_echoed_in_startup_errors() -> None:
    result = start_process({"BACKEND_URL": "http://api.example", "SESSION_SECRET": "s3cr3t-value", "PORT": "x"})
    assert result.returncode == 2 and "PORT" in result.stderr
    assert "s3cr3t-value" not in result.stderr


def test_the_redis_password_is_not_echoed_in_startup_errors() -> None:
    result = start_process({"REDIS_URL": "redis://:hunter2-redis-pw@127.0.0.1:99999/0"})
    assert result.returncode == 2 and "REDIS_URL" in result.stderr
    assert "hunter2-redis-pw" not in result.stderr + result.stdout


def test_operations_settings() -> None:
    settings = load_settings(
        {
            "WORKERS": "auto",
            "METRICS_HOST": "0.0.0.0",
            "METRICS_PORT": "9100",
            "SHUTDOWN_DELAY": "5",
            "DRAIN_TIMEOUT": "45",
            "REDIS_URL": "rediss://:pw@redis.internal:6380/2",
            "REDIS_TIMEOUT": "0.25",
            "SESSION_COOKIE_SAMESITE": "none",
        },
        dotenv=None,
    )
    assert settings.workers == (os.cpu_count() or 1)
    assert (settings.metrics_host, settings.metrics_port) == ("0.0.0.0", 9100)
    assert (settings.shutdown_delay, settings.drain_timeout) == (5.0, 45.0)
    assert (settings.redis_url, settings.redis_timeout) == ("rediss://:pw@redis.internal:6380/2", 0.25)
    assert settings.session_cookie_samesite == "None"
    defaults = load_settings({}, dotenv=None)
    assert (defaults.workers, defaults.metrics_port, defaults.redis_url) == (1, None, None)
    assert (defaults.shutdown_delay, defaults.drain_timeout, defaults.redis_timeout) == (0.0, 30.0, 0.5)
    assert defaults.session_cookie_samesite == "Lax"


def test_defaults() -> None:
    s = load_settings({}, dotenv=None)
    assert s.demo and s.backend is None and not s.production
    assert (s.host, s.port) == ("127.0.0.1", 8000)
    assert s.public_paths == ("auth/password-reset", "auth/forgot-password")
    assert s.max_body_bytes == 100 * 1024 * 1024 and s.max_json_bytes == 1024 * 1024
    assert (s.auth_refresh_path, s.refresh_leeway, s.refresh_grace) == ("/auth/refresh", 60.0, 30.0)
    assert s.session_max_age == 30 * 24 * 3600
    assert (s.auth_login_path, s.auth_logout_path, s.previous_secrets) == ("/auth/login", None, ())
    assert s.log_level == "INFO"
    assert s.session_cookie_name == "next-auth.session-token"


def test_variables_and_aliases() -> None:
    s = load_settings(
        {
            "NEXT_PUBLIC_BACKEND_URL": "https://api.example.com/v1/",
            "NEXTAUTH_SECRET": "from-nextauth",
            "NODE_ENV": "production",
            "HOST": "0.0.0.0",
            "PORT": "9000",
            "PUBLIC_PATHS": " /status/ , health,",
            "UPSTREAM_CONNECT_TIMEOUT": "2.5",
            "UPSTREAM_RESPONSE_TIMEOUT": "30",
            "MAX_BODY_BYTES": "1024",
            "LOG_LEVEL": "debug",
            "ALLOWED_ORIGINS": "https://App.Example.com, http://localhost:3000/",
            "CSRF_HEADER_REQUIRED": "true",
            "AUTH_REFRESH_PATH": "/oauth/token",
            "REFRESH_LEEWAY": "0",
            "REFRESH_GRACE": "10",
            "SESSION_MAX_AGE": "3600",
            "MAX_JSON_BYTES": "4096",
            "AUTH_LOGIN_PATH": "/session/new",
            "AUTH_LOGOUT_PATH": "/session/end",
            "AUTH_SECRET_1": "old-one",
            "AUTH_SECRET_3": "oldest",
        },
        dotenv=None,
    )
    assert str(s.backend) == "https://api.example.com/v1"
    assert s.backend is not None and s.backend.base_path == "/v1"
    assert s.session_secret == "from-nextauth"
    assert s.production and s.session_cookie_name == "__Secure-next-auth.session-token"
    assert (s.host, s.port, s.public_paths) == ("0.0.0.0", 9000, ("status", "health"))
    assert (s.upstream_connect_timeout, s.upstream_response_timeout, s.max_body_bytes) == (2.5, 30.0, 1024)
    assert s.log_level == "DEBUG" and not s.demo
    assert s.allowed_origins == {"https://app.example.com", "http://localhost:3000"}
    assert s.csrf_header_required
    assert (s.auth_refresh_path, s.refresh_leeway, s.refresh_grace) == ("/oauth/token", 0.0, 10.0)
    assert s.backend_endpoint(s.auth_refresh_path) == "https://api.example.com/v1/oauth/token"
    assert (s.session_max_age, s.max_json_bytes) == (3600, 1024)  # JSON never above MAX_BODY_BYTES
    assert (s.auth_login_path, s.auth_logout_path) == ("/session/new", "/session/end")
    assert s.session_secrets == ("from-nextauth", "old-one", "oldest")


def test_chat_settings() -> None:
    s = load_settings(
        {
            "DIFY_API_KEY": "app-key",
            "DIFY_API_URL": "https://dify.internal.example/v1/",
            "NEXT_PUBLIC_SUPABASE_URL": "https://abcdefghijklmnopqrst.supabase.co/",
            "NEXT_PUBLIC_SUPABASE_ANON_KEY": "anon",
            "SUPABASE_JWT_SECRET": "legacy",
            "SUPABASE_AUTH_MODE": "REMOTE",
            "SUPABASE_USER_CACHE_SECONDS": "0",
            "CHAT_MAX_BODY_BYTES": "2048",
            "CHAT_RATE_PER_MINUTE": "0",
            "ENV": "production",  # chat alone is a production deployment, not the demo
        },
        dotenv=None,
    )
    assert not s.demo and s.backend is None and s.production
    assert (s.dify_api_url, s.dify_api_key) == ("https://dify.internal.example/v1", "app-key")
    assert s.supabase is not None
    assert (s.supabase.url, s.supabase.anon_key, s.supabase.jwt_secret) == (
        "https://abcdefghijklmnopqrst.supabase.co",
        "anon",
        "legacy",
    )
    assert (s.supabase.auth_mode, s.supabase.user_cache_seconds) == ("remote", 0.0)
    assert s.supabase.issuer == "https://abcdefghijklmnopqrst.supabase.co/auth/v1"
    assert s.supabase.jwks_url == "https://abcdefghijklmnopqrst.supabase.co/auth/v1/.well-known/jwks.json"
    assert s.supabase.cookie_name == "sb-abcdefghijklmnopqrst-auth-token"
    assert (s.chat_max_body_bytes, s.chat_rate_per_minute) == (2048, 0)


def test_chat_defaults() -> None:
    s = load_settings({"SUPABASE_URL": "http://127.0.0.1:54321"}, dotenv=None)
    assert not s.demo and s.dify_api_key is None  # Supabase alone: no chat, and no demo either
    assert s.dify_api_url == "https://api.dify.ai/v1"
    assert s.supabase is not None and s.supabase.auth_mode == "local" and s.supabase.user_cache_seconds == 30.0
    assert s.supabase.cookie_name == "sb-127-auth-token"
    assert (s.chat_max_body_bytes, s.chat_rate_per_minute) == (256 * 1024, 20)
    assert load_settings({}, dotenv=None).supabase is None


def test_first_name_wins_over_aliases() -> None:
    s = load_settings(
        {"SESSION_SECRET": "primary", "NEXTAUTH_SECRET": "alias", "AUTH_SECRET": "other", "BACKEND_URL": "http://a"},
        dotenv=None,
    )
    assert s.session_secret == "primary"
    s = load_settings({"AUTH_SECRET": "authjs", "BACKEND_URL": "http://a"}, dotenv=None)
    assert s.session_secret == "authjs"


def test_dotenv_is_read_and_the_environment_wins(tmp_path: Path) -> None:
    dotenv = tmp_path / ".env"
    dotenv.write_text(
        "# comment\nexport BACKEND_URL='http://from-dotenv:9000'\nSESSION_SECRET=\"quoted secret\"\nPORT=8100 # note\n"
    )
    s = load_settings({"PORT": "8200"}, dotenv=dotenv)
    assert str(s.backend) == "http://from-dotenv:9000"
    assert s.session_secret == "quoted secret"
    assert s.port == 8200


def test_malformed_dotenv_line_is_reported(tmp_path: Path) -> None:
    dotenv = tmp_path / ".env"
    dotenv.write_text("BACKEND_URL=http://a\nthis is not a setting\n")
    with pytest.raises(SettingsError, match=r"\.env:2"):
        load_settings({}, dotenv=dotenv)


def test_server_reads_dotenv_from_its_working_directory(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("PORT=not-a-port\n")
    result = start_process({}, cwd=tmp_path)
    assert result.returncode == 2 and "PORT" in result.stderr
