"""Single flight across processes: one holder per secret at a time, the others take its result.

For a secret value (a refresh token), two Redis keys, named by its keyed digest
(`shared.sealed.Sealer.name`, never the value itself) with a hash tag so both live in one slot:

* ``gatehouse:<namespace>:{<digest>}:lock``: the lock, holding its owner's random token, with a
  TTL (the lease);
* ``gatehouse:<namespace>:{<digest>}:result``: what the holder left, sealed
  (`shared.sealed.Sealer.seal`, AES-GCM under the session secret), kept for a given TTL.

`SharedFlight.claim` is one Lua script, one round trip: the result if there is one, else the
lock if it is free, else `BUSY`. Reading the result and taking the lock in one atomic step is
the re-read after acquiring that oauth2-proxy does (a holder stores its result before it lets
go, so a lock taken here means no result was left): a waiter never acts on the stale value
it came with. A `Lease` is the held lock:

* **The lease** is `lease_for` ``REDIS_TIMEOUT``: ``max(2 s, 6 x timeout)``, renewed every third
  of it while held (`Lease.__aenter__` starts the renewal). So a renewal interval plus four
  timeouts fit in one lease: a renewal that stalls for a whole timeout is retried after a twelfth
  of the lease, and that retry still ends before the lock would. Renewals are never skipped by
  the link's back-off (`shared.redis`), only bounded by its timeout: a live holder does not lose
  its lock to one slow answer.
* **Ending.** `Lease.finish` leaves a success: it replaces whatever result is there, and
  releases the lock if it is still the holder's, in one script. `Lease.fail` leaves a failure
  (a rejected refresh) only while the lock is still the holder's and no result is there (SET NX
  in the same script): a holder whose lease lapsed may have been overtaken by one that
  succeeded, and a failure must never hide a success. Leaving the ``async with`` without either
  releases the lock.
* **Only its owner** releases or renews it (compare-and-delete / compare-and-expire in Lua).
  Releases and results run detached (`shared.redis.RedisLink.run_detached`), so a cancelled
  holder never leaves the lock held, and the lease ends it anyway if Redis cannot be reached or
  the process dies.

No redis-py ``Lock`` object is used (lessons-from-peers 18): SET NX PX and owner-checked scripts.
Every call goes through `shared.redis.RedisLink`; `UNAVAILABLE` means the caller falls back.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import secrets
from collections.abc import Awaitable, Callable
from types import TracebackType

from redis.asyncio import Redis

from shared.redis import UNAVAILABLE, RedisLink, Unavailable
from shared.sealed import Sealer

__all__ = ["BUSY", "MIN_LEASE", "Busy", "Found", "Lease", "SharedFlight", "lease_for"]

log = logging.getLogger("gatehouse.redis")

MIN_LEASE = 2.0  # seconds a lock lives unless renewed, at least (see `lease_for`)


def lease_for(timeout: float) -> float:
    """The lease for a link whose calls take up to ``timeout`` s: one renewal interval (a third
    of it) plus four timeouts, and `MIN_LEASE` at least, so a loop that stalls a moment does not
    lose it either."""
    return max(MIN_LEASE, 6 * timeout)


# KEYS: lock, result. ARGV: owner, lease in ms. -> {1, result} | {2} (acquired) | {0} (busy)
_CLAIM = """
local found = redis.call('GET', KEYS[2])
if found then return {1, found} end
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return {2} end
return {0}
"""
# KEYS: lock. ARGV: owner, lease in ms. -> 1 renewed | 0 not ours (any more)
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""
# KEYS: lock, result. ARGV: owner, sealed result, its TTL in ms, '1' (a success) | '0' (a failure).
# A success is stored whoever holds the lock now (it is as true for whoever waits) and replaces
# a failure; a failure only by the lock's owner, and never over a result. -> 1 | 0: was it ours
_FINISH = """
local ours = redis.call('GET', KEYS[1]) == ARGV[1]
if ARGV[4] == '1' then
  redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
elseif ours then
  redis.call('SET', KEYS[2], ARGV[2], 'NX', 'PX', ARGV[3])
end
if ours then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
"""
# KEYS: lock. ARGV: owner.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class Busy(enum.Enum):
    """The type of `BUSY`: another process holds the lock and has left no result yet."""

    BUSY = "busy"


BUSY = Busy.BUSY


class Found:
    """The result the holder left, opened."""

    __slots__ = ("value",)

    def __init__(self, value: bytes) -> None:
        self.value = value


class SharedFlight:
    """Locks and results for one ``namespace`` (``refresh``); names and seals under ``secret``.
    ``lease`` defaults to `lease_for` the link's timeout.

    Operations are reported to the link as ``<namespace>_lock`` (claim, renew, release) and
    ``<namespace>_result`` (finish)."""

    def __init__(self, link: RedisLink, secret: str, namespace: str, lease: float | None = None) -> None:
        self.link = link
        self.lease = lease_for(link.timeout) if lease is None else lease
        self._lease_ms = max(1, round(self.lease * 1000))
        self.renew_every = self.lease / 3
        self.retry_every = self.lease / 12  # after a renewal that got no answer
        self._sealer = Sealer(secret, namespace)
        self._namespace = namespace
        self.lock_op = f"{namespace}_lock"
        self.result_op = f"{namespace}_result"
        self._claim = link.client.register_script(_CLAIM)
        self._renew = link.client.register_script(_RENEW)
        self._finish = link.client.register_script(_FINISH)
        self._release = link.client.register_script(_RELEASE)
        self._warned = False

    def keys(self, secret_value: str) -> tuple[str, str]:
        """The lock's and the result's key names for ``secret_value``."""
        base = f"gatehouse:{self._namespace}:{{{self._sealer.name(secret_value)}}}"
        return f"{base}:lock", f"{base}:result"

    async def claim(self, keys: tuple[str, str]) -> Found | Lease | Busy | Unavailable:
        """The result left under ``keys`` (`keys` of a secret value: named once, however often a
        waiter polls), else its lock if free (a `Lease`, not yet renewing: use it in ``async
        with``), else `BUSY`. `UNAVAILABLE` when Redis does not answer, or when the result does
        not open (not sealed by this secret)."""
        lock, result = keys
        owner = secrets.token_hex(16)
        answer = await self.link.run(
            self.lock_op, lambda _: self._claim(keys=[lock, result], args=[owner, self._lease_ms])
        )
        if answer is UNAVAILABLE:
            return UNAVAILABLE
        if answer[0] == 2:
            return Lease(self, lock, result, owner)
        if answer[0] == 0:
            return BUSY
        opened = self._sealer.open(answer[1], result)
        if opened is None:
            if not self._warned:  # once per process: something other than gatehouse wrote it
                self._warned = True
                log.warning("a shared result did not open: this process refreshes alone", extra={"op": self.result_op})
            return UNAVAILABLE
        return Found(opened)

    async def renew(self, lock: str, owner: str) -> bool | Unavailable:
        """Extend ``owner``'s hold on ``lock`` by one lease; False when it is not (any more)
        theirs. Tried even during the link's back-off."""
        renewed = await self.link.run(
            self.lock_op, lambda _: self._renew(keys=[lock], args=[owner, self._lease_ms]), always=True
        )
        return renewed if renewed is UNAVAILABLE else renewed == 1

    async def finish(self, lock: str, result: str, owner: str, value: bytes, ttl: float, *, success: bool) -> None:
        """Store ``value`` sealed under ``result`` for ``ttl`` seconds (a success: over anything;
        a failure: only while ``owner`` holds ``lock`` and no result is there), and release
        ``lock`` if ``owner`` holds it; in one script, run to its end even if the caller is
        cancelled."""
        sealed = self._sealer.seal(value, result)
        args: list[bytes | str | int] = [owner, sealed, max(1, round(ttl * 1000)), "1" if success else "0"]
        await self._detached(self.result_op, lambda _: self._finish(keys=[lock, result], args=args))

    async def release(self, lock: str, owner: str) -> None:
        """Release ``lock`` if ``owner`` holds it; run to its end even if the caller is cancelled."""
        await self._detached(self.lock_op, lambda _: self._release(keys=[lock], args=[owner]))

    async def _detached(self, op: str, command: Callable[[Redis], Awaitable[object]]) -> None:
        """``command`` in a task of its own, tried even during the back-off: a cancelled caller
        stops waiting, the task still ends (within the link's timeout)."""
        await asyncio.shield(self.link.run_detached(op, command, always=True))


class Lease:
    """A held lock (see the module docstring); ``async with`` keeps it renewed and releases it."""

    def __init__(self, flight: SharedFlight, lock: str, result: str, owner: str) -> None:
        self._flight = flight
        self._lock = lock
        self._result = result
        self._owner = owner
        self._renewal: asyncio.Task[None] | None = None
        self._done = False

    async def __aenter__(self) -> Lease:
        self._renewal = asyncio.ensure_future(self._keep())
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop_renewal()
        if not self._done:
            self._done = True
            await self._flight.release(self._lock, self._owner)

    async def renew(self) -> bool | Unavailable:
        """Extend the hold by one lease now; False when the lock is not (any more) ours."""
        return await self._flight.renew(self._lock, self._owner)

    async def finish(self, value: bytes, ttl: float) -> None:
        """Leave ``value``, a success, for ``ttl`` seconds (over any result there) and release
        the lock, in one step."""
        await self._end(value, ttl, success=True)

    async def fail(self, value: bytes, ttl: float) -> None:
        """Leave ``value``, a failure, for ``ttl`` seconds only if the lock is still ours and no
        result is there, and release the lock, in one step."""
        await self._end(value, ttl, success=False)

    async def _end(self, value: bytes, ttl: float, *, success: bool) -> None:
        self._stop_renewal()
        self._done = True
        await self._flight.finish(self._lock, self._result, self._owner, value, ttl, success=success)

    async def _keep(self) -> None:
        wait = self._flight.renew_every
        while True:
            await asyncio.sleep(wait)
            renewed = await self.renew()
            if renewed is False:
                log.warning("a shared lock expired before its holder finished", extra={"op": self._flight.lock_op})
                return
            wait = self._flight.retry_every if renewed is UNAVAILABLE else self._flight.renew_every

    def _stop_renewal(self) -> None:
        if self._renewal is not None:
            self._renewal.cancel()
            self._renewal = None
