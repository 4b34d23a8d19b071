"""Operations: the access log, secrets kept out of every log line, health, errors as JSON."""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import Callable
from typing import Any

import pytest

import handlers.proxy
from handlers.access_log import ACCESS_FIELDS
from tests.conftest import ACCESS_TOKEN, INTEROP, REFRESH_TOKEN, SECRET, LogCapture, RunningGateway
from tests.fakes.backend import FakeBackend

Fetch = Callable[..., Any]


@pytest.mark.gen_test
async def test_one_access_line_per_request_with_its_fields(
    gateway: RunningGateway, backend: FakeBackend, fetch: Fetch, session_cookie: Callable[..., str], logs: LogCapture
) -> None:
    response = await fetch(
        gateway.url + "/api/proxy/bytes/1234?secret_query=1",
        headers={"Cookie": session_cookie(), "X-Request-ID": "req-42"},
    )
    assert response.code == 200
    [line] = logs.records("gatehouse.access")
    assert line["request_id"] == "req-42" == response.headers["X-Request-ID"]
    assert (line["method"], line["route"], line["path"], line["status"]) == (
        "GET",
        "proxy",
        "/api/proxy/bytes/1234",
        200,
    )
    assert line["user"] == "user-1"
    assert line["bytes_out"] == 1234
    assert line["outcome"] == "ok"
    assert line["duration_ms"] >= line["upstream_ms"] >= 0
    assert line["level"] == "INFO" and "time" in line


@pytest.mark.gen_test
async def test_access_line_for_rejected_and_failed_requests(
    backend: FakeBackend, start_gateway: Callable[..., RunningGateway], fetch: Fetch, logs: LogCapture
) -> None:
    gateway = start_gateway(backend.url)
    await fetch(gateway.url + "/api/proxy/echo")
    dead = start_gateway("http://127.0.0.1:9")  # discard port: nothing listens
    await fetch(dead.url + "/api/proxy/auth/password-reset")
    first, second = logs.records("gatehouse.access")
    assert (first["status"], first["user"], first["upstream_ms"]) == (401, None, None)
    assert (second["status"], second["outcome"]) == (502, "upstream_failed")


@pytest.mark.gen_test
async def test_the_access_line_keeps_its_fields_order_and_an_early_answers_outcome(
    backend: FakeBackend,
    start_gateway: Callable[..., RunningGateway],
    fetch: Fetch,
    session_cookie: Callable[..., str],
    logs: LogCapture,
) -> None:
    """The access line is one JSON object with python-json-logger's fields first, then the
    access fields in a fixed order. An answer sent before the body was read (a 413 on
    Content-Length) is logged with its own outcome: the connection closes after it, and that
    close is not the client leaving."""
    gateway = start_gateway(backend.url, max_body_bytes=100)
    response = await fetch(
        gateway.url + "/api/proxy/upload", method="POST", body=b"x" * 101, headers={"Cookie": session_cookie()}
    )
    assert response.code == 413
    [raw] = [line for line in logs.lines if '"logger": "gatehouse.access"' in line]
    assert list(json.loads(raw)) == ["time", "level", "logger", "message", *ACCESS_FIELDS]
    assert json.loads(raw)["outcome"] != "client_closed"


@pytest.mark.gen_test
async def test_no_secret_reaches_any_log_line(
    backend: FakeBackend,
    start_gateway: Callable[..., RunningGateway],
    fetch: Fetch,
    session_cookie: Callable[..., str],
    logs: LogCapture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Drive every path that logs (success, rejections, upstream failure, an unexpected error)
    with secrets in the cookie, the Authorization header, the query string and the body."""
    gateway = start_gateway(backend.url)
    dead = start_gateway("http://127.0.0.1:9")
    cookie = session_cookie()
    cookie_value = cookie.split("=", 1)[1]
    real = INTEROP["nextauth_v4"]["guide"]
    query_secret = "qs-secret-5d41402abc4b2a76"
    secrets = [
        SECRET,
        ACCESS_TOKEN,
        REFRESH_TOKEN,
        cookie_value,
        real["value"],
        real["claims"]["access_token"],
        query_secret,
    ]

    await fetch(gateway.url + f"/api/proxy/echo?token={query_secret}", headers={"Cookie": cookie})
    await fetch(
        gateway.url + "/api/proxy/echo", headers={"Authorization": f"Bearer {urllib.parse.quote(real['value'])}"}
    )
    await fetch(gateway.url + "/api/proxy/echo", headers={"Cookie": cookie[:-3] + "AAA"})
    await fetch(
        gateway.url + "/api/proxy/echo",
        method="POST",
        body=b"{" + query_secret.encode(),
        headers={"Cookie": cookie, "Content-Type": "application/json"},
    )
    await fetch(gateway.url + "/api/proxy/status/500", headers={"Cookie": cookie})
    await fetch(dead.url + f"/api/proxy/x?token={query_secret}", headers={"Cookie": cookie})

    def explode(*_: Any) -> str:
        raise RuntimeError("unexpected")

    monkeypatch.setattr(handlers.proxy, "upstream_url", explode)
    crashed = await fetch(gateway.url + f"/api/proxy/echo?token={query_secret}", headers={"Cookie": cookie})
    assert crashed.code == 500
    assert json.loads(crashed.body) == {"error": "internal_error", "message": "Something went wrong on our side."}

    assert len(logs.records("gatehouse.access")) == 7
    assert any(r["message"] == "unhandled error" and "RuntimeError" in r["exc_info"] for r in logs.records())
    for secret in secrets:
        assert secret not in logs.text


@pytest.mark.gen_test
async def test_health_and_readiness(gateway: RunningGateway, fetch: Fetch) -> None:
    health = await fetch(gateway.url + "/healthz")
    assert (health.code, json.loads(health.body)) == (200, {"status": "ok"})
    ready = await fetch(gateway.url + "/readyz")
    assert (ready.code, json.loads(ready.body)["status"]) == (200, "ready")


@pytest.mark.gen_test
async def test_unknown_routes_are_json_404(gateway: RunningGateway, backend: FakeBackend, fetch: Fetch) -> None:
    for path in ("/", "/api", "/api/proxy", "/api/other/x", "/../etc/passwd"):
        response = await fetch(gateway.url + path)
        assert response.code == 404, path
        assert json.loads(response.body)["error"] == "not_found"
        assert response.headers["X-Request-ID"]
    assert backend.requests == []


@pytest.mark.gen_test
async def test_responses_do_not_advertise_the_server(gateway: RunningGateway, fetch: Fetch) -> None:
    response = await fetch(gateway.url + "/healthz")
    assert "Server" not in response.headers
    assert response.headers["X-Content-Type-Options"] == "nosniff"
