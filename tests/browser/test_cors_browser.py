"""CORS for ``ALLOWED_ORIGINS`` in a real Chromium: a front end on a listed origin reads
gatehouse's answers with the victim's session; an origin not listed reads nothing, and nothing
unsafe it sends reaches the backend.

The front end (`front_end`) is a page whose buttons call gatehouse as a team's app on another
origin would (README, "A front end on another origin: CORS"): a JSON ``fetch`` POST with
``credentials: "include"`` and ``X-CSRF: 1`` (not a simple request: the browser preflights it),
a ``fetch`` DELETE (preflighted too), ``new EventSource(url, {withCredentials: true})``, and a
``text/plain`` POST (a simple request, as a form could send it, with no preflight). Each shows on
the page what its script could read, which the tests assert.

Where the front end lives: ``http://127.0.0.1:<other port>``. That is another origin than
gatehouse's ``http://127.0.0.1:<port>`` but the same *site* (ports do not make a site), as
``app.example.com`` and ``api.example.com`` are: the deployment the README recommends, where the
default ``SameSite=Lax`` cookie goes along (``Sec-Fetch-Site: same-site``), so the one setting
these tests change is ``ALLOWED_ORIGINS``. The cross-site shape (``http://localhost:<other
port>`` with ``SESSION_COOKIE_SAMESITE=None``) cannot be tested for CORS in this Chromium:
Chromium does accept the ``Secure`` cookie from ``http://127.0.0.1`` (loopback is a secure
context), but it withholds it from a cross-site request as a third-party cookie (the DevTools
protocol reports ``blockedReasons: ["UserPreferences"]``, in a fresh context and in a persistent
profile alike), so gatehouse sees no session and answers 401: a test there would measure the
browser's cookie policy, the cost the README's ``SameSite`` paragraph warns of, not CORS.

The origin not listed is a third server, ``http://127.0.0.1:<third port>``: the same site as
well, so the cookie goes along and nothing but gatehouse's CORS and CSRF rules stand between it
and the session.

Gatehouse's access log (`Gatehouse.answered`) shows what Chromium sent, preflights included;
the demo backend's records (`Gatehouse.received`) show what reached it. After each flow, and at
the end (conftest.py), the context is searched for gatehouse's secrets.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator

import pytest
from playwright.sync_api import Page, expect

from tests.browser.flows import sign_in
from tests.browser.scan import SecretWatch
from tests.browser.servers import Answered, Gatehouse, LoopThread, OtherOrigin, start_other_origin

PROMPT = "cors"
# What the demo backend streams for PROMPT, one word per event (demo/backend.py).
COMPLETION = f"You said: {PROMPT}. This answer streams from the demo backend one word at a time. "
BODY = json.dumps({"title": "from another origin"})  # the backend keeps it as it came
STREAM_DELAY = 0.02  # seconds between two events (the demo backend's 0.15 would make the test slow)


def front_end(gatehouse: Gatehouse) -> str:
    """The other origin's page: each button calls gatehouse and shows what the script could read."""
    return f"""<!doctype html><title>A front end on another origin</title>
<button id="create">Create</button> <output id="created"></output><br>
<button id="create-simple">Create (a simple request)</button> <output id="created-simple"></output><br>
<button id="delete">Delete</button> <output id="deleted"></output><br>
<button id="stream">Stream</button> <output id="streamed"></output> <output id="stream-state"></output>
<script>
const api = {json.dumps(gatehouse.url)};
const unsafe = {{credentials: "include", headers: {{"Content-Type": "application/json", "X-CSRF": "1"}}}};
let created = null;
const show = (id, text) => {{ document.getElementById(id).textContent = text; }};
// The status, whether the exposed X-Request-ID is readable, and the body; or the browser's refusal.
const read = id => [
  async r => {{
    const body = await r.text();
    show(id, `${{r.status}} ${{r.headers.get("X-Request-ID") ? "id" : "no id"}} ${{body}}`);
    return body;
  }},
  e => {{ show(id, "blocked: " + e.name); return null; }},
];
document.getElementById("create").onclick = async () => {{
  const body = await fetch(api + "/api/proxy/items", {{...unsafe, method: "POST",
    body: {json.dumps(BODY)}}}).then(...read("created"));
  created = body && JSON.parse(body);
}};
// A POST a form could send too: no preflight, so only the CSRF rule stands in its way.
document.getElementById("create-simple").onclick = () => {{
  fetch(api + "/api/proxy/items", {{method: "POST", credentials: "include", headers: {{"Content-Type": "text/plain"}},
    body: {json.dumps(BODY)}}}).then(...read("created-simple"));
}};
document.getElementById("delete").onclick = () => {{
  fetch(api + "/api/proxy/items/" + (created ? created.id : 1), {{...unsafe, method: "DELETE"}})
    .then(...read("deleted"));
}};
document.getElementById("stream").onclick = () => {{
  const source = new EventSource(api + "/api/proxy/completion?prompt={PROMPT}", {{withCredentials: true}});
  let events = 0;
  const state = text => show("stream-state", text + " after " + events + " events");
  source.addEventListener("delta", e => {{
    events += 1;
    document.getElementById("streamed").textContent += JSON.parse(e.data).text;
    state("streaming");
  }});
  source.addEventListener("done", () => {{ source.close(); state("done"); }});
  // A refused EventSource would reconnect, and so would one whose stream broke: neither here.
  source.onerror = () => {{ source.close(); state("failed"); }};
}};
</script>"""


@pytest.fixture(scope="module")
def third_origin(loop: LoopThread) -> Iterator[OtherOrigin]:
    """A third origin (another port again), which ``ALLOWED_ORIGINS`` does not list."""
    server = start_other_origin(loop)
    yield server
    loop.call(server.close)


@pytest.fixture
def cors_gatehouse(
    start_gatehouse_with: Callable[..., Gatehouse], other_origin: OtherOrigin, secrets_of: list[Gatehouse]
) -> Gatehouse:
    """Gatehouse listing the other origin (and only it) in ``ALLOWED_ORIGINS``."""
    gatehouse = start_gatehouse_with(ALLOWED_ORIGINS=f"http://127.0.0.1:{other_origin.port}")
    secrets_of.append(gatehouse)
    gatehouse.call(lambda: setattr(gatehouse.demo.backend, "completion_delay", STREAM_DELAY))
    return gatehouse


def open_front_end(page: Page, gatehouse: Gatehouse, origin: OtherOrigin) -> float:
    """Sign the victim in on gatehouse's own page, then open the front end on ``origin``;
    ``time.monotonic()`` from when the front end is loaded."""
    page.goto(gatehouse.url + "/")
    page.wait_for_selector("body[data-ready=yes]")
    sign_in(page)
    origin.add("front-end", front_end(gatehouse))
    page.goto(origin.url("front-end", "127.0.0.1"))
    return time.monotonic()


def signed_in_token(gatehouse: Gatehouse) -> str:
    """The access token the backend issued at the victim's sign-in: the newest pair of tokens
    (the demo issues one pair for its banner, then one per sign-in or refresh)."""
    issued = gatehouse.call(lambda: list(gatehouse.demo.backend.tokens.issued))
    assert len(issued) == 4, "one sign-in, and no refresh since"
    return issued[-2]


def assert_nothing_secret(watch: SecretWatch, gatehouses: list[Gatehouse]) -> None:
    patterns = {name: pattern for g in gatehouses for name, pattern in g.secrets().items()}
    assert watch.findings(patterns) == [], "secrets reached the browser"


def proxy_answers(gatehouse: Gatehouse, since: float, count: int) -> list[tuple[str, str, int]]:
    """The ``/api/proxy/`` requests gatehouse answered since ``since``, once there are ``count``
    (a stream's line is written when gatehouse has relayed its end, after the page saw it)."""
    deadline = time.monotonic() + 5
    while True:
        answered: list[Answered] = gatehouse.answered(since)
        found = [(a.method, a.path, a.status) for a in answered if a.path.startswith("/api/proxy/")]
        if len(found) >= count or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


def test_a_listed_origin_reads_each_answer_through_cors_with_the_session(
    page: Page, watch: SecretWatch, cors_gatehouse: Gatehouse, other_origin: OtherOrigin, secrets_of: list[Gatehouse]
) -> None:
    since = open_front_end(page, cors_gatehouse, other_origin)

    page.click("#create")
    expect(page.locator("#created")).to_have_text(f'201 id {{"id": 1, "data": {BODY}}}')
    assert_nothing_secret(watch, secrets_of)

    page.click("#delete")
    expect(page.locator("#deleted")).to_have_text("204 id ")
    assert_nothing_secret(watch, secrets_of)

    page.click("#stream")
    expect(page.locator("#stream-state")).to_have_text(f"done after {len(COMPLETION.split())} events")
    expect(page.locator("#streamed")).to_have_text(COMPLETION)
    assert_nothing_secret(watch, secrets_of)

    # Chromium preflighted the POST and the DELETE (not the EventSource's GET, a simple request);
    # gatehouse granted both preflights itself.
    assert proxy_answers(cors_gatehouse, since, 5) == [
        ("OPTIONS", "/api/proxy/items", 204),
        ("POST", "/api/proxy/items", 201),
        ("OPTIONS", "/api/proxy/items/1", 204),
        ("DELETE", "/api/proxy/items/1", 204),
        ("GET", "/api/proxy/completion", 200),
    ]
    # Exactly those three requests reached the backend, with the session's token; no preflight.
    token = signed_in_token(cors_gatehouse)
    front_end_origin = f"http://127.0.0.1:{other_origin.port}"
    assert [
        (r.method, r.path, r.bearer, r.origin, r.fetch_site) for r in cors_gatehouse.received() if r.at >= since
    ] == [
        ("POST", "/items", token, front_end_origin, "same-site"),
        ("DELETE", "/items/1", token, front_end_origin, "same-site"),
        ("GET", "/completion", token, front_end_origin, "same-site"),
    ]


def test_an_unlisted_origin_gets_no_preflight_no_answer_and_sends_nothing_unsafe(
    page: Page, watch: SecretWatch, cors_gatehouse: Gatehouse, third_origin: OtherOrigin, secrets_of: list[Gatehouse]
) -> None:
    since = open_front_end(page, cors_gatehouse, third_origin)

    page.click("#create")
    expect(page.locator("#created")).to_have_text("blocked: TypeError")  # the preflight was refused
    page.click("#create-simple")
    expect(page.locator("#created-simple")).to_have_text("blocked: TypeError")  # sent, refused, unreadable
    page.click("#delete")
    expect(page.locator("#deleted")).to_have_text("blocked: TypeError")
    page.click("#stream")
    expect(page.locator("#stream-state")).to_have_text("failed after 0 events")
    expect(page.locator("#streamed")).to_have_text("")
    assert_nothing_secret(watch, secrets_of)

    # Gatehouse refused both preflights (so Chromium never sent the POST and the DELETE), and the
    # CSRF rule the simple POST, though the cookie went along (the same site).
    assert proxy_answers(cors_gatehouse, since, 4) == [
        ("OPTIONS", "/api/proxy/items", 403),
        ("POST", "/api/proxy/items", 403),
        ("OPTIONS", "/api/proxy/items/1", 403),
        ("GET", "/api/proxy/completion", 403),
    ]
    # Nothing reached the backend. The EventSource's GET is a simple request, which a browser sends
    # from any origin (CORS would only hide its answer): the CSRF rule's Fetch Metadata check
    # refuses a script's read from an origin not listed, so the session never reaches the backend.
    assert [(r.method, r.path) for r in cors_gatehouse.received() if r.at >= since] == []
