"""The cross-site request rule for cookie-authenticated requests.

A browser attaches cookies to cross-site requests, so a request authenticated by a cookie must
also prove it came from the app's own pages (or from one of ``ALLOWED_ORIGINS``). Browsers say
where a request comes from in standard headers.

**Unsafe requests** (POST, PUT, PATCH, DELETE), checked in this order:

* ``Sec-Fetch-Site``: anything but ``same-origin`` or ``none`` (typed URL, bookmark) is refused,
  unless ``Origin`` (or, without one, the ``Referer``'s origin) is one of ``ALLOWED_ORIGINS``;
* else ``Origin`` (``null`` included, as sandboxed frames and some redirects send it), else
  ``Referer``: its origin must be the request's own or one of ``ALLOWED_ORIGINS``.

**Safe requests** (GET, HEAD), Fetch Metadata's resource isolation policy: a request another
origin's page makes from a script or as a subresource (``Sec-Fetch-Site`` ``same-site`` or
``cross-site`` with any ``Sec-Fetch-Mode`` but ``navigate``: a ``fetch``, an ``EventSource``, an
``<img>`` or ``<script>``) is refused unless its ``Origin`` is listed. CORS would only hide the
answer; this keeps the request, and the user's session, from reaching the backend at all (a
stream of tokens costs money, and not every backend keeps its GETs free of side effects). A link
followed or a URL typed (``navigate``, ``none``) passes: the page that linked cannot read the
answer. Without Fetch Metadata, a read that names a foreign ``Origin`` (browsers send one on
cross-origin ``fetch`` and ``EventSource``) is refused the same way.

A request with none of these headers is not from a browser (curl, a server) and passes: the
threat is a victim's browser, which always sends at least one of them on the requests above.
With ``CSRF_HEADER_REQUIRED`` a custom ``X-CSRF: 1`` header is required as well on unsafe
requests (Duende BFF's rule): a cross-site page cannot set it without a CORS preflight, which
gatehouse grants only to ``ALLOWED_ORIGINS`` (``handlers/cors.py``). Requests authenticated by an
``Authorization`` header are not ambient and are not checked.
"""

from __future__ import annotations

import dataclasses

from tornado.httputil import HTTPHeaders

from settings import origin_of

__all__ = ["SAFE_METHODS", "CsrfPolicy"]

SAFE_METHODS = frozenset(("GET", "HEAD", "OPTIONS"))
_TRUSTED_FETCH_SITES = frozenset(("same-origin", "none"))
# Navigations that show the answer as a page; an <embed> or <object> navigates too, but loads
# the answer into the other site's page.
_DOCUMENTS = frozenset(("document", "iframe", "frame"))


@dataclasses.dataclass(frozen=True)
class CsrfPolicy:
    allowed_origins: frozenset[str]
    header_required: bool
    https: bool  # the public scheme of gatehouse's own origin (production is always https)

    def own_origin(self, host: str) -> str | None:
        return origin_of(f"{'https' if self.https else 'http'}://{host}")

    def violation(self, method: str, headers: HTTPHeaders, host: str) -> str | None:
        """Why a cookie-authenticated request must be refused, or None when it may pass."""
        read = method in SAFE_METHODS
        if not read and self.header_required and headers.get("X-CSRF") != "1":
            return "This request needs the header X-CSRF: 1."
        refused = "Another site's page may not read with the session." if read else None
        fetch_site = headers.get("Sec-Fetch-Site")
        if fetch_site is not None:
            if fetch_site.strip().lower() in _TRUSTED_FETCH_SITES:
                return None
            if read and _navigation(headers):
                return None  # a link followed: the page that made it cannot read the answer
            # An <img> or <video> sends no Origin; its Referer (at least its origin, under the
            # default referrer policy) names the page, which no page can forge.
            origin = origin_of(headers.get("Origin") or headers.get("Referer", ""))
            if origin is not None and origin in self.allowed_origins:
                return None  # another site, but one the deployment named
            return refused or "Cross-site requests may not use the session."
        # Without Fetch Metadata: a read names a foreign Origin only from another page's script
        # (browsers omit it on navigations and same-origin reads); a write always names one.
        claimed = headers.get("Origin")
        if claimed is None and not read:
            claimed = headers.get("Referer")
        if claimed is None:
            return None  # not from a browser, or a read no other page's script made
        origin = origin_of(claimed)
        if origin is not None and (origin in self.allowed_origins or origin == self.own_origin(host)):
            return None
        return refused or "Requests from other sites may not use the session."


def _navigation(headers: HTTPHeaders) -> bool:
    """A request that shows its answer as a page (a link followed, a frame), not inside another."""
    if headers.get("Sec-Fetch-Mode", "").strip().lower() != "navigate":
        return False
    return headers.get("Sec-Fetch-Dest", "document").strip().lower() in _DOCUMENTS
