"""The link to Redis: one client per process, every call bounded, no error ever reaching a request.

The contract:

* **Bounded.** Every call ends within ``timeout`` (``REDIS_TIMEOUT``) seconds: the client's
  socket and connect timeouts are set to it, and the call runs under an asyncio timeout of the
  same length, which also bounds the wait for a pooled connection and redis-py's one retry.
  That retry is made at once and only on a dropped connection (a pooled connection that a
  restarted Redis closed: a new one answers), never on a timeout.
* **Never raises.** A call that fails (refused, reset, timed out, an error reply) returns
  `UNAVAILABLE`, and the caller falls back to its per-process behaviour for that call.
* **Back-off, on an outage only.** A call that gets no answer (refused, reset, timed out) makes
  the link ``unavailable``: calls return `UNAVAILABLE` at once, without touching the network, so
  a dead or hung Redis costs a request nothing. A call made with ``always=True`` (a lock's
  renewal or release, whose loss costs more than one wait) is tried even then, still bounded.
  A watcher task pings Redis every ``check_interval`` seconds, whatever the traffic: the first
  answer makes the link ``ok`` again and sharing resumes by itself. It also notices an outage
  when no request does, so `RedisLink.status` (for ``/readyz``) is never more than one interval
  stale. The watcher outlives any error, expected or not.
* **An error reply is not an outage.** Redis that answers with an error (``OOM`` at
  ``maxmemory``, ``READONLY`` on a replica after a failover, ``NOPERM``) is up: that call falls
  back, the link stays ``ok``, and the next call tries Redis again. (``NOSCRIPT`` never gets
  here: redis-py loads the script and runs it again.)
* **Quiet logs.** One warning when Redis becomes unavailable and one line when it is back; for
  error replies, one warning per operation a minute at most (with how many there were). Never one
  per request. A log line names the operation and the error's type, never its message, and never
  the URL, which may hold a password.
* **Counted.** `RedisLink.on_error` is called with the operation's name (a fixed, bounded set:
  ``refresh_lock``, ``refresh_result``, ``rate_limit``, ``ping``) for every operation Redis did
  not serve: each failed call, each error reply, each call skipped during the back-off, and each
  failed health check. It does nothing until the metrics connect it.
* **Closed cleanly.** `run_detached` runs a call in a task of its own, which a cancelled caller
  does not stop; `close` waits for those (each is bounded) before it closes the connections, and
  any call after `close` returns `UNAVAILABLE` without opening a connection again.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Literal, TypeVar

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as DroppedConnection
from redis.exceptions import RedisError, ResponseError

__all__ = ["UNAVAILABLE", "RedisLink", "Status", "Unavailable"]

log = logging.getLogger("gatehouse.redis")

T = TypeVar("T")
Status = Literal["ok", "unavailable"]

CHECK_INTERVAL = 1.0  # seconds between health checks, and so the longest back-off after a failure
MAX_CONNECTIONS = 64  # per process; a call waits (within its timeout) for a free one beyond that
REPLY_LOG_INTERVAL = 60.0  # seconds between two warnings about error replies to one operation


class Unavailable(enum.Enum):
    """The type of `UNAVAILABLE`: Redis did not serve the call; use the per-process state instead."""

    UNAVAILABLE = "unavailable"


UNAVAILABLE = Unavailable.UNAVAILABLE


def _ignore(op: str) -> None:
    pass


class RedisLink:
    """One process's client for ``url``; see the module docstring for the contract.

    The watcher starts with the first call, or at once when built inside a running event loop;
    `close` stops it and closes the connections.
    """

    def __init__(self, url: str, timeout: float, *, check_interval: float = CHECK_INTERVAL) -> None:
        pool = BlockingConnectionPool.from_url(
            url,
            max_connections=MAX_CONNECTIONS,
            timeout=timeout,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            # Once, on a dropped connection only: the back-off below deals with a Redis that is down.
            retry=Retry(NoBackoff(), 1, supported_errors=(DroppedConnection,)),
        )
        self.client: Redis = Redis.from_pool(pool)
        self.on_error: Callable[[str], None] = _ignore
        self.timeout = timeout
        self._interval = check_interval
        self._down_since: float | None = None  # monotonic; None while Redis answers
        self._replies: dict[str, tuple[float, int]] = {}  # op -> (last warning, error replies since)
        self._faults_logged: set[str] = set()  # unexpected errors in the watcher, by type
        self._detached: set[asyncio.Task[Any]] = set()  # kept referenced until they end
        self._watcher: asyncio.Task[None] | None = None
        self._closed = False
        self._start_watcher()

    @property
    def status(self) -> Status:
        """``ok`` while Redis answers, ``unavailable`` from a failure until the next good answer."""
        self._start_watcher()
        return "ok" if self._down_since is None else "unavailable"

    async def run(self, op: str, command: Callable[[Redis], Awaitable[T]], *, always: bool = False) -> T | Unavailable:
        """``command(client)``'s result, or `UNAVAILABLE` (at once during the back-off unless
        ``always``, else after at most ``timeout`` seconds). ``op`` names the operation for logs
        and `on_error`."""
        if self._closed:
            return UNAVAILABLE
        self._start_watcher()
        if self._down_since is not None and not always:
            self.on_error(op)
            return UNAVAILABLE
        try:
            async with asyncio.timeout(self.timeout):
                return await command(self.client)
        except ResponseError as exc:
            self._error_reply(op, exc)
        except (RedisError, OSError) as exc:  # OSError covers TimeoutError and TLS errors
            self._went_down(op, exc)
        self.on_error(op)
        return UNAVAILABLE

    def run_detached(
        self, op: str, command: Callable[[Redis], Awaitable[T]], *, always: bool = False
    ) -> asyncio.Task[T | Unavailable]:
        """`run` in a task of its own, which runs to its end (within ``timeout``) whoever stops
        waiting for it; `close` waits for it."""
        task = asyncio.ensure_future(self.run(op, command, always=always))
        self._detached.add(task)
        task.add_done_callback(self._detached.discard)
        return task

    async def wait_detached(self) -> None:
        """Until every call `run_detached` started has ended (each within ``timeout``)."""
        while self._detached:
            await asyncio.wait(set(self._detached))

    async def close(self) -> None:
        """Let the detached calls end, then stop the watcher and close the connections; any
        call after this returns `UNAVAILABLE` at once."""
        try:
            async with asyncio.timeout(self.timeout + 0.1):  # each ends within timeout; the lease covers a cut one
                await self.wait_detached()
        except TimeoutError:
            pass
        self._closed = True
        for task in [*self._detached, *([self._watcher] if self._watcher is not None else [])]:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.client.aclose()

    def _start_watcher(self) -> None:
        if self._watcher is not None or self._closed:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # built outside the event loop: the first call starts it
            return
        self._watcher = loop.create_task(self._watch())

    async def _watch(self) -> None:
        while True:
            try:
                await self._check()
            except Exception as exc:  # an ended watcher would leave a down link down for good
                self._watch_fault(exc)
            await asyncio.sleep(self._interval)

    async def _check(self) -> None:
        try:
            async with asyncio.timeout(self.timeout):
                await self.client.ping()
        except ResponseError as exc:  # an answer all the same: Redis is up
            self._error_reply("ping", exc)
            self.on_error("ping")
            self._came_back()
        except (RedisError, OSError) as exc:
            self._went_down("ping", exc)
            self.on_error("ping")
        else:
            self._came_back()

    def _watch_fault(self, exc: Exception) -> None:
        """An error no check expects: the check counts as failed (the per-process fallback is
        always safe), logged once per type of error; the checks go on."""
        self._went_down("ping", exc)
        kind = type(exc).__name__
        if kind not in self._faults_logged:
            self._faults_logged.add(kind)
            log.error("redis health check failed unexpectedly; checks go on", extra={"op": "ping", "error": kind})

    def _went_down(self, op: str, exc: BaseException) -> None:
        if self._down_since is not None:
            return
        self._down_since = time.monotonic()
        log.warning(
            "redis unavailable: sharing falls back to per-process state until it answers again",
            extra={"op": op, "error": type(exc).__name__},
        )

    def _came_back(self) -> None:
        if self._down_since is None:
            return
        down = time.monotonic() - self._down_since
        self._down_since = None
        log.info("redis available again: sharing resumes", extra={"down_seconds": round(down, 1)})

    def _error_reply(self, op: str, exc: ResponseError) -> None:
        """Redis refused this call (``OOM``, ``READONLY``...): one warning per ``op`` and
        `REPLY_LOG_INTERVAL` at most, with the number of such replies since the last one."""
        now = time.monotonic()
        last, count = self._replies.get(op, (now - REPLY_LOG_INTERVAL, 0))
        count += 1
        if now - last < REPLY_LOG_INTERVAL:
            self._replies[op] = (last, count)
            return
        self._replies[op] = (now, 0)
        log.warning(
            "redis answered with an error: these calls fall back to per-process state",
            extra={"op": op, "error": type(exc).__name__, "replies": count},
        )
