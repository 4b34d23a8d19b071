"""A per-user token bucket: ``per_minute`` requests a minute, in bursts of up to ``per_minute``.

Each user's bucket starts full and refills continuously. With ``REDIS_URL``, the bucket lives
in Redis (`shared.buckets.SharedBuckets`: one atomic script per check), so every process and
instance spends from the same one. Without Redis, or while Redis does not answer, it lives in
this process: each process then allows its own ``per_minute``, and after an outage a user's
process bucket starts full. A full process bucket is forgotten, so memory follows the users
active in the last minute.
"""

from __future__ import annotations

import math
import time

from shared.buckets import SharedBuckets
from shared.redis import UNAVAILABLE

__all__ = ["RateLimiter"]


class RateLimiter:
    def __init__(self, per_minute: int, shared: SharedBuckets | None = None) -> None:
        self._capacity = float(per_minute)
        self._rate = per_minute / 60.0  # tokens per second
        self._shared = shared
        self._buckets: dict[str, tuple[float, float]] = {}  # user -> (tokens, at)
        self._last_sweep = time.monotonic()

    async def take(self, user: str) -> float | None:
        """Spend one token of ``user``'s; ``None`` when allowed, else the seconds until one is
        available (for ``Retry-After``). A limit of 0 allows everything. Waits on Redis at most
        ``REDIS_TIMEOUT``."""
        if self._capacity <= 0:
            return None
        if self._shared is not None:
            wait = await self._shared.take(user, self._capacity, self._rate)
            if wait is not UNAVAILABLE:
                return wait
        return self.take_here(user)

    def take_here(self, user: str) -> float | None:
        """`take`, from this process's bucket only."""
        if self._capacity <= 0:
            return None
        now = time.monotonic()
        self._sweep(now)
        tokens, at = self._buckets.get(user, (self._capacity, now))
        tokens = min(self._capacity, tokens + (now - at) * self._rate)
        if tokens >= 1.0:
            self._buckets[user] = (tokens - 1.0, now)
            return None
        self._buckets[user] = (tokens, now)
        return (1.0 - tokens) / self._rate

    @staticmethod
    def retry_after(wait: float) -> str:
        return str(max(1, math.ceil(wait)))

    def _sweep(self, now: float) -> None:
        """Forget buckets that have refilled: they are no different from a new one."""
        if now - self._last_sweep < 60.0:
            return
        self._last_sweep = now
        full = [u for u, (tokens, at) in self._buckets.items() if tokens + (now - at) * self._rate >= self._capacity]
        for user in full:
            del self._buckets[user]
