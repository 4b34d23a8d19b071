"""Carrying a request body from the browser to the upstream as it arrives.

`BodyPipe` connects Tornado's ``data_received`` (producer side) to an ``HTTPRequest``
``body_producer`` (consumer side) through a small bounded queue. Flow control holds both
ways: a full queue makes ``feed`` return an awaitable, which Tornado awaits before reading
more from the browser; the consumer awaits each upstream socket write before taking the
next chunk. About ``max_chunks`` reads (64 KiB each by default) are in memory per upload: the
queue, plus the read waiting for room and the chunk being written.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from tornado.iostream import StreamClosedError

__all__ = ["BodyPipe"]

_END = b""


class BodyPipe:
    def __init__(self, max_chunks: int = 4) -> None:
        self._queue: asyncio.Queue[bytes] = asyncio.Queue(maxsize=max_chunks)
        self._aborted = False
        self._error: BaseException | None = None  # the abort's, until `produce` raises it

    def feed(self, chunk: bytes) -> Awaitable[None] | None:
        """Queue ``chunk``; an awaitable when the queue is full (Tornado waits on it)."""
        if not chunk or self._aborted:
            return None
        try:
            self._queue.put_nowait(chunk)
            return None
        except asyncio.QueueFull:
            return self._queue.put(chunk)

    async def close(self) -> None:
        """The body is complete."""
        if not self._aborted:
            await self._queue.put(_END)

    def abort(self, error: BaseException) -> None:
        """Fail the upload with ``error``; frees any waiting producer."""
        if self._aborted:
            return
        self._aborted = True
        # Held without the traceback it was raised with (if it was): those frames hold the
        # caller (a handler), which holds this pipe, which would hold them: a reference cycle.
        self._error = error.with_traceback(None)
        while not self._queue.empty():
            self._queue.get_nowait()
        self._queue.put_nowait(_END)  # wakes the consumer, which then raises ``error``

    async def produce(self, write: Callable[[bytes], Awaitable[None]]) -> None:
        """The ``body_producer``: write each chunk upstream, waiting for each write."""
        while True:
            chunk = await self._queue.get()
            if self._aborted:
                # Raised, not kept: its traceback will hold this frame, and so this pipe (a
                # reference cycle through the handler that holds the pipe, if the pipe held it).
                error, self._error = self._error, None
                raise error or StreamClosedError()
            if not chunk:
                return
            await write(chunk)
