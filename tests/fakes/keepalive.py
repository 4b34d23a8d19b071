"""A keep-alive HTTP/1.1 upstream whose every answer is scripted, for the connection pool.

Each connection gets a number; each request (head, plus a ``Content-Length`` body) is recorded
with the number of the connection it came on. ``answer(request)`` returns what to do: the bytes
to send and whether to close afterwards (or to close without answering, as an upstream whose
idle timeout fires just as the request arrives does).
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable

from tests.fakes.loopback import LoopbackServer

__all__ = ["Answer", "KeepAliveUpstream", "Seen", "ok"]


@dataclasses.dataclass(frozen=True)
class Seen:
    connection: int
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    lines: tuple[str, ...] = ()  # the head's header lines, as sent


@dataclasses.dataclass(frozen=True)
class Answer:
    data: bytes = b""  # written as is
    delay: float = 0.0  # seconds before writing it
    close: bool = False  # close the connection after writing
    close_after: float | None = None  # close the connection this long after answering, if idle


def ok(body: bytes, *extra_headers: str, version: str = "HTTP/1.1") -> bytes:
    head = [f"{version} 200 OK", "Content-Type: application/json", f"Content-Length: {len(body)}", *extra_headers]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


class KeepAliveUpstream(LoopbackServer):
    def __init__(self, answer: Callable[[Seen], Answer]) -> None:
        self.answer = answer
        self.seen: list[Seen] = []
        self.connections = 0
        self.closed_connections = 0
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def open_connections(self) -> int:
        return self.connections - self.closed_connections

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        number = self.connections
        self._writers.add(writer)
        idle_close: asyncio.TimerHandle | None = None
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                if idle_close is not None:
                    idle_close.cancel()
                lines = head.decode("latin-1").split("\r\n")
                method, path, _ = lines[0].split(" ", 2)
                headers = {
                    k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)
                }
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                seen = Seen(number, method, path, headers, body, tuple(line for line in lines[1:] if line))
                self.seen.append(seen)
                answer = self.answer(seen)
                if answer.delay:
                    await asyncio.sleep(answer.delay)
                writer.write(answer.data)
                await writer.drain()
                if answer.close:
                    return
                if answer.close_after is not None:
                    idle_close = asyncio.get_running_loop().call_later(answer.close_after, writer.close)
        finally:
            self.closed_connections += 1
            self._writers.discard(writer)
            writer.close()

    async def close(self) -> None:
        for writer in list(self._writers):
            writer.close()
        await super().close()
