"""A per-user token bucket: ``per_minute`` requests a minute, in bursts of up to ``per_minute``.

Each user's bucket starts full and refills continuously. Buckets live in this process only
(gatehouse is one process; behind several, each allows its own share) and a full bucket is
forgotten, so memory follows the users active in the last minute.
"""

from __future__ import annotations

import math
import time

__all__ = ["RateLimiter"]


class RateLimiter:
    def __init__(self, per_minute: int) -> None:
        self._capacity = float(per_minute)
        self._rate = per_minute / 60.0  # tokens per second
        self._buckets: dict[str, tuple[float, float]] = {}  # user -> (tokens, at)
        self._last_sweep = time.monotonic()

    def take(self, user: str) -> float | None:
        """Spend one token of ``user``'s; ``None`` when allowed, else the seconds until one is
        available (for ``Retry-After``). A limit of 0 allows everything."""
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
