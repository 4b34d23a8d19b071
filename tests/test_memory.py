"""Memory stays bounded however large the bodies are: the relay's backpressure, measured.

RSS is the whole test process (gatehouse, the fakes and the client share it), read from
/proc/self/statm while the transfer runs. Each test also checks that the transfer really was
large, so a bound that holds only because nothing moved fails.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from tests.conftest import RunningGateway
from tests.fakes.raw import RawUpstream, Script

MIB = 1024 * 1024
Upstreams = Callable[[Script], Awaitable[RawUpstream]]
PAGE = os.sysconf("SC_PAGE_SIZE")


def rss() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * PAGE


class PeakRSS:
    """Samples RSS every 20 ms until stopped; `growth` is peak minus the starting value."""

    def __init__(self) -> None:
        self.start = rss()
        self.peak = self.start
        self._task = asyncio.ensure_future(self._sample())

    async def _sample(self) -> None:
        while True:
            self.peak = max(self.peak, rss())
            await asyncio.sleep(0.02)

    def stop(self) -> int:
        self._task.cancel()
        self.peak = max(self.peak, rss())
        return self.peak - self.start


def request_head(gateway: RunningGateway, cookie: str, method: str, path: str, extra: str = "") -> bytes:
    port = gateway.url.rsplit(":", 1)[1]
    return f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nCookie: {cookie}\r\n{extra}\r\n".encode()


async def open_client(gateway: RunningGateway, rcvbuf: int | None = None) -> tuple[Any, Any]:
    sock = socket.socket()
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", int(gateway.url.rsplit(":", 1)[1])))
    return await asyncio.open_connection(sock=sock)


def flood(size: int, written: list[int]) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]:
    """An upstream script answering with ``size`` bytes as fast as the gateway takes them."""

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n")
        writer.write(f"Content-Length: {size}\r\n\r\n".encode())
        block = b"\0" * (256 * 1024)
        while written[0] < size:
            writer.write(block)
            written[0] += len(block)
            await writer.drain()

    return script


@pytest.mark.gen_test(timeout=60)
async def test_a_10kb_per_second_reader_of_a_200mb_body_keeps_rss_growth_under_16mib(
    start_gateway: Callable[..., RunningGateway], session_cookie: Callable[..., str], upstreams: Upstreams
) -> None:
    written = [0]
    upstream = await upstreams(flood(200 * MIB, written))
    gateway = start_gateway(upstream.url)
    reader, writer = await open_client(gateway, rcvbuf=16 * 1024)
    meter = PeakRSS()
    writer.write(request_head(gateway, session_cookie(), "GET", "/api/proxy/big"))
    received = 0
    for _ in range(40):  # 4 s at 10 KB/s
        received += len(await reader.read(1024))
        await asyncio.sleep(0.1)
    growth = meter.stop()
    writer.close()

    assert received > 20 * 1024  # the client really was reading
    assert written[0] < 40 * MIB  # the upstream was held back (kernel buffers are all it filled)
    assert growth < 16 * MIB, f"RSS grew {growth / MIB:.1f} MiB"
    await asyncio.wait_for(upstream.closed.wait(), 2)  # and the abandoned stream was dropped upstream


@pytest.mark.gen_test(timeout=120)
async def test_a_1gib_upload_streams_through_with_rss_growth_under_32mib(
    start_gateway: Callable[..., RunningGateway], session_cookie: Callable[..., str], upstreams: Upstreams
) -> None:
    size = 1024 * MIB
    upstream: RawUpstream

    async def answer_when_all_arrived(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while upstream.bytes_after_head < size:  # noqa: ASYNC110 - polling a counter the fake owns
            await asyncio.sleep(0.01)
        writer.write(b"HTTP/1.1 201 Created\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n")
        writer.write(b'{"ok":true}')
        await writer.drain()
        writer.close()

    upstream = await upstreams(answer_when_all_arrived)
    gateway = start_gateway(upstream.url, max_body_bytes=2 * size)
    reader, writer = await open_client(gateway)
    meter = PeakRSS()
    extra = f"Content-Type: application/octet-stream\r\nContent-Length: {size}\r\n"
    writer.write(request_head(gateway, session_cookie(), "POST", "/api/proxy/upload", extra))
    block = b"\x5a" * MIB
    for _ in range(size // MIB):
        writer.write(block)
        await writer.drain()
    status = await reader.readuntil(b"\r\n")
    growth = meter.stop()
    writer.close()

    assert status.startswith(b"HTTP/1.1 201")
    assert upstream.bytes_after_head == size
    assert growth < 32 * MIB, f"RSS grew {growth / MIB:.1f} MiB"
