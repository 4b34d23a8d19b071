"""What the demo upstreams share: a history bounded in bytes, and request handlers whose log lines
name the path only."""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Iterator
from types import TracebackType
from typing import Generic, TypeVar

from tornado.web import HTTPError, RequestHandler

__all__ = ["History", "PathOnlyLogging"]

T = TypeVar("T")


class History(Generic[T]):
    """The newest entries, oldest dropped first, within ``budget`` bytes and ``limit`` entries.

    A count alone does not bound memory: a load test can send large bodies, and parsed JSON takes
    many times its text. Each entry is appended with its size in bytes, which the caller counts
    honestly. The newest entry is always kept, even alone over the budget, so the request just made
    can still be looked at."""

    def __init__(self, budget: int, limit: int) -> None:
        self.budget, self.limit = budget, limit
        self.retained_bytes = 0
        self._entries: deque[tuple[T, int]] = deque()

    def append(self, entry: T, size: int) -> None:
        self._entries.append((entry, size))
        self.retained_bytes += size
        while len(self._entries) > 1 and (len(self._entries) > self.limit or self.retained_bytes > self.budget):
            self.retained_bytes -= self._entries.popleft()[1]

    def remove(self, matches: Callable[[T], bool]) -> bool:
        """Drop the entries ``matches`` accepts; whether there were any."""
        kept = deque(pair for pair in self._entries if not matches(pair[0]))
        removed = len(kept) != len(self._entries)
        self._entries = kept
        self.retained_bytes = sum(size for _, size in kept)
        return removed

    def __iter__(self) -> Iterator[T]:
        return (entry for entry, _ in self._entries)

    def __len__(self) -> int:
        return len(self._entries)


class PathOnlyLogging(RequestHandler):
    """A handler whose failures are logged with the method, path and status only.

    Tornado's own lines quote ``request.uri``, query string included, and its parsers' messages,
    which can quote the body (a multipart part's header line). The README promises that query
    strings and bodies are never logged, and the demo runs in gatehouse's process."""

    def log_exception(
        self, typ: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None
    ) -> None:
        log = logging.getLogger(type(self).__module__)
        method, path = self.request.method, self.request.path
        if isinstance(value, HTTPError):
            if value.log_message:  # Tornado's sign that the refusal deserves a warning
                log.warning("%d %s %s (details withheld: they can quote the request)", value.status_code, method, path)
        else:
            log.error("unhandled error in %s %s", method, path, exc_info=(typ, value, tb))  # type: ignore[arg-type]
