"""A scripted TCP upstream, for what a well-behaved HTTP server never does.

Each connection's request head is read and recorded, then ``script(reader, writer)`` runs
while the server watches for the gateway closing its side; `RawUpstream.closed_at` holds
the loop time of each close, so tests can measure how fast an abort reaches the upstream.
Scripts can answer half a response, reset the connection, or go silent.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import Awaitable, Callable

from tests.fakes.loopback import LoopbackServer

__all__ = ["RawUpstream", "reset"]

Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def reset(writer: asyncio.StreamWriter) -> None:
    """Close with RST instead of FIN (SO_LINGER 0), as a crashed peer or a middlebox would."""
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class RawUpstream(LoopbackServer):
    def __init__(self, script: Script | None = None) -> None:
        self.script = script
        self.connections = 0
        self.heads: list[bytes] = []
        self.closed_at: list[float] = []
        self.bytes_after_head = 0
        self.connected = asyncio.Event()
        self.closed = asyncio.Event()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.connected.set()
        loop = asyncio.get_running_loop()
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            self.closed_at.append(loop.time())
            self.closed.set()
            return
        self.heads.append(head)
        task = asyncio.ensure_future(self.script(reader, writer)) if self.script else None
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                self.bytes_after_head += len(data)
        except ConnectionError:
            pass
        self.closed_at.append(loop.time())
        self.closed.set()
        if task is not None:
            task.cancel()
        writer.close()
