"""Refreshing expired access tokens: once per refresh token, however many requests need it.

Refresh tokens usually rotate: the backend accepts each one once. Two requests refreshing with
the same token at once would log the user out (nextauthjs/next-auth#2071, #8897, #6851). So
`Refresher` keeps one refresh in flight per refresh token, which every concurrent request
awaits, and remembers its result for ``grace`` seconds, for requests that arrive moments later
still carrying the old cookie (the browser has not stored the new one yet).

The wire contract with the backend: ``POST BACKEND_URL + AUTH_REFRESH_PATH`` with JSON
``{"refresh_token": "<rt>"}``; the answer names the access token ``access_token`` or
``accessToken``, optionally a new refresh token (``refresh_token`` / ``refreshToken``; absent:
the old one stays valid) and the expiry as ``expires_in`` (s), ``expires_at`` (s),
``accessTokenExpires`` (ms) or only the new token's own ``exp``. 400 and 401 mean the session
is over (`RefreshRejected`); anything else that is not a 200 means the backend could not
answer now (`RefreshUnavailable`), and the session is kept.

Across processes and instances (``REDIS_URL``), a `SharedFlight` stands behind the in-process
single flight: the process's one refresh per token first claims it in Redis
(`shared.flight`). It finds the result another process left (it is served by that refresh),
or takes the token's lock, refreshes while the lock is renewed, and leaves the result, sealed,
for ``grace`` seconds (at least `MIN_SHARED_GRACE`, so waiters polling for it see it), or
finds the lock held and polls (every `POLL_INTERVAL` s) until the result is there or the lock
is free, for at most ``timeout`` seconds (``UPSTREAM_RESPONSE_TIMEOUT``; then
`RefreshUnavailable`). A rejection is shared too (the token is spent either way, and a waiter
that tried it again would only be refused, one more call later), but only by a holder that
still holds the lock and finds no result there (`shared.flight.Lease.fail`): a holder whose
lease lapsed may have been overtaken by one that succeeded with the same token, and a rejection
left over that success would sign out everyone carrying the old cookie. A success replaces a
rejection. A failure that is not a rejection leaves no result: the next claimant tries again.
While Redis does not answer, the process refreshes on its own, as without Redis.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import time
from collections.abc import Callable, Mapping
from typing import Any, Literal

from auth.jose import InvalidToken, b64url_decode, is_number, json_segment
from shared.flight import Found, Lease, SharedFlight
from shared.redis import UNAVAILABLE
from upstream.client import UpstreamClient

__all__ = [
    "RefreshRejected",
    "RefreshResult",
    "RefreshUnavailable",
    "Refresher",
    "Tokens",
    "access_expiry",
    "apply_tokens",
    "parse_tokens",
]


class RefreshRejected(Exception):
    """The backend refused the refresh token: the session is over."""


class RefreshUnavailable(Exception):
    """The refresh endpoint could not be reached or failed: try again later."""


@dataclasses.dataclass(frozen=True, slots=True)
class Tokens:
    access_token: str
    refresh_token: str
    expires_at: float | None  # epoch seconds


def _token_exp(access_token: str) -> float | None:
    """The ``exp`` of a JWT access token, read without verification (it is the backend's to
    verify; the gateway only needs to know when to refresh). None if it is not a JWT."""
    parts = access_token.split(".")
    if len(parts) != 3:
        return None
    try:
        exp = json_segment(b64url_decode(parts[1])).get("exp")
    except InvalidToken:
        return None
    return float(exp) if is_number(exp) else None


def access_expiry(claims: Mapping[str, Any], access_token: str) -> float | None:
    """When the session's access token expires (epoch seconds), from ``accessTokenExpires``
    (ms), ``expires_at`` (s) or the token's own ``exp``; None when nothing says."""
    millis = claims.get("accessTokenExpires")
    if is_number(millis):
        return float(millis) / 1000
    seconds = claims.get("expires_at")
    if is_number(seconds):
        return float(seconds)
    return _token_exp(access_token)


def apply_tokens(claims: Mapping[str, Any], tokens: Tokens) -> dict[str, Any]:
    """The session's claims with ``tokens`` in, spelled as the session already spelled them
    (the old tutorial's camelCase with an expiry in ms, or the current guide's snake_case)."""
    updated = {k: v for k, v in claims.items() if k not in ("iat", "exp", "jti")}
    if "accessToken" in claims:
        updated["accessToken"], updated["refreshToken"] = tokens.access_token, tokens.refresh_token
        field, value = "accessTokenExpires", None if tokens.expires_at is None else int(tokens.expires_at * 1000)
    else:
        updated["access_token"], updated["refresh_token"] = tokens.access_token, tokens.refresh_token
        field, value = "expires_at", None if tokens.expires_at is None else int(tokens.expires_at)
    if value is None:
        updated.pop(field, None)  # the new token's own exp says when
    else:
        updated[field] = value
    return updated


def parse_tokens(data: object, old_refresh_token: str | None = None) -> Tokens:
    """The tokens in a backend's JSON answer (refresh or login); `RefreshUnavailable` if it
    holds no access token."""
    if not isinstance(data, dict):
        raise RefreshUnavailable("the answer is not a JSON object")
    access = data.get("access_token") or data.get("accessToken")
    if not isinstance(access, str) or not access:
        raise RefreshUnavailable("the answer holds no access token")
    refresh = data.get("refresh_token") or data.get("refreshToken") or old_refresh_token or ""
    expires_at: float | None
    if is_number(data.get("expires_in")):
        expires_at = time.time() + data["expires_in"]
    elif is_number(data.get("expires_at")):
        expires_at = float(data["expires_at"])
    elif is_number(data.get("accessTokenExpires")):
        expires_at = data["accessTokenExpires"] / 1000
    else:
        expires_at = _token_exp(access)
    return Tokens(access_token=access, refresh_token=str(refresh), expires_at=expires_at)


RefreshResult = Literal["ok", "rejected", "unavailable", "shared"]
POLL_INTERVAL = 0.05  # seconds between looks at another process's refresh
MIN_SHARED_GRACE = 1.0  # seconds a shared result is kept at least, whatever REFRESH_GRACE says
_REJECTED = b'{"rejected":true}'


def _ignore(result: RefreshResult) -> None:
    pass


def _dump(tokens: Tokens) -> bytes:
    return json.dumps(dataclasses.asdict(tokens), separators=(",", ":")).encode()


def _load(value: bytes) -> Tokens:
    """What `_dump` or `_REJECTED` stored; `RefreshRejected` for the latter."""
    try:
        data = json.loads(value)
        if data.get("rejected") is True:
            raise RefreshRejected("another process's refresh with this token was rejected")
        expires_at = data["expires_at"]
        return Tokens(
            str(data["access_token"]), str(data["refresh_token"]), None if expires_at is None else float(expires_at)
        )
    except (ValueError, KeyError, TypeError, AttributeError):
        raise RefreshUnavailable("a shared refresh result is not readable") from None


class Refresher:
    """Single-flight token refresh against one backend endpoint: per process, and across
    processes with ``shared`` (see the module docstring).

    ``on_result`` is called once per `refresh` with how that request was served: ``ok`` (its
    own call to the backend), ``shared`` (another request's refresh, in this process or
    another, in flight or within the grace period), ``rejected`` or ``unavailable`` (the
    exception it gets). It does nothing until the metrics connect it.
    """

    def __init__(
        self,
        client: UpstreamClient,
        url: str,
        timeout: float,
        grace: float,
        shared: SharedFlight | None = None,
    ) -> None:
        self._client = client
        self._url = url
        self._timeout = timeout
        self._grace = grace
        self._shared = shared
        self._inflight: dict[bytes, asyncio.Task[tuple[Tokens, bool]]] = {}
        self._recent: dict[bytes, Tokens] = {}
        self.calls = 0  # refresh requests this process sent to the backend, for tests and metrics
        self.on_result: Callable[[RefreshResult], None] = _ignore

    async def refresh(self, refresh_token: str) -> Tokens:
        """New tokens for ``refresh_token``: from a refresh in flight, one finished within the
        grace period, or a new call. Raises `RefreshRejected` or `RefreshUnavailable`."""
        key = hashlib.sha256(refresh_token.encode()).digest()  # no raw tokens kept as keys
        recent = self._recent.get(key)
        if recent is not None:
            self.on_result("shared")
            return recent
        task = self._inflight.get(key)
        started = task is None
        if task is None:
            task = asyncio.ensure_future(self._obtain(refresh_token))
            self._inflight[key] = task
            task.add_done_callback(lambda done: self._settle(key, done))
        try:
            # Shielded: a request that goes away must not cancel the refresh the others await.
            tokens, from_elsewhere = await asyncio.shield(task)
        except RefreshRejected:
            self.on_result("rejected")
            raise
        except RefreshUnavailable:
            self.on_result("unavailable")
            raise
        finally:
            # The task keeps the error it failed with, whose traceback holds this frame: a
            # reference cycle through every request that awaited it, unless the frame lets go.
            del task
        self.on_result("ok" if started and not from_elsewhere else "shared")
        return tokens

    def _settle(self, key: bytes, task: asyncio.Task[tuple[Tokens, bool]]) -> None:
        del self._inflight[key]
        if not task.cancelled() and task.exception() is None:
            self._recent[key] = task.result()[0]
            asyncio.get_running_loop().call_later(self._grace, self._recent.pop, key, None)

    async def _obtain(self, refresh_token: str) -> tuple[Tokens, bool]:
        """This process's one refresh of ``refresh_token``: new tokens, and whether another
        process's refresh gave them."""
        shared = self._shared
        if shared is None:
            return await self._call(refresh_token), False
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._timeout
        keys = shared.keys(refresh_token)
        while True:
            claim = await shared.claim(keys)
            if claim is UNAVAILABLE:
                return await self._call(refresh_token), False
            if isinstance(claim, Found):
                return _load(claim.value), True
            if isinstance(claim, Lease):
                return await self._call_holding(claim, refresh_token), False
            left = deadline - loop.time()
            if left <= 0:
                raise RefreshUnavailable("another process's refresh did not end in time")
            await asyncio.sleep(min(POLL_INTERVAL, left))

    async def _call_holding(self, lease: Lease, refresh_token: str) -> Tokens:
        """`_call` under ``lease`` (renewed meanwhile), its result or rejection left for the others."""
        grace = max(self._grace, MIN_SHARED_GRACE)
        async with lease:
            try:
                tokens = await self._call(refresh_token)
            except RefreshRejected:
                await lease.fail(_REJECTED, grace)
                raise
            await lease.finish(_dump(tokens), grace)
            return tokens

    async def _call(self, refresh_token: str) -> Tokens:
        self.calls += 1
        body = json.dumps({"refresh_token": refresh_token}).encode()
        try:
            response = await self._client.call(self._url, body, self._timeout)
        except Exception as exc:  # refused, reset, timed out
            raise RefreshUnavailable(type(exc).__name__) from None
        if response.code in (400, 401):
            raise RefreshRejected(f"the backend answered {response.code}")
        if response.code != 200:
            raise RefreshUnavailable(f"the backend answered {response.code}")
        try:
            data = json.loads(response.body)
        except ValueError:
            raise RefreshUnavailable("the refresh answer is not JSON") from None
        return parse_tokens(data, refresh_token)
