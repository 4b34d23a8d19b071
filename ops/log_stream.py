"""The log's output: each line written as it is logged, the stream flushed once per loop turn.

`logging.StreamHandler` flushes after every record: with the access line, a ``write`` system
call per request (about a thirtieth of a proxied JSON request's cost in scenario A). Here a
record is written to the stream's buffer at once, and the flush is left to the end of the
current event-loop turn, so a turn that finishes 50 requests writes its 50 lines in one call.

A line waits no longer than its turn: one logged outside a running loop (start-up, another
thread, the supervisor) is flushed at once, `close` flushes, and a worker flushes ``stdout``
before it exits (``ops/supervisor.py``). A warning or an error is flushed at once too: those
are the lines an operator needs after a ``SIGKILL``, which would lose a buffered turn.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TextIO

__all__ = ["TurnFlushedStreamHandler"]


class TurnFlushedStreamHandler(logging.StreamHandler[TextIO]):
    def __init__(self, stream: TextIO) -> None:
        super().__init__(stream)
        self._flush_on: asyncio.AbstractEventLoop | None = None  # the loop a flush is scheduled on

    def emit(self, record: logging.LogRecord) -> None:
        super().emit(record)  # writes, then calls flush()
        if record.levelno >= logging.WARNING:
            super().flush()

    def flush(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop in this thread: nothing would run a later flush
            super().flush()
            return
        # Scheduled already on this loop: that flush takes this line too. (A loop that stopped
        # before its flush ran leaves a stale mark: another loop schedules its own.)
        if self._flush_on is not loop:
            self._flush_on = loop
            loop.call_soon(self._flush_now)

    def _flush_now(self) -> None:
        self._flush_on = None
        super().flush()

    def close(self) -> None:
        super().flush()
        super().close()
