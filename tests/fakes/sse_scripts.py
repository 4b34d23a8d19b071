"""Building blocks for `RawUpstream` scripts and a raw-socket browser, for the relay tests.

* `sse_head` / `octet_head` / `chunk`: response bytes exactly as an upstream would write them.
* `RawClient`: one HTTP/1.1 request on a raw asyncio socket, with the response read piece by
  piece and every piece timestamped with the loop's clock (the same clock `RawUpstream` uses),
  so tests can see *when* bytes arrive, read slowly, and hang up at a chosen moment.
"""

from __future__ import annotations

import asyncio
import gc
import socket
from collections.abc import Iterable
from typing import Any

__all__ = ["RawClient", "chunk", "finish_leftover_tasks", "octet_head", "sse_head"]


def finish_leftover_tasks(io_loop: Any) -> None:
    """Teardown: cancel and await the tasks a (failed) test left on its loop.

    Otherwise they are destroyed pending whenever the garbage collector finds them, and their
    "Task was destroyed" log calls can land inside a later ``ast.parse`` (pytest's own error
    reporting), which CPython 3.11 turns into ``SystemError: AST constructor recursion depth
    mismatch``: a failure would then be reported as an INTERNALERROR.
    """

    async def finish() -> None:
        tasks = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.wait(tasks, timeout=2) if tasks else None

    io_loop.run_sync(finish)
    gc.collect()


def sse_head(*, chunked: bool = False, extra: Iterable[str] = ()) -> bytes:
    """A 200 ``text/event-stream`` head: chunked, or delimited by the connection's close."""
    lines = ["HTTP/1.1 200 OK", "Content-Type: text/event-stream", "Cache-Control: no-cache", *extra]
    lines.append("Transfer-Encoding: chunked" if chunked else "Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def octet_head(content_length: int) -> bytes:
    return (
        "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
        f"Content-Length: {content_length}\r\nConnection: close\r\n\r\n"
    ).encode()


def chunk(data: bytes) -> bytes:
    """``data`` as one HTTP/1.1 chunk."""
    return b"%x\r\n%s\r\n" % (len(data), data)


class ConnectionCut(Exception):
    """The gateway closed the connection before the response was complete."""


class RawClient:
    """A browser on a raw socket. `open` sends the request; read with the ``read_*`` methods.

    ``pieces`` holds ``(loop time, bytes)`` for every body piece received (one HTTP chunk each
    for chunked responses), ``ended_cleanly`` tells whether the terminating ``0`` chunk (or the
    full Content-Length) arrived, ``cut`` whether the gateway closed the connection first.
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.loop = asyncio.get_running_loop()
        self.status = 0
        self.headers: dict[str, str] = {}
        self.head_at = 0.0
        self.pieces: list[tuple[float, bytes]] = []
        self.ended_cleanly = False
        self.cut = False
        self.closed_at = 0.0

    @classmethod
    async def open(
        cls,
        port: int,
        path: str,
        cookie: str,
        *,
        method: str = "GET",
        headers: Iterable[str] = (),
        rcvbuf: int | None = None,
        reader_limit: int = 2**16,
    ) -> RawClient:
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        if rcvbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        await loop.sock_connect(sock, ("127.0.0.1", port))
        reader, writer = await asyncio.open_connection(sock=sock, limit=reader_limit)
        client = cls(reader, writer)
        lines = [f"{method} {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", f"Cookie: {cookie}", *headers]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        await writer.drain()
        return client

    # -- reading ---------------------------------------------------------------------------

    async def read_head(self) -> None:
        raw = await self.reader.readuntil(b"\r\n\r\n")
        self.head_at = self.loop.time()
        status_line, *header_lines = raw.decode("latin1").split("\r\n")
        self.status = int(status_line.split(" ", 2)[1])
        for line in header_lines:
            if line:
                name, _, value = line.partition(":")
                self.headers[name.strip().lower()] = value.strip()

    @property
    def chunked(self) -> bool:
        return self.headers.get("transfer-encoding", "").lower() == "chunked"

    async def read_piece(self) -> bytes | None:
        """The next chunk of a chunked body, or ``None`` after the terminating chunk.

        Raises `ConnectionCut` (and sets ``cut``) if the connection closes first.
        """
        try:
            size_line = await self.reader.readuntil(b"\r\n")
            size = int(size_line[:-2].split(b";")[0], 16)
            if size == 0:
                await self.reader.readexactly(2)
                self.ended_cleanly = True
                return None
            data = await self.reader.readexactly(size + 2)
        except (asyncio.IncompleteReadError, ConnectionError) as exc:
            self.cut = True
            raise ConnectionCut() from exc
        self.pieces.append((self.loop.time(), data[:-2]))
        return data[:-2]

    async def read_to_end(self) -> None:
        """Read the whole chunked body into ``pieces``; a cut connection is recorded, not raised."""
        try:
            while await self.read_piece() is not None:
                pass
        except ConnectionCut:
            pass

    async def count_body(self, read_size: int = 1 << 20) -> int:
        """Read a Content-Length or close-delimited body, counting bytes without keeping them."""
        expected = int(self.headers["content-length"]) if "content-length" in self.headers else None
        received = 0
        while expected is None or received < expected:
            try:
                data = await self.reader.read(read_size if expected is None else min(read_size, expected - received))
            except ConnectionError:
                data = b""
            if not data:
                self.cut = expected is not None
                return received
            received += len(data)
        self.ended_cleanly = True
        return received

    @property
    def body(self) -> bytes:
        return b"".join(data for _, data in self.pieces)

    # -- hanging up ------------------------------------------------------------------------

    def close(self) -> float:
        """Hang up (FIN) now; returns the loop time of the hang-up."""
        self.closed_at = self.loop.time()
        self.writer.close()
        return self.closed_at
