"""`BufferedBody`: a request body held whole in memory, bounded in size and in time.

A route that reads its body whole (JSON to validate, credentials, or a body it takes none of but
must still drain) holds at most ``limit`` bytes, and only while the body keeps arriving: with no
new byte for ``idle_timeout`` seconds it calls ``on_stall`` once, so a client that stops sending
cannot hold the buffer and its connection for as long as it keeps the socket open.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

__all__ = ["BufferedBody"]


class BufferedBody:
    def __init__(self, limit: int, idle_timeout: float, on_stall: Callable[[], None]) -> None:
        self.limit = limit
        self._chunks = bytearray()
        self._idle_timeout = idle_timeout
        self._on_stall = on_stall
        self._loop = asyncio.get_running_loop()
        self._progress = self._loop.time()
        self._timer: asyncio.TimerHandle | None = self._loop.call_at(self._progress + idle_timeout, self._check)

    def add(self, chunk: bytes) -> bool:
        """Hold ``chunk``; False (and nothing held any more) once the body passes ``limit``."""
        if len(self._chunks) + len(chunk) > self.limit:
            self.close()
            return False
        self._chunks += chunk
        self._progress = self._loop.time()
        return True

    def arrived(self) -> None:
        """The body is complete: it is no longer watched (it is still held for `take`)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def take(self) -> bytes:
        """The whole body; the buffer is released and the watch ends."""
        body = bytes(self._chunks)
        self.close()
        return body

    def close(self) -> None:
        self._chunks = bytearray()
        self.arrived()

    def _check(self) -> None:
        # One timer per body, re-armed from the last progress, not one per chunk.
        due = self._progress + self._idle_timeout
        if self._loop.time() < due:
            self._timer = self._loop.call_at(due, self._check)
            return
        self.close()
        self._on_stall()
