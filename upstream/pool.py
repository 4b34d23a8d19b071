"""Idle keep-alive connections to the upstreams, for the next request to the same origin.

Tornado's simple client opens a new TCP (and TLS) connection per request and closes it after
the response. For small JSON requests that connection is most of the cost on both ends, so
`ConnectionPool` keeps the streams of cleanly finished exchanges and hands them to later ones.
The contract:

* Only a response that left its connection reusable is kept: HTTP/1.1, no ``Connection:
  close``, its body delimited by length or chunking and read to the end, nothing more sent
  after it. Anything else (an abort, a reset, a close-delimited body) closes the socket.
* At most ``max_idle`` idle connections per origin, each for at most ``idle_seconds``; the
  most recently used one is taken first, so a burst's extra connections age out.
* A taken connection is checked first: one the upstream closed (or wrote to) while idle is
  dropped and the next one tried.
* Only requests that are safe to send twice reuse a connection (``GET``, ``HEAD``,
  ``OPTIONS`` without a body), because an upstream may close an idle connection at the very
  moment a request goes out on it; the client retries those once on a fresh connection
  (``upstream/client.py``). Other requests always connect afresh, and give their connection
  to the pool afterwards.
"""

from __future__ import annotations

import collections
import errno
import socket
from typing import Any

from tornado.ioloop import IOLoop
from tornado.iostream import IOStream, SSLIOStream
from tornado.tcpclient import TCPClient

__all__ = ["ConnectionPool", "Origin", "PooledConnector"]

Origin = tuple[str, int, bool]  # host, port, TLS


class ConnectionPool:
    def __init__(self, max_idle: int, idle_seconds: float) -> None:
        self.max_idle = max_idle
        self.idle_seconds = idle_seconds
        self._idle: dict[Origin, collections.deque[tuple[float, IOStream]]] = {}

    def take(self, origin: Origin) -> IOStream | None:
        """An idle connection to ``origin`` that is still open, or None."""
        idle = self._idle.get(origin)
        if not idle:
            return None
        deadline = IOLoop.current().time() - self.idle_seconds
        while idle:
            since, stream = idle.pop()
            if since >= deadline and _still_open(stream):
                return stream
            stream.close()
        return None

    def give(self, origin: Origin, stream: IOStream) -> None:
        """Keep ``stream``, whose last exchange ended cleanly, for a later request."""
        if self.max_idle <= 0 or stream.closed():
            stream.close()
            return
        idle = self._idle.setdefault(origin, collections.deque())
        now = IOLoop.current().time()
        while idle and (len(idle) >= self.max_idle or idle[0][0] < now - self.idle_seconds):
            idle.popleft()[1].close()
        idle.append((now, stream))

    def idle_count(self, origin: Origin | None = None) -> int:
        if origin is not None:
            return len(self._idle.get(origin, ()))
        return sum(len(idle) for idle in self._idle.values())

    def close(self) -> None:
        for idle in self._idle.values():
            for _, stream in idle:
                stream.close()
        self._idle.clear()


def _still_open(stream: IOStream) -> bool:
    """Not closed, nothing unread, and (for plain TCP) no FIN or bytes waiting in the kernel.
    Idle streams keep a read handler, so most closes are seen before this; the peek covers one
    that arrived since the loop last polled."""
    if stream.closed() or stream._read_buffer_size:  # bytes nobody asked for: out of step
        return False
    if isinstance(stream, SSLIOStream):
        return True  # TLS records cannot be peeked; a failure is retried instead
    try:
        return not stream.socket.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except BlockingIOError:
        return True  # nothing to read: open and quiet
    except OSError as exc:
        return exc.errno in (errno.EAGAIN, errno.EWOULDBLOCK)


class PooledConnector:
    """Stands in for the `TCPClient` of one `_HTTPConnection`: takes a pooled stream when the
    request may reuse one, else connects; remembers the origin and which of the two it did."""

    def __init__(self, pool: ConnectionPool, tcp_client: TCPClient, reuse: bool) -> None:
        self.pool = pool
        self._tcp_client = tcp_client
        self._reuse = reuse
        self.origin: Origin | None = None
        self.reused = False

    async def connect(self, host: str, port: int, **kwargs: Any) -> IOStream:
        self.origin = (host, port, kwargs.get("ssl_options") is not None)
        if self._reuse:
            stream = self.pool.take(self.origin)
            if stream is not None:
                self.reused = True
                return stream
        return await self._tcp_client.connect(host, port, **kwargs)

    def give_back(self, stream: IOStream) -> None:
        if self.origin is None:
            stream.close()
        else:
            self.pool.give(self.origin, stream)
