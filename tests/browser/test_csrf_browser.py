"""The CSRF rule against a real browser's own headers (``Sec-Fetch-Site``, ``Origin``, SameSite).

A signed-in victim opens a page of another origin, which tries a form POST, a ``fetch`` POST
with ``credentials: "include"`` and a ``fetch`` DELETE against gatehouse. Two such origins:

* ``127.0.0.1:<other port>``, the same site as gatehouse (ports do not make a site): Chromium
  sends the session cookie, ``Sec-Fetch-Site: same-site``, and gatehouse's rule refuses (403
  ``csrf_rejected``);
* ``localhost:<other port>``, another site: Chromium withholds the ``SameSite=Lax`` cookie, and
  gatehouse sees no session (401).

Either way the browser gets no readable answer (no CORS), the DELETE never leaves the browser (its
preflight is not granted), and the backend receives nothing. The same three requests from
gatehouse's own page pass and reach the backend.
"""

from __future__ import annotations

import time

import pytest
from playwright.sync_api import BrowserContext, Page, expect

from tests.browser.flows import sign_in
from tests.browser.servers import Gatehouse, OtherOrigin

FORGED = '{"title": "forged", "pad": "'  # text/plain form encoding makes name=value valid JSON


def attack_pages(gatehouse: Gatehouse) -> dict[str, str]:
    """The attacker's pages; each puts what its script could read into ``document.title``."""
    items = f"{gatehouse.url}/api/proxy/items"
    report = '.then(r => r.text().then(t => "read " + r.status + " " + t), e => "blocked: " + e.name)'
    report += ".then(t => { document.title = t; })"
    return {
        "form": (
            f'<form id="attack" method="POST" action="{items}" enctype="text/plain">'
            f"<input name='{FORGED}' value='\"}}'></form>"
            '<script>document.getElementById("attack").submit();</script>'
        ),
        "fetch-post": (
            f'<title>pending</title><script>fetch("{items}", {{method: "POST", credentials: "include", '
            f'headers: {{"Content-Type": "text/plain"}}, body: \'{{"title": "forged"}}\'}}){report};</script>'
        ),
        "fetch-delete": (
            f'<title>pending</title><script>fetch("{items}/1", {{method: "DELETE", credentials: "include"}})'
            f"{report};</script>"
        ),
    }


@pytest.fixture
def victim(demo_page: Page, other_origin: OtherOrigin, gatehouse: Gatehouse) -> Page:
    """The demo page, signed in; the attacker's pages are served."""
    sign_in(demo_page)
    for name, html in attack_pages(gatehouse).items():
        other_origin.add(name, html)
    return demo_page


def backend_calls_since(gatehouse: Gatehouse, since: float) -> list[str]:
    return [f"{r.method} {r.path}" for r in gatehouse.received() if r.at >= since]


@pytest.mark.parametrize(
    ("host", "refusal"),
    [("127.0.0.1", (403, "csrf_rejected")), ("localhost", (401, "unauthorized"))],
    ids=["same-site", "cross-site"],
)
def test_another_origins_form_post_fetch_post_and_delete_are_refused_and_reach_nothing(
    victim: Page,
    context: BrowserContext,
    other_origin: OtherOrigin,
    gatehouse: Gatehouse,
    host: str,
    refusal: tuple[int, str],
) -> None:
    status, code = refusal
    since = time.monotonic()
    attacker = context.new_page()

    attacker.goto(other_origin.url("form", host))
    expect(attacker.locator("body")).to_contain_text(f'"error":"{code}"')  # gatehouse's refusal, shown

    attacker.goto(other_origin.url("fetch-post", host))
    expect(attacker).to_have_title("blocked: TypeError")  # no CORS: the script reads nothing

    attacker.goto(other_origin.url("fetch-delete", host))
    expect(attacker).to_have_title("blocked: TypeError")  # the preflight is not granted

    answered = [(a.method, a.path, a.status) for a in gatehouse.answered(since) if a.path.startswith("/api/proxy/")]
    assert ("POST", "/api/proxy/items", status) in answered
    assert answered.count(("POST", "/api/proxy/items", status)) == 2  # the form's and the fetch's
    assert [a for a in answered if a[0] not in ("POST", "OPTIONS")] == []  # the DELETE never left
    assert backend_calls_since(gatehouse, since) == []
    victim.reload()  # and the victim is still signed in
    expect(victim.locator("#session-status")).to_have_text("Signed in as Demo User (demo@example.com)")


def test_the_same_requests_from_gatehouses_own_page_pass(victim: Page, gatehouse: Gatehouse) -> None:
    since = time.monotonic()
    created = victim.evaluate(
        """async () => {
            const r = await fetch("/api/proxy/items", {method: "POST", credentials: "include",
                headers: {"Content-Type": "text/plain"}, body: '{"title": "own"}'});
            return [r.status, await r.json()];
        }"""
    )
    assert created[0] == 201 and created[1]["data"] == {"title": "own"}
    deleted = victim.evaluate(
        """async id => {
            const r = await fetch("/api/proxy/items/" + id, {method: "DELETE", credentials: "include"});
            await r.text();
            return r.status;
        }""",
        created[1]["id"],
    )
    assert deleted == 204
    with victim.expect_navigation():
        victim.evaluate(
            """forged => {
                const form = document.createElement("form");
                form.method = "POST"; form.action = "/api/proxy/items"; form.enctype = "text/plain";
                const field = document.createElement("input");
                field.name = forged; field.value = '"}';
                form.append(field); document.body.append(form); form.submit();
            }""",
            FORGED,
        )
    expect(victim.locator("body")).to_contain_text('"data": {"title": "forged", "pad": "="}')
    assert backend_calls_since(gatehouse, since) == [
        "POST /items",
        f"DELETE /items/{created[1]['id']}",
        "POST /items",
    ]
