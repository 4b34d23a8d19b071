"""What a user does on the demo app, step by step, as the browser tests and the screenshots do it.

Waits go through selectors and Playwright's ``expect``: the demo app's Content-Security-Policy
forbids ``eval``, which ``page.wait_for_function`` with a string needs.
"""

from __future__ import annotations

import time

from playwright.sync_api import Locator, Page, expect

__all__ = ["ANSWER", "answer_shown", "send_chat", "sign_in", "sign_out", "supabase_sign_in"]

ANSWER = "#messages .turn.assistant:last-child"


def sign_in(page: Page) -> None:
    """Sign in with the demo user (the form is filled in with it)."""
    page.click("#sign-in")
    page.wait_for_selector("body[data-signed-in=yes]")
    expect(page.locator("#session-status")).to_have_text("Signed in as Demo User (demo@example.com)")


def sign_out(page: Page) -> None:
    page.click("#sign-out")
    page.wait_for_selector("body[data-signed-in=no]")


def supabase_sign_in(page: Page, transport: str = "bearer") -> None:
    """Sign in to the demo Supabase from the page, and choose how the session reaches gatehouse."""
    page.select_option("#supabase-transport", transport)
    page.click("#supabase-sign-in")
    expect(page.locator("#supabase-status")).to_have_text("Signed in to Supabase as demo@example.com")


def send_chat(page: Page, message: str) -> float:
    """Send ``message``; ``time.monotonic()`` when the answer's first token was on screen."""
    page.fill("#chat-input", message)
    page.click("#chat-send")
    page.wait_for_selector(f"{ANSWER}:not(:empty)")
    return time.monotonic()


def answer_shown(page: Page) -> Locator:
    return page.locator(ANSWER)
