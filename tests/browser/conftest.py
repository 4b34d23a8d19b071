"""Fixtures for the tests in a real Chromium (Debian's ``chromium``, driven by Playwright).

* ``chromium``: the browser (``$CHROMIUM``, default ``/usr/bin/chromium``; Playwright's own
  browser download is never used).
* ``gatehouse``: gatehouse in demo mode (`tests.browser.servers.Gatehouse`), shared by the
  package's tests: ``.url``, ``.demo`` (its demo upstreams), ``.received()`` (what reached the
  demo backend), ``.answered(since)`` (what gatehouse answered), ``.call(f)`` (``f()`` on the
  servers' thread, to read the fakes' state).
* ``start_gatehouse_with(**environ)``: another gatehouse with other settings (for example
  ``ALLOWED_ORIGINS=...``), stopped after the test; append it to ``secrets_of`` to have the
  scan look for its secrets too.
* ``context`` / ``page``: a fresh browser context (no cookies, empty storage) and a page in it.
  When the test ends, everything the context received or holds is searched for the secrets of
  the gatehouses in ``secrets_of`` (`tests.browser.scan.SecretWatch`): a secret anywhere fails
  the test, and so does a response body that could not be read, unless `SecretWatch.missing`
  excuses it or the test lists its path in ``unread_accepted``.
* ``watch``: the context's `SecretWatch`, for a test that scans before its end.
* ``other_origin``: pages served from another port (`tests.browser.servers.OtherOrigin`):
  ``other_origin.add(name, html)``, then ``page.goto(other_origin.url(name, host))`` with
  ``host="127.0.0.1"`` (the same site as gatehouse, another origin) or ``"localhost"`` (another
  site).
* ``nextjs_app``: the Next.js drop-in (``examples/nextjs``) built and started beside ``gatehouse``.
* ``demo_page``: ``page`` on gatehouse's demo app, loaded and ready.

A test of CORS for a listed origin, for example::

    def test_a_listed_origin_reads_the_answer(page, other_origin, start_gatehouse_with, secrets_of):
        gatehouse = start_gatehouse_with(ALLOWED_ORIGINS=f"http://localhost:{other_origin.port}")
        secrets_of.append(gatehouse)
        other_origin.add("cors", f"<script>fetch('{gatehouse.url}/api/proxy/me', ...)</script>")
        page.goto(other_origin.url("cors", "localhost"))

Every server runs on one `LoopThread`; the fixtures are package-scoped, so nothing of them
outlives the browser tests.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, Playwright, sync_playwright

from tests.browser import nextjs
from tests.browser.nextjs import NextApp
from tests.browser.scan import SecretWatch
from tests.browser.servers import Gatehouse, LoopThread, OtherOrigin, free_port, start_gatehouse, start_other_origin

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
# The tests' gatehouse: no chat rate limit (the tests send more than 20 messages a minute).
ENVIRON = {"CHAT_RATE_PER_MINUTE": "0"}

os.environ.setdefault("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")


@pytest.fixture(scope="package")
def playwright() -> Iterator[Playwright]:
    with sync_playwright() as driver:
        yield driver


@pytest.fixture(scope="package")
def chromium(playwright: Playwright) -> Iterator[Browser]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium (apt-get install chromium)")
    # --no-sandbox: Chromium's sandbox refuses to run as root, as CI does.
    browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
    yield browser
    browser.close()


@pytest.fixture(scope="package")
def loop() -> Iterator[LoopThread]:
    thread = LoopThread()
    yield thread
    thread.close()


@pytest.fixture(scope="package")
def gatehouse(loop: LoopThread) -> Iterator[Gatehouse]:
    running = start_gatehouse(loop, nextjs.preferred_gatehouse_port(), ENVIRON)
    yield running
    loop.run(running.close())


@pytest.fixture
def start_gatehouse_with(loop: LoopThread) -> Iterator[Callable[..., Gatehouse]]:
    """``start_gatehouse_with(ALLOWED_ORIGINS="...")``: another gatehouse, on a free port."""
    started: list[Gatehouse] = []

    def start(**environ: str) -> Gatehouse:
        running = start_gatehouse(loop, free_port(), {**ENVIRON, **environ})
        started.append(running)
        return running

    yield start
    for running in started:
        loop.run(running.close())


@pytest.fixture(scope="package")
def other_origin(loop: LoopThread) -> Iterator[OtherOrigin]:
    server = start_other_origin(loop)
    yield server
    loop.call(server.close)


@pytest.fixture
def secrets_of(gatehouse: Gatehouse) -> list[Gatehouse]:
    """The gatehouses whose secrets the context's scan looks for (a test may add one)."""
    return [gatehouse]


@pytest.fixture
def unread_accepted() -> list[str]:
    """URL paths whose response body a test accepts its page leaves unread (see `SecretWatch.missing`)."""
    return []


@pytest.fixture
def watched(
    chromium: Browser, secrets_of: list[Gatehouse], unread_accepted: list[str]
) -> Iterator[tuple[BrowserContext, SecretWatch]]:
    ctx = chromium.new_context(viewport={"width": 1200, "height": 900})
    ctx.set_default_timeout(15_000)
    watch = SecretWatch(ctx)
    yield ctx, watch
    try:
        patterns = {name: pattern for g in secrets_of for name, pattern in g.secrets().items()}
        findings = watch.findings(patterns)
    finally:
        ctx.close()
    assert findings == [], "secrets reached the browser"
    # Every body was searched, but those of streams the page itself ended before their end.
    assert watch.missing(unread_accepted) == []


@pytest.fixture
def context(watched: tuple[BrowserContext, SecretWatch]) -> BrowserContext:
    return watched[0]


@pytest.fixture
def watch(watched: tuple[BrowserContext, SecretWatch]) -> SecretWatch:
    return watched[1]


@pytest.fixture
def page(context: BrowserContext) -> Page:
    return context.new_page()


@pytest.fixture
def demo_page(page: Page, gatehouse: Gatehouse) -> Page:
    page.goto(gatehouse.url + "/")
    page.wait_for_selector("body[data-ready=yes]")
    return page


@pytest.fixture(scope="package")
def nextjs_app(gatehouse: Gatehouse, tmp_path_factory: pytest.TempPathFactory) -> Iterator[NextApp]:
    app = nextjs.start(gatehouse, tmp_path_factory.mktemp("nextjs") / "next.log")
    yield app
    app.stop()
