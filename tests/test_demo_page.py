"""The demo web app's files as gatehouse serves them (``handlers/demo_page.py``), without a browser.

Served in demo mode only, read once at startup, each with its type and a strict
Content-Security-Policy; ``/demo/config.json`` tells the page the demo Supabase's public URL and
anon key and nothing else. tests/browser/ runs the page itself in Chromium.
"""

from __future__ import annotations

import json
import shutil
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from handlers import demo_page
from settings import SupabaseSettings
from tests.conftest import RunningGateway
from tests.fakes.backend import FakeBackend
from tests.gateway_process import demo_server
from tests.test_demo import free_port

Fetch = Callable[..., Any]
SUPABASE = SupabaseSettings(url="http://127.0.0.1:54321", anon_key="demo-anon-key")


@pytest.fixture
def demo_gateway(start_gateway: Callable[..., RunningGateway], backend: FakeBackend) -> RunningGateway:
    return start_gateway(backend.url, demo=True, supabase=SUPABASE)


@pytest.mark.gen_test
async def test_the_page_and_its_files_are_served_with_their_types_and_a_strict_policy(
    demo_gateway: RunningGateway, fetch: Fetch
) -> None:
    page = await fetch(demo_gateway.url + "/")
    assert page.code == 200
    assert page.headers["Content-Type"] == "text/html; charset=utf-8"
    assert b'<script type="module" src="/demo/js/main.js"></script>' in page.body
    policy = page.headers["Content-Security-Policy"]
    assert "default-src 'self'" in policy and "script-src 'self'" in policy
    assert "connect-src 'self' http://127.0.0.1:54321" in policy  # the page signs in to Supabase itself
    assert "'unsafe-inline'" not in policy and "'unsafe-eval'" not in policy
    assert page.headers["X-Frame-Options"] == "DENY" and page.headers["X-Content-Type-Options"] == "nosniff"
    for path, content_type in (
        ("/demo/js/main.js", "text/javascript; charset=utf-8"),
        ("/demo/app.css", "text/css; charset=utf-8"),
        ("/demo/favicon.svg", "image/svg+xml"),
    ):
        answer = await fetch(demo_gateway.url + path)
        assert (answer.code, answer.headers["Content-Type"]) == (200, content_type)
        assert answer.body == (demo_page.WEB_ROOT / path.removeprefix("/demo/")).read_bytes()
    head = await fetch(demo_gateway.url + "/", method="HEAD")
    assert head.code == 200 and head.body == b""


@pytest.mark.gen_test
async def test_the_page_learns_only_supabases_public_url_and_anon_key(
    demo_gateway: RunningGateway, fetch: Fetch
) -> None:
    answer = await fetch(demo_gateway.url + "/demo/config.json")
    assert json.loads(answer.body) == {"supabaseUrl": "http://127.0.0.1:54321", "supabaseAnonKey": "demo-anon-key"}


@pytest.mark.gen_test
@pytest.mark.parametrize(
    "path", ["/demo/nothing.js", "/demo/../server.py", "/demo/%2e%2e/server.py", "/demo/js/../../settings.py", "/demo/"]
)
async def test_anything_else_is_a_json_404(demo_gateway: RunningGateway, fetch: Fetch, path: str) -> None:
    answer = await fetch(demo_gateway.url + path)
    assert answer.code == 404
    assert json.loads(answer.body)["error"] == "not_found"


@pytest.mark.gen_test
async def test_only_demo_mode_serves_pages(
    start_gateway: Callable[..., RunningGateway], backend: FakeBackend, fetch: Fetch
) -> None:
    configured = start_gateway(backend.url, supabase=SUPABASE)  # a configured deployment
    for path in ("/", "/demo/js/main.js", "/demo/config.json"):
        answer = await fetch(configured.url + path)
        assert answer.code == 404 and json.loads(answer.body)["error"] == "not_found"


@pytest.mark.gen_test
async def test_the_files_are_read_once_at_startup(
    start_gateway: Callable[..., RunningGateway],
    backend: FakeBackend,
    fetch: Fetch,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    web = tmp_path / "web"
    shutil.copytree(demo_page.WEB_ROOT, web)
    monkeypatch.setattr(demo_page, "WEB_ROOT", web)
    gateway = start_gateway(backend.url, demo=True, supabase=SUPABASE)
    expected = (web / "index.html").read_bytes()
    shutil.rmtree(web)  # no file is opened while serving
    answer = await fetch(gateway.url + "/")
    assert answer.code == 200 and answer.body == expected


def test_make_run_serves_the_demo_app() -> None:
    """``python server.py`` with no configuration, as ``make run`` starts it."""
    port = free_port()
    proc = demo_server(port)
    try:
        deadline, body = time.monotonic() + 20, b""
        while time.monotonic() < deadline and not body:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as answer:
                    body = answer.read()
            except OSError:
                time.sleep(0.1)
        assert b"<title>gatehouse demo</title>" in body
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=20)
    assert f"open http://127.0.0.1:{port}/ in a browser" in out
