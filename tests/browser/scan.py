"""Nothing secret in the browser: everything a page could read, searched for what it must not.

`SecretWatch` records every response a browser context receives. `SecretWatch.findings` then
searches, for each secret pattern, the pages' HTML, every response's URL, headers
(``Set-Cookie`` included, which JavaScript cannot even read) and body, ``localStorage``,
``sessionStorage`` and the cookies JavaScript can read (``document.cookie``).

Bodies are read as each request finishes (a navigation drops them). A stream the page ends
itself (Stop aborts the chat's fetch; the completion's EventSource is closed at its ``done``
event) never finishes, and Chromium does not hand its body back; `SecretWatch.unread` lists the
responses whose body could not be read, and what the page made of such a stream is still
searched, in its HTML. A body can also be lost when the page navigates at once after reading it
(next-auth's ``signIn()`` fetches its provider list, then leaves the page): Chromium drops a
document's resources with it. `SecretWatch.missing` names the unread bodies that are none of
these: not a stream, not a redirect or a 204, not one of the tests' own pages (served with
`TEST_PAGE_HEADER`; a self-submitting form leaves before its HTML is whole), and not a path
the test accepts.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Collection, Mapping
from urllib.parse import urlsplit

from playwright.sync_api import BrowserContext, Error, Request, Response

__all__ = ["TEST_PAGE_HEADER", "SecretWatch"]

TEST_PAGE_HEADER = "x-test-page"

_STORAGE = """() => JSON.stringify({
  local: Object.entries(localStorage), session: Object.entries(sessionStorage), cookie: document.cookie,
})"""


class SecretWatch:
    def __init__(self, context: BrowserContext) -> None:
        self.context = context
        self.responses: list[Response] = []
        self.bodies: dict[Request, str] = {}  # read as each request finishes: a navigation drops them
        self.unread: list[Response] = []
        self.ended: set[Request] = set()  # finished or failed: nothing more will come for them
        context.on("response", self._record)
        context.on("requestfinished", self._finished)
        context.on("requestfailed", self._failed)

    def _record(self, response: Response) -> None:
        self.responses.append(response)

    def _failed(self, request: Request) -> None:
        self.ended.add(request)

    def _finished(self, request: Request) -> None:
        self.ended.add(request)
        response = request.response()
        if response is None:
            return
        with contextlib.suppress(Error):  # a redirect, or a body Chromium did not keep
            self.bodies[request] = response.body().decode("utf-8", "replace")

    def settle(self, timeout: float = 2.0) -> None:
        """Wait (at most ``timeout`` seconds) for responses already received to finish.

        A page may start a request just before the test ends (next-auth's client refetches its
        session when the window gains focus); its headers can be in while its body is still on
        the way, and the scan would call that body unread. Playwright's sync API delivers events
        only while it waits, hence the short waits on a page.
        """
        pages = [p for p in self.context.pages if not p.is_closed()]
        deadline = time.monotonic() + timeout
        while pages and time.monotonic() < deadline:
            if all(r.request in self.ended for r in self.responses if not _endless(r)):
                return
            pages[0].wait_for_timeout(50)

    def haystack(self) -> list[tuple[str, str]]:
        """``(where, text)`` for everything the context's pages received or hold."""
        self.settle()
        found: list[tuple[str, str]] = []
        for page in self.context.pages:
            if page.is_closed():
                continue
            found.append((f"the HTML of {page.url}", page.content()))
            with contextlib.suppress(Error):  # a page without storage access (an error page)
                found.append((f"the storage and cookies of {page.url}", page.evaluate(_STORAGE)))
        self.unread = []
        for response in self.responses:
            where = f"{response.request.method} {response.url}"
            found.append((f"the URL of {where}", response.url))
            headers = "\n".join(f"{h['name']}: {h['value']}" for h in response.headers_array())
            found.append((f"the headers of {where}", headers))
            body = self.bodies.get(response.request)
            if body is None:
                self.unread.append(response)
            else:
                found.append((f"the body of {where}", body))
        return found

    def missing(self, accepted: Collection[str] = ()) -> list[str]:
        """The unread bodies (after `haystack`) that should have been read; ``accepted`` are
        URL paths whose body a test knows its page may leave unread (it navigated away)."""
        return [
            f"{r.request.method} {r.url} ({r.status})"
            for r in self.unread
            if not _endless(r)
            and r.status not in (204, 205)
            and not 300 <= r.status < 400  # no body to read
            and TEST_PAGE_HEADER not in r.headers
            and urlsplit(r.url).path not in accepted
        ]

    def findings(self, secrets: Mapping[str, re.Pattern[str]]) -> list[str]:
        """``"<secret> in <where>"`` for every secret found anywhere."""
        haystack = self.haystack()
        return [
            f"{name} in {where}"
            for name, pattern in secrets.items()
            for where, text in haystack
            if pattern.search(text)
        ]


def _endless(response: Response) -> bool:
    """A stream the page may end itself, or an EventSource it was refused: no body to wait for."""
    return response.headers.get("content-type", "").startswith("text/event-stream") or (
        response.request.resource_type == "eventsource"
    )
