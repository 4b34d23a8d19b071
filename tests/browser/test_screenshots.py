"""The demo app's main states, photographed: the pictures in docs/ that the README shows.

``GATEHOUSE_SCREENSHOTS=docs make test PYTEST_ARGS=tests/browser/test_screenshots.py`` (or
``.venv/bin/python -m pytest tests/browser/test_screenshots.py`` with the variable) writes them
into docs/; without the variable they go to a temporary folder, so every run still walks
through each state and checks what it shows.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
from playwright.sync_api import FilePayload, Page, expect

from tests.browser.flows import ANSWER, send_chat, sign_in, sign_out, supabase_sign_in
from tests.browser.servers import Gatehouse


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("GATEHOUSE_SCREENSHOTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def test_screenshots_of_the_demo_apps_main_states(
    page: Page, shots: Path, start_gatehouse_with: Callable[..., Gatehouse], secrets_of: list[Gatehouse]
) -> None:
    fresh = start_gatehouse_with()  # its own demo upstreams: no other test's conversations
    secrets_of.append(fresh)
    page.goto(fresh.url + "/")
    page.wait_for_selector("body[data-ready=yes]")
    sign_in(page)
    page.click("#call-me")
    page.fill("#item-title", "first item")
    page.click("#post-item")
    upload: FilePayload = {"name": "report.pdf", "mimeType": "application/pdf", "buffer": b"%PDF-1.4 demo\n" * 40_000}
    page.set_input_files("#upload-file", files=[upload])
    page.click("#upload")
    page.click("#complete")
    expect(page.locator("#completion-status")).to_have_text("Done.", timeout=20_000)
    expect(page.locator("#upload-percent")).to_have_text("100 %")
    expect(page.locator("#me-result")).to_contain_text("The backend sees Demo User")
    page.locator("header").scroll_into_view_if_needed()
    page.screenshot(path=shots / "demo-calls.png", clip={"x": 0, "y": 0, "width": 1200, "height": 860})

    supabase_sign_in(page)
    send_chat(page, "What is gatehouse?")
    expect(page.locator("#chat-status")).to_have_text("Done.")
    send_chat(page, "Stream me a long answer")
    expect(page.locator(ANSWER)).to_contain_text("streaming its answer word")
    expect(page.locator("#chat-stop")).to_be_enabled()
    page.locator("#chat").screenshot(path=shots / "demo-chat.png")  # mid-stream, Stop enabled
    page.click("#chat-stop")
    expect(page.locator("#chat-status")).to_have_text("Stopped.")

    page.click("#new-conversation")
    page.fill("#chat-input", "/rate-limit")
    page.click("#chat-send")
    expect(page.locator("#chat-status")).to_contain_text("(429 too_many_requests)")
    send_chat(page, "/stream-error")
    expect(page.locator("#chat-status")).to_contain_text("(400 completion_request_error)")
    page.locator("#chat").screenshot(path=shots / "demo-errors.png")  # Dify's errors, shown

    sign_out(page)
    page.click("#call-me")
    expect(page.locator("#me-result")).to_have_text("Signed out: sign in first (401 unauthorized).")
    page.locator("#session").scroll_into_view_if_needed()
    page.screenshot(path=shots / "demo-signed-out.png", clip={"x": 0, "y": 0, "width": 1200, "height": 560})
    for name in ("demo-calls.png", "demo-chat.png", "demo-errors.png", "demo-signed-out.png"):
        assert (shots / name).stat().st_size > 10_000
