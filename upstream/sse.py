"""Server-Sent Events framing, just enough to relay whole events.

The relay passes SSE bytes through unaltered, but only up to the last complete event in what
it has read: a read may end halfway through an event, and anything the gateway itself adds
(a heartbeat comment, a final ``error`` event) must land between events, never inside one.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

__all__ = ["EventBuffer", "comment", "error_event", "is_event_stream", "parse_events"]

# An event ends at a blank line: two line ends in a row (RFC: CRLF, LF or CR).
_BOUNDARIES = (b"\n\n", b"\r\n\r\n", b"\r\r")
MAX_PENDING_EVENT_BYTES = 1024 * 1024


def is_event_stream(content_type: str | None) -> bool:
    return content_type is not None and content_type.split(";", 1)[0].strip().lower() == "text/event-stream"


def comment(text: str) -> bytes:
    return f": {text}\n\n".encode()


def error_event(code: str, message: str) -> bytes:
    data = json.dumps({"error": code, "message": message}, separators=(", ", ": "))
    return f"event: error\ndata: {data}\n\n".encode()


_LINE_END = re.compile(rb"\r\n|\r|\n")


def parse_events(data: bytes) -> Iterator[tuple[str, str]]:
    """``(event type, data)`` for each complete event in ``data``, as the SSE spec dispatches
    them: comments skipped, ``data`` lines joined with newlines, the type ``message`` unless an
    ``event`` line names one. For reading a stream the relay passes on, never for rewriting it."""
    event, lines = "", list[str]()
    for line in _LINE_END.split(data):
        if not line:  # a blank line ends an event
            if lines or event:
                yield event or "message", "\n".join(lines)
            event, lines = "", list[str]()
            continue
        if line.startswith(b":"):
            continue
        name, _, value = line.partition(b":")
        value = value[1:] if value.startswith(b" ") else value
        if name == b"event":
            event = value.decode("utf-8", "replace")
        elif name == b"data":
            lines.append(value.decode("utf-8", "replace"))


def _end_of_last_event(data: bytes, start: int = 0) -> int:
    end = 0
    for boundary in _BOUNDARIES:
        found = data.rfind(boundary, start)
        if found >= 0:
            end = max(end, found + len(boundary))
    return end


class EventBuffer:
    """Splits an SSE byte stream into "complete events so far" and a held-back partial tail.

    `at_boundary` says whether everything handed out so far ended at an event boundary, so
    the client is between events (a held-back tail has not been seen by it). A tail that grows
    past ``max_pending`` (an upstream that never ends its event) is let through rather than
    buffered without bound; `at_boundary` is then false until the next event ends.
    """

    __slots__ = ("_max_pending", "_pending", "at_boundary")

    def __init__(self, max_pending: int = MAX_PENDING_EVENT_BYTES) -> None:
        self._pending = b""
        self._max_pending = max_pending
        self.at_boundary = True

    def feed(self, chunk: bytes) -> bytes:
        """The bytes that may be sent now: whole events, in order, exactly as received."""
        data = self._pending + chunk if self._pending else chunk
        # The held-back tail has no boundary; one can only end in the new bytes (or straddle in).
        end = _end_of_last_event(data, max(0, len(self._pending) - 3))
        if end == 0:
            if len(data) > self._max_pending:
                self._pending, self.at_boundary = b"", False
                return data
            self._pending = data
            return b""
        self._pending, self.at_boundary = data[end:], True
        return data[:end] if end < len(data) else data

    def drain(self) -> bytes:
        """What is left at the end of a clean stream: sent as is, never dropped."""
        rest, self._pending = self._pending, b""
        return rest
