"""Idle keep-alive connections to the upstreams, for the next request to the same origin.

Opening a TCP (and TLS) connection per request is most of the cost of a small JSON request on
both ends, so `ConnectionPool` keeps the connections of cleanly finished exchanges and hands
them to later ones. The contract:

* Only a connection `Http1Connection.reusable` calls reusable is kept: its last exchange was
  HTTP/1.1, framed by length or chunking on both sides, read to its end with nothing after
  it, and neither side asked to close. Anything else (an abort, a reset, a close-delimited
  body, stray bytes) is closed.
* At most ``max_idle`` idle connections per origin, each closed after ``idle_seconds`` idle
  (one timer sweeps them all); the most recently used one is taken first, so a burst's extra
  connections age out.
* An idle connection keeps reading: one the upstream closes (or writes to) while idle stops
  being reusable at once, and is skipped and closed when next looked at.
* Only requests that are safe to send twice reuse a connection (the client decides:
  ``upstream/client.py``), because an upstream may close an idle connection at the very moment
  a request goes out on it; those are retried once on a fresh connection.
"""

from __future__ import annotations

import asyncio
import collections

from upstream.http1 import Http1Connection

__all__ = ["ConnectionPool", "Origin"]

Origin = tuple[str, int, bool]  # host, port, TLS


class ConnectionPool:
    def __init__(self, max_idle: int, idle_seconds: float) -> None:
        self.max_idle = max_idle
        self.idle_seconds = idle_seconds
        self._idle: dict[Origin, collections.deque[tuple[float, Http1Connection]]] = {}
        self._sweeper: asyncio.TimerHandle | None = None

    def take(self, origin: Origin) -> Http1Connection | None:
        """An idle connection to ``origin`` that is still reusable, or None."""
        idle = self._idle.get(origin)
        if not idle:
            return None
        deadline = asyncio.get_running_loop().time() - self.idle_seconds
        while idle:
            since, connection = idle.pop()
            if since >= deadline and connection.reusable:
                return connection
            connection.close()
        return None

    def give(self, origin: Origin, connection: Http1Connection) -> None:
        """Keep ``connection`` for a later request, if it is reusable; else close it."""
        if self.max_idle <= 0 or not connection.reusable:
            connection.close()
            return
        idle = self._idle.get(origin)
        if idle is None:
            idle = self._idle[origin] = collections.deque()
        now = asyncio.get_running_loop().time()
        while idle and (len(idle) >= self.max_idle or idle[0][0] < now - self.idle_seconds):
            idle.popleft()[1].close()
        idle.append((now, connection))
        if self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().call_later(self.idle_seconds, self._sweep)

    def _sweep(self) -> None:
        """Close the connections idle for too long; while any are left, look again later."""
        self._sweeper = None
        loop = asyncio.get_running_loop()
        deadline = loop.time() - self.idle_seconds
        oldest: float | None = None
        for origin, idle in list(self._idle.items()):
            keep: collections.deque[tuple[float, Http1Connection]] = collections.deque()
            for since, connection in idle:
                if since > deadline and connection.reusable:
                    keep.append((since, connection))
                else:
                    connection.close()
            if keep:
                self._idle[origin] = keep
                oldest = keep[0][0] if oldest is None else min(oldest, keep[0][0])
            else:
                del self._idle[origin]
        if oldest is not None:
            self._sweeper = loop.call_at(oldest + self.idle_seconds, self._sweep)

    def idle_count(self) -> int:
        """Idle connections that are still reusable."""
        return sum(1 for idle in self._idle.values() for _, connection in idle if connection.reusable)

    def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for idle in self._idle.values():
            for _, connection in idle:
                connection.close()
        self._idle.clear()
