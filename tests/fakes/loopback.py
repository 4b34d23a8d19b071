"""`LoopbackServer`: the part every scripted TCP fake shares (a port, start, url, close)."""

from __future__ import annotations

import asyncio
from typing import Self

__all__ = ["LoopbackServer"]


class LoopbackServer:
    """A TCP server on a free 127.0.0.1 port; subclasses serve each connection in `_serve`."""

    port = 0
    _server: asyncio.Server | None = None

    async def start(self) -> Self:
        # A backlog for tests that open a thousand connections at once.
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, backlog=4096)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raise NotImplementedError
