"""A fast benchmark upstream: raw asyncio HTTP/1.1, so the upstream is never the bottleneck.

    python bench/upstream.py --port 9100

Routes (any other path: 404):
* ``GET /sse?events=N&interval=S``: N events of ``data: {"n": i, "sent": <unix time>}``, one
  every S seconds, the first after S seconds (chunked ``text/event-stream``).
* ``GET /json``: a small JSON body echoing the ``Authorization`` header it received.
* ``GET /bytes?size=N``: N zero bytes with Content-Length.

Keep-alive is supported, so peers that pool upstream connections can use it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import time
import urllib.parse

__all__ = ["main"]


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


class _Protocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.buffer = b""
        self.transport: asyncio.Transport | None = None
        self.task: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not an asyncio.Transport

    def connection_lost(self, exc: Exception | None) -> None:
        if self.task is not None:
            self.task.cancel()

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while b"\r\n\r\n" in self.buffer and self.task is None:
            head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
            self.task = asyncio.ensure_future(self.respond(head))

    async def respond(self, head: bytes) -> None:
        assert self.transport is not None
        lines = head.decode("latin-1").split("\r\n")
        _, target, _ = lines[0].split(" ", 2)
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        url = urllib.parse.urlsplit(target)
        query = dict(urllib.parse.parse_qsl(url.query))
        keep_alive = headers.get("connection", "").lower() != "close"
        try:
            if url.path == "/sse":
                await self.sse(int(query.get("events", "30")), float(query.get("interval", "1")))
                keep_alive = False
            elif url.path == "/json":
                body = json.dumps({"ok": True, "authorization": headers.get("authorization")}).encode()
                self.simple(200, b"application/json", body, keep_alive)
            elif url.path == "/bytes":
                self.simple(200, b"application/octet-stream", b"\0" * int(query.get("size", "1024")), keep_alive)
            else:
                self.simple(404, b"application/json", b'{"detail":"not found"}', keep_alive)
        except (ConnectionError, asyncio.CancelledError):
            return
        self.task = None
        if not keep_alive:
            self.transport.close()
        elif b"\r\n\r\n" in self.buffer:
            self.data_received(b"")

    def simple(self, status: int, content_type: bytes, body: bytes, keep_alive: bool) -> None:
        assert self.transport is not None
        self.transport.write(
            b"HTTP/1.1 %d X\r\nContent-Type: %s\r\nContent-Length: %d\r\nConnection: %s\r\n\r\n%s"
            % (status, content_type, len(body), b"keep-alive" if keep_alive else b"close", body)
        )

    async def sse(self, events: int, interval: float) -> None:
        assert self.transport is not None
        self.transport.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n"
            b"Connection: close\r\n\r\n"
        )
        loop = asyncio.get_running_loop()
        start = loop.time()
        for n in range(events):
            await asyncio.sleep(max(0.0, start + (n + 1) * interval - loop.time()))
            self.transport.write(_chunk(b'data: {"n": %d, "sent": %.6f}\n\n' % (n, time.time())))
        self.transport.write(b"0\r\n\r\n")


async def serve(host: str, port: int, protocol: type[asyncio.Protocol] = _Protocol) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(protocol, host, port, backlog=4096)
    print(f"upstream listening on {host}:{port}", flush=True)
    async with server:
        await server.serve_forever()


def main(protocol: type[asyncio.Protocol] = _Protocol, description: str | None = None) -> None:
    parser = argparse.ArgumentParser(description=description or __doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9100)
    args = parser.parse_args()
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    try:
        import uvloop

        uvloop.run(serve(args.host, args.port, protocol))
    except ImportError:
        asyncio.run(serve(args.host, args.port, protocol))


if __name__ == "__main__":
    main()
