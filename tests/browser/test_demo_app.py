"""The demo app (``make run``'s page at ``/``) in a real Chromium: what a user sees, and what
reached the demo backend and the demo Dify. Every test also ends with the context's scan for
secrets (conftest.py): no backend token, Dify key, upstream address or session secret anywhere
the page could read.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable

from playwright.sync_api import BrowserContext, FilePayload, Page, expect

from demo.dify import Task
from demo.supabase import DEMO_USER_ID
from tests.browser.flows import answer_shown, send_chat, sign_in, sign_out, supabase_sign_in
from tests.browser.scan import SecretWatch
from tests.browser.servers import Gatehouse

COOKIE = "next-auth.session-token"


def _until(condition: object, what: str, seconds: float = 10) -> None:
    deadline = time.monotonic() + seconds
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_the_page_is_served_with_a_strict_content_security_policy(page: Page, gatehouse: Gatehouse) -> None:
    answer = page.goto(gatehouse.url + "/")
    assert answer is not None and answer.ok
    policy = answer.headers["content-security-policy"]
    assert "default-src 'self'" in policy and "script-src 'self'" in policy and "unsafe-inline" not in policy
    page.wait_for_selector("body[data-ready=yes]")  # the page's own modules ran under that policy
    expect(page.locator("#session-status")).to_have_text("Signed out")


def test_sign_in_shows_the_user_and_javascript_never_sees_the_session_cookie(
    demo_page: Page, context: BrowserContext, gatehouse: Gatehouse
) -> None:
    sign_in(demo_page)
    assert COOKIE not in demo_page.evaluate("document.cookie")
    expect(demo_page.locator("#visible-cookies")).to_have_text("(none)")
    [cookie] = [c for c in context.cookies() if c["name"] == COOKIE]  # it is there, out of reach
    assert cookie["httpOnly"] and cookie["sameSite"] == "Lax"
    logins = [r for r in gatehouse.received() if r.path == "/auth/login"]
    assert logins, "the sign-in reached the backend's login"


def test_the_backend_sees_the_user_a_json_post_and_an_upload_with_progress(
    demo_page: Page, gatehouse: Gatehouse
) -> None:
    sign_in(demo_page)
    demo_page.click("#call-me")
    expect(demo_page.locator("#me-result")).to_have_text("The backend sees Demo User (demo-user, demo@example.com)")
    [me] = [r for r in gatehouse.received() if r.path == "/me"][-1:]
    assert me.bearer in gatehouse.call(lambda: list(gatehouse.demo.backend.tokens.issued))

    demo_page.fill("#item-title", "from the browser")
    demo_page.click("#post-item")
    expect(demo_page.locator("#post-result")).to_contain_text('{"title":"from the browser"}')
    assert any(r.method == "POST" and r.path == "/items" for r in gatehouse.received())

    data = bytes(range(256)) * 8192  # 2 MiB
    upload: FilePayload = {"name": "data.bin", "mimeType": "application/octet-stream", "buffer": data}
    demo_page.set_input_files("#upload-file", files=[upload])
    demo_page.click("#upload")
    digest = hashlib.sha256(data).hexdigest()
    expect(demo_page.locator("#upload-result")).to_have_text(
        f"The backend received data.bin: {len(data)} bytes, SHA-256 {digest}"
    )
    expect(demo_page.locator("#upload-percent")).to_have_text("100 %")


def test_the_completion_is_on_screen_token_by_token_while_the_backend_still_sends(
    demo_page: Page, gatehouse: Gatehouse
) -> None:
    sign_in(demo_page)
    before = gatehouse.call(lambda: len(gatehouse.demo.backend.completions))
    demo_page.fill("#completion-prompt", "stream this")
    demo_page.click("#complete")
    demo_page.wait_for_selector("#completion-output:not(:empty)")
    first_seen = time.monotonic()
    shown_first = demo_page.inner_text("#completion-output")
    expect(demo_page.locator("#completion-status")).to_have_text("Done.", timeout=20_000)
    full = demo_page.inner_text("#completion-output")
    assert full.startswith("You said: stream this. This answer streams")
    record = gatehouse.call(lambda: gatehouse.demo.backend.completions[before])
    assert record.prompt == "stream this"
    # The first token was on screen before the backend sent its last one: nothing buffered it.
    assert first_seen < record.sent[-1], (first_seen, record.sent)
    assert len(shown_first) < len(full)


def test_the_chat_answer_is_on_screen_token_by_token_while_dify_still_sends(
    demo_page: Page, gatehouse: Gatehouse
) -> None:
    supabase_sign_in(demo_page)
    # The long answer: seconds between the first and the last token, a margin a busy CI box keeps.
    first_seen = send_chat(demo_page, "hello from Chromium, a long answer please")
    task_id = answer_shown(demo_page).get_attribute("data-task-id")
    expect(demo_page.locator("#chat-status")).to_have_text("Done.", timeout=30_000)
    expect(answer_shown(demo_page)).to_contain_text(
        "You said: hello from Chromium, a long answer please. This is gatehouse's demo Dify"
    )
    task: Task = gatehouse.call(lambda: gatehouse.demo.dify.streams[str(task_id)])
    assert task.user == DEMO_USER_ID  # the Supabase user the browser signed in as
    assert first_seen < task.sent[-1], (first_seen, task.sent)
    expect(demo_page.locator("#conversations li .open").first).to_contain_text("hello from Chromium")


def test_stop_ends_the_stream_and_dify_receives_the_stop_for_that_task(demo_page: Page, gatehouse: Gatehouse) -> None:
    supabase_sign_in(demo_page)
    send_chat(demo_page, "Stream me a long answer")
    task_id = str(answer_shown(demo_page).get_attribute("data-task-id"))
    demo_page.click("#chat-stop")
    expect(demo_page.locator("#chat-status")).to_have_text("Stopped.")
    expect(answer_shown(demo_page)).to_have_class("turn assistant stopped")
    stopped_at = time.monotonic()
    dify = gatehouse.demo.dify
    _until(lambda: gatehouse.call(lambda: any(s.task_id == task_id for s in dify.stops)), "Dify's stop call")
    [stop] = gatehouse.call(lambda: [s for s in dify.stops if s.task_id == task_id])
    assert stop.user == DEMO_USER_ID
    task = gatehouse.call(lambda: dify.streams[task_id])
    _until(lambda: gatehouse.call(lambda: task.ended is not None), "the end of Dify's stream")
    words = len(dify.answer_for("Stream me a long answer").split())
    assert len(task.sent) < words / 2, "Dify stopped generating long before the end of the answer"
    assert stop.at - stopped_at < 5


def test_conversations_are_listed_renamed_and_deleted(demo_page: Page, gatehouse: Gatehouse) -> None:
    supabase_sign_in(demo_page)
    demo_page.click("#new-conversation")
    send_chat(demo_page, "a conversation to rename")
    expect(demo_page.locator("#chat-status")).to_have_text("Done.")
    item = demo_page.locator("#conversations li.current")
    expect(item.locator(".open")).to_have_text("a conversation to rename")
    conversation_id = str(item.get_attribute("data-id"))

    item.locator(".rename").click()
    demo_page.fill(f'#conversations li[data-id="{conversation_id}"] input', "Renamed in Chromium")
    demo_page.click(f'#conversations li[data-id="{conversation_id}"] button[type=submit]')
    renamed = demo_page.locator(f'#conversations li[data-id="{conversation_id}"] .open')
    expect(renamed).to_have_text("Renamed in Chromium")
    assert gatehouse.call(lambda: gatehouse.demo.dify.conversations[conversation_id].name) == "Renamed in Chromium"

    demo_page.locator(f'#conversations li[data-id="{conversation_id}"] .delete').click()
    expect(demo_page.locator(f'#conversations li[data-id="{conversation_id}"]')).to_have_count(0)
    assert gatehouse.call(lambda: conversation_id not in gatehouse.demo.dify.conversations)


def test_difys_errors_are_shown_to_the_user(demo_page: Page) -> None:
    supabase_sign_in(demo_page)
    demo_page.fill("#chat-input", "/rate-limit")
    demo_page.click("#chat-send")
    status = demo_page.locator("#chat-status")
    expect(status).to_contain_text("Too many requests. Please try again later.")
    expect(status).to_contain_text("(429 too_many_requests)")
    expect(status).to_have_attribute("data-kind", "error")
    expect(answer_shown(demo_page)).to_contain_text("(429 too_many_requests)")  # in the conversation too

    send_chat(demo_page, "/stream-error")
    expect(status).to_contain_text("Dify: [demo] The model provider failed mid-answer")
    expect(status).to_contain_text("(400 completion_request_error)")
    expect(answer_shown(demo_page)).to_have_class("turn assistant failed")


def test_the_chat_works_with_the_supabase_ssr_cookie(demo_page: Page, gatehouse: Gatehouse) -> None:
    """The other way @supabase/ssr apps send the session: a cookie, which must pass the CSRF rule."""
    supabase_sign_in(demo_page, transport="cookie")
    before = gatehouse.call(lambda: len(gatehouse.demo.dify.streams))
    send_chat(demo_page, "sent with the cookie")
    expect(demo_page.locator("#chat-status")).to_have_text("Done.")
    assert "sb-127-auth-token=base64-" in demo_page.evaluate("document.cookie")
    tasks = gatehouse.call(lambda: list(gatehouse.demo.dify.streams.values())[before:])
    assert [t.user for t in tasks] == [DEMO_USER_ID]


def test_sign_out_clears_the_session_and_the_next_call_shows_signed_out(
    demo_page: Page, context: BrowserContext, gatehouse: Gatehouse
) -> None:
    sign_in(demo_page)
    demo_page.click("#call-me")
    expect(demo_page.locator("#me-result")).to_contain_text("The backend sees Demo User")
    sign_out(demo_page)
    expect(demo_page.locator("#session-status")).to_have_text("Signed out")
    assert [c for c in context.cookies() if c["name"] == COOKIE] == []
    calls = len(gatehouse.received())
    demo_page.click("#call-me")
    expect(demo_page.locator("#me-result")).to_have_text("Signed out: sign in first (401 unauthorized).")
    demo_page.click("#complete")
    expect(demo_page.locator("#completion-status")).to_have_text("Signed out: sign in first (401 unauthorized).")
    assert len(gatehouse.received()) == calls, "a signed-out call never reaches the backend"
    again = context.new_page()  # the page opened anew
    again.goto(gatehouse.url + "/")
    expect(again.locator("#session-status")).to_have_text("Signed out")


def test_the_secret_scan_finds_a_secret_the_page_holds(
    demo_page: Page, watch: SecretWatch, gatehouse: Gatehouse
) -> None:
    """The scan that ends every test can fail: a Dify key planted in storage and in the HTML is found."""
    key = gatehouse.demo.dify.api_key
    demo_page.evaluate("key => { localStorage.setItem('leak', key); document.title = key; }", key)
    findings = watch.findings(gatehouse.secrets())
    assert any(f.startswith("the Dify key in the storage and cookies of") for f in findings)
    assert any(f.startswith("the Dify key in the HTML of") for f in findings)
    demo_page.evaluate("() => { localStorage.removeItem('leak'); document.title = 'gatehouse demo'; }")
    assert watch.findings(gatehouse.secrets()) == []


def test_every_unsafe_call_of_the_page_sends_the_csrf_header(
    page: Page, start_gatehouse_with: Callable[..., Gatehouse], secrets_of: list[Gatehouse]
) -> None:
    """With ``CSRF_HEADER_REQUIRED=true`` a POST without ``X-CSRF: 1`` is a 403: the page's
    sign-in, JSON POST, upload and sign-out all go through, so each sent it."""
    strict = start_gatehouse_with(CSRF_HEADER_REQUIRED="true")
    secrets_of.append(strict)
    since = time.monotonic()
    page.goto(strict.url + "/")
    page.wait_for_selector("body[data-ready=yes]")
    sign_in(page)
    page.fill("#item-title", "with the header")
    page.click("#post-item")
    expect(page.locator("#post-result")).to_contain_text('{"title":"with the header"}')
    upload: FilePayload = {"name": "a.txt", "mimeType": "text/plain", "buffer": b"hello"}
    page.set_input_files("#upload-file", files=[upload])
    page.click("#upload")
    expect(page.locator("#upload-result")).to_contain_text("The backend received a.txt: 5 bytes")
    sign_out(page)
    answered = strict.answered(since)
    assert [a for a in answered if a.status == 403] == [], answered
    assert {(a.method, a.path) for a in answered if 200 <= a.status < 300} >= {
        ("POST", "/api/auth/login"),
        ("POST", "/api/proxy/items"),
        ("POST", "/api/proxy/upload"),
        ("POST", "/api/auth/logout"),
    }
    assert {(r.method, r.path) for r in strict.received()} >= {
        ("POST", "/auth/login"),
        ("POST", "/items"),
        ("POST", "/upload"),
    }
