"""Token buckets in Redis, one per key, shared by every process and instance.

`SharedBuckets.take` is one Lua script, one round trip: refill the bucket for the time since
it was last touched (on Redis's clock, so the instances' clocks do not matter), then spend a
token or say how long until one is there. Reading, deciding and writing in one script is what
keeps N instances to one limit (a read then a write from each would let them all through).

A bucket is a hash ``gatehouse:ratelimit:<namespace>:<sha256 of the key>`` with the fields
``tokens`` and ``at`` (Redis time, s); it expires once it would have refilled, so Redis holds
only the buckets of the last minute's users. The key (a user id) is hashed, not stored.
"""

from __future__ import annotations

import hashlib

from shared.redis import UNAVAILABLE, RedisLink, Unavailable

__all__ = ["SharedBuckets"]

# KEYS: the bucket. ARGV: capacity, refill rate in tokens per second.
# -> the seconds to wait for a token, as a string (Lua numbers would come back truncated); "0": spent.
_TAKE = """
local capacity = tonumber(ARGV[1])
local rate = tonumber(ARGV[2])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens, at = tonumber(state[1]), tonumber(state[2])
if tokens == nil or at == nil then tokens, at = capacity, now end
tokens = math.min(capacity, tokens + math.max(0, now - at) * rate)
local wait = 0
if tokens >= 1 then tokens = tokens - 1 else wait = (1 - tokens) / rate end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil((capacity - tokens) / rate * 1000) + 1000)
return tostring(wait)
"""


class SharedBuckets:
    """The buckets of one ``namespace`` (``chat``); calls are reported to the link as ``rate_limit``."""

    def __init__(self, link: RedisLink, namespace: str) -> None:
        self._link = link
        self._prefix = f"gatehouse:ratelimit:{namespace}:"
        self._take = link.client.register_script(_TAKE)

    async def take(self, name: str, capacity: float, per_second: float) -> float | Unavailable | None:
        """Spend one token of ``name``'s bucket (``capacity`` tokens, refilled at ``per_second``):
        None when spent, else the seconds until one is there; `UNAVAILABLE` without Redis."""
        key = self._prefix + hashlib.sha256(name.encode()).hexdigest()[:32]  # a user id is never a key
        answer = await self._link.run("rate_limit", lambda _: self._take(keys=[key], args=[capacity, per_second]))
        if answer is UNAVAILABLE:
            return UNAVAILABLE
        wait = float(answer)
        return wait if wait > 0 else None
