"""`Exposition`: the metrics as a scraper reads them, in Prometheus' text format.

One process (``WORKERS=1``): the figures of its in-memory registry, rendered on the event loop
(no I/O). Several: any worker answers a scrape with the sum over every worker, live or dead
(``ops/metrics_files.py``), from a fresh ``CollectorRegistry`` with a ``MultiProcessCollector``
built for each scrape (one kept would cache nothing useful and hold stale state); reading the
files is file I/O, so it runs off the event loop, in the loop's default executor. A worker's
file caught at the instant it is created (empty, before ``prometheus_client`` has sized it: a
replacement worker starting) fails ``prometheus_client``'s read; the read is tried again, for
`RETRY_FOR` seconds at most (the file is whole microseconds later, unless its process was
descheduled in between).

The format follows the scraper's ``Accept`` header, as ``prometheus_client`` negotiates it: the
text format 0.0.4 by default, OpenMetrics when asked for.
"""

from __future__ import annotations

import asyncio
import struct
import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder
from prometheus_client.multiprocess import MultiProcessCollector

from ops import metrics_files

__all__ = ["RETRY_FOR", "Exposition"]

RETRY_FOR = 1.0  # seconds a scrape that met a file being created tries again before it fails
_RETRY_EVERY = 0.005


class Exposition:
    def __init__(self, registry: CollectorRegistry | None = None, directory: str | None = None) -> None:
        """Render ``registry`` (one process), or the files in ``directory`` (workers)."""
        if (registry is None) == (directory is None):
            raise ValueError("an exposition renders a registry or a directory, one of them")
        self._registry = registry
        self._directory = directory

    async def render(self, accept: str) -> tuple[bytes, str]:
        """The body and its ``Content-Type``, for a scraper that sent ``accept``."""
        if self._directory is None:
            return self._render(accept)
        return await asyncio.get_running_loop().run_in_executor(None, self._render, accept)

    def _render(self, accept: str) -> tuple[bytes, str]:
        encoder, content_type = choose_encoder(accept)
        if self._registry is not None:
            return encoder(self._registry), content_type
        assert self._directory is not None
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=self._directory)  # type: ignore[no-untyped-call]
        deadline = time.monotonic() + RETRY_FOR
        while True:
            try:
                return self._read(registry, encoder), content_type
            except struct.error:  # an empty file: its process is creating it right now
                if time.monotonic() >= deadline:
                    raise
            time.sleep(_RETRY_EVERY)  # on a thread of the executor, never the event loop

    def _read(self, registry: CollectorRegistry, encoder: Callable[[CollectorRegistry], bytes]) -> bytes:
        assert self._directory is not None
        with metrics_files.reading(self._directory):
            return encoder(registry)
