"""The Next.js drop-in (``examples/nextjs``) beside gatehouse, in a real Chromium.

The app signs in with next-auth v4 (a Credentials provider against the demo backend's login)
and reaches gatehouse through the ``rewrites`` in its ``next.config.mjs``. What these tests
found, and the README documents:

* through the rewrite gatehouse sees its own ``Host`` (Next.js's proxy sets it to the
  destination's), the browser's ``Origin`` (the Next.js app's) and ``Sec-Fetch-Site:
  same-origin``, which passes the CSRF rule with no configuration;
* Server-Sent Events stream through it event by event: Next.js compresses (and so buffers)
  responses unless they say ``Cache-Control: no-transform``, which gatehouse sends on every
  event stream.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from playwright.sync_api import BrowserContext, Page, expect

from auth.nextauth import NextAuthV4Codec
from demo.dify import Task
from demo.supabase import DEMO_USER_ID
from tests.browser.nextjs import NextApp
from tests.browser.servers import Gatehouse

COOKIE = "next-auth.session-token"


@pytest.fixture
def app_page(page: Page, nextjs_app: NextApp, unread_accepted: list[str]) -> Page:
    """The Next.js app's page, signed in through next-auth's own sign-in page."""
    unread_accepted.append("/api/auth/providers")  # signIn() reads it, then leaves the page at once
    page.goto(nextjs_app.url + "/")
    page.click("#sign-in")
    page.wait_for_url("**/api/auth/signin**")
    page.fill("input[name=username]", "demo")
    page.fill("input[name=password]", "demo")
    page.click("button[type=submit]")
    page.wait_for_url(nextjs_app.url + "/")
    expect(page.locator("#nextauth-user")).to_have_text("Demo User")
    return page


def session_claims(context: BrowserContext, gatehouse: Gatehouse) -> tuple[dict[str, Any], str]:
    [cookie] = [c for c in context.cookies() if c["name"] == COOKIE]
    claims = NextAuthV4Codec(gatehouse.secret).decode(cookie["value"])
    assert claims is not None
    return dict(claims), cookie["value"]


def test_the_page_shows_the_user_the_backend_saw_through_gatehouse(
    app_page: Page, context: BrowserContext, gatehouse: Gatehouse
) -> None:
    claims, _ = session_claims(context, gatehouse)
    assert {"accessToken", "refreshToken", "accessTokenExpires"} <= claims.keys()  # the seed app's jwt callback
    since = time.monotonic()
    app_page.click("#call-me")
    expect(app_page.locator("#backend-user")).to_have_text("Demo User (demo-user)")
    [me] = [r for r in gatehouse.received() if r.path == "/me" and r.at >= since]
    assert me.bearer == claims["accessToken"]  # the token next-auth's sign-in stored, sent by gatehouse


def test_a_json_post_and_a_streamed_chat_pass_through_the_rewrite(
    app_page: Page, nextjs_app: NextApp, gatehouse: Gatehouse
) -> None:
    since = time.monotonic()
    app_page.click("#post-item")
    expect(app_page.locator("#posted")).to_contain_text('201 {"id": ')
    [post] = [r for r in gatehouse.received() if r.method == "POST" and r.path == "/items" and r.at >= since]
    # What gatehouse saw (and passed on): the browser's Origin and Sec-Fetch-Site, its own Host.
    assert post.origin == nextjs_app.url
    assert post.fetch_site == "same-origin"
    assert post.forwarded_host == gatehouse.url.removeprefix("http://")

    app_page.click("#supabase-sign-in")
    expect(app_page.locator("#supabase-user")).to_have_text("Supabase: demo@example.com")
    app_page.click("#chat-send")
    app_page.wait_for_selector("#chat-answer:not(:empty)")
    first_seen = time.monotonic()
    expect(app_page.locator("#chat-state")).to_have_text("done")
    expect(app_page.locator("#chat-answer")).to_contain_text("You said: hello from Next.js.")
    tasks: list[Task] = gatehouse.call(
        lambda: [t for t in gatehouse.demo.dify.streams.values() if t.sent and t.sent[0] >= since]
    )
    [task] = tasks
    assert task.user == DEMO_USER_ID
    assert first_seen < task.sent[-1], "the first token was on screen while Dify was still sending"


def test_an_event_source_streams_through_the_rewrite_event_by_event(app_page: Page, gatehouse: Gatehouse) -> None:
    before = gatehouse.call(lambda: len(gatehouse.demo.backend.completions))
    app_page.click("#complete")
    app_page.wait_for_selector("#completion:not(:empty)")
    first_seen = time.monotonic()
    expect(app_page.locator("#completion-state")).to_have_text("done", timeout=20_000)
    expect(app_page.locator("#completion")).to_have_text(
        "You said: Next.js. This answer streams from the demo backend one word at a time. "
    )
    record = gatehouse.call(lambda: gatehouse.demo.backend.completions[before])
    assert first_seen < record.sent[-1], "the first token was on screen while the backend was still sending"


def test_gatehouse_refreshes_an_expired_token_and_next_auth_reads_the_cookie_it_wrote(
    app_page: Page, context: BrowserContext, nextjs_app: NextApp, gatehouse: Gatehouse
) -> None:
    claims, _ = session_claims(context, gatehouse)
    old_token = claims["accessToken"]
    # The access token expires (next-auth's own field, in milliseconds).
    claims["accessTokenExpires"] = int((time.time() - 60) * 1000)
    expired = NextAuthV4Codec(gatehouse.secret).encode(claims)
    context.add_cookies(
        [{"name": COOKIE, "value": expired, "url": nextjs_app.url, "httpOnly": True, "sameSite": "Lax"}]
    )

    since = time.monotonic()
    app_page.click("#call-me")
    expect(app_page.locator("#backend-user")).to_have_text("Demo User (demo-user)")
    calls = [(r.method, r.path, r.bearer) for r in gatehouse.received() if r.at >= since]
    assert [c[:2] for c in calls] == [("POST", "/auth/refresh"), ("GET", "/me")]
    new_token = calls[1][2]
    assert new_token is not None and new_token != old_token

    written, value = session_claims(context, gatehouse)  # the cookie gatehouse wrote back
    assert value != expired
    assert written["accessToken"] == new_token and written["accessTokenExpires"] > time.time() * 1000

    # next-auth's own session endpoint reads gatehouse's cookie: still signed in.
    session = app_page.evaluate("async () => (await fetch('/api/auth/session')).json()")
    assert session["user"] == {"id": "demo-user", "name": "Demo User", "email": "demo@example.com"}
    kept, _ = session_claims(context, gatehouse)  # re-issued by next-auth, the new tokens kept
    assert kept["accessToken"] == new_token and kept["refreshToken"] == written["refreshToken"]

    since = time.monotonic()
    app_page.reload()
    expect(app_page.locator("#nextauth-user")).to_have_text("Demo User")
    app_page.click("#call-me")
    expect(app_page.locator("#backend-user")).to_have_text("Demo User (demo-user)")
    assert [(r.method, r.path, r.bearer) for r in gatehouse.received() if r.at >= since] == [("GET", "/me", new_token)]
