"""A bounded cache of decrypted session tokens, so a session's JWE is not decrypted per request.

The contract:

* **Transparent.** `SessionCache.decode` returns what the codec's ``decode`` would return for
  the same token at the same moment, or raises the codec's `InvalidToken` when it would: a
  cached entry is rechecked with the codecs' own `unexpired` (``exp`` plus `CLOCK_TOLERANCE`,
  the only time check the next-auth v4 and Auth.js v5 codecs make; neither reads ``nbf`` or
  ``iat``), and one that fails it is dropped and the token decoded afresh, so an expired
  session is refused exactly as an uncached one is.
* **Short-lived.** An entry is used for at most ``ttl`` seconds (monotonic clock) after the
  token was decrypted, and never past its own ``exp``.
* **Bounded.** At most ``max_entries`` entries, the least recently used evicted first; a lookup
  and an insert are O(1).
* **Successes only.** A token that fails to decode is never cached, so a bad token always costs
  a decode attempt, exactly as before, and cannot fill the cache: only a holder of the secret
  can mint tokens that are cached.
* **No raw tokens kept.** Keys are keyed BLAKE2b digests (a random key per cache, so a digest
  means nothing outside this process) of the cookie name and the token; the token is not kept.
  The values are the decrypted claims, which hold the access and refresh tokens, as any
  `Session` does while a request runs.
* **Read-only claims.** Claims come back as a `MappingProxyType` over the cached dict: the top
  level cannot be changed. Nested values (a ``user`` object) are shared between requests and
  must not be mutated; nothing in gatehouse does (``apply_tokens`` builds a new dict).

The key includes the cookie name because an Auth.js v5 token only decodes under the cookie name
it was made for. One cache per `SessionReader`, used from the event loop only (not thread-safe).
Secrets and other settings are read at startup, so a changed secret means a new process and an
empty cache; the TTL bounds staleness anyway.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections import OrderedDict
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, NamedTuple, Protocol

from auth.jose import InvalidToken, unexpired

__all__ = ["DEFAULT_MAX_ENTRIES", "DEFAULT_TTL", "Decoder", "SessionCache"]

DEFAULT_MAX_ENTRIES = 10_000
DEFAULT_TTL = 60.0  # seconds


class Decoder(Protocol):
    """A codec's ``decode``: the claims of ``token`` at ``now``, or `InvalidToken`."""

    def __call__(self, token: str, now: float | None = None) -> dict[str, Any]: ...


class _Entry(NamedTuple):
    claims: dict[str, Any]  # as decoded; never handed out
    view: Mapping[str, Any]  # the read-only MappingProxyType over it that callers get
    fresh_until: float  # time.monotonic() deadline: decrypted at most ttl seconds before


class SessionCache:
    """Decrypted session claims by keyed digest of (cookie name, token); see the module docstring."""

    def __init__(self, max_entries: int = DEFAULT_MAX_ENTRIES, ttl: float = DEFAULT_TTL) -> None:
        if max_entries < 1 or ttl <= 0:
            raise ValueError("max_entries must be at least 1 and ttl positive")
        self.max_entries = max_entries
        self.ttl = ttl
        self._key = os.urandom(32)
        self._entries: OrderedDict[bytes, _Entry] = OrderedDict()
        self.hits = 0  # decodes answered from the cache, for tests and metrics
        self.misses = 0  # decodes that ran the codec

    def __len__(self) -> int:
        return len(self._entries)

    def decode(self, cookie_name: str, token: str, decoder: Decoder) -> Mapping[str, Any]:
        """The claims of ``token`` as ``decoder`` (the codec for ``cookie_name``) would give them
        now, from the cache when a fresh entry exists; `InvalidToken` when ``decoder`` would raise it."""
        now = time.time()
        digest = self._digest(cookie_name, token)
        entry = self._entries.get(digest)
        if entry is not None:
            if time.monotonic() < entry.fresh_until:
                try:
                    unexpired(entry.claims, now)
                except InvalidToken:
                    pass  # expired: decoded afresh below, which refuses it as before
                else:
                    self._entries.move_to_end(digest)
                    self.hits += 1
                    return entry.view
            del self._entries[digest]
        self.misses += 1
        claims = decoder(token, now=now)  # raises: nothing is cached
        view = MappingProxyType(claims)
        self._entries[digest] = _Entry(claims, view, time.monotonic() + self.ttl)
        if len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
        return view

    def _digest(self, cookie_name: str, token: str) -> bytes:
        h = hashlib.blake2b(digest_size=32, key=self._key)
        h.update(cookie_name.encode("utf-8", "surrogatepass"))
        h.update(b"\0")  # cookie names hold no NUL: (name, token) pairs cannot collide by shifting
        h.update(token.encode("utf-8", "surrogatepass"))
        return h.digest()
