"""A real ``redis-server`` for tests: a free loopback port, no persistence, its own temp dir.

`RedisServer` runs the Debian package's binary (``make test`` installs it: see the Makefile).
It can be stopped, frozen (SIGSTOP: a Redis that accepts nothing and answers nothing, as a hung
one) and thawed, and started again on the same port, with an empty data set, as a restarted
Redis without persistence. Inside a test's event loop, use `RedisServer.astart` and
`RedisServer.astop`: they wait in a thread, so the in-process fakes and gatehouses keep serving
meanwhile. `RedisServer.client` is a redis-py asyncio client for tests to look inside.

Fixtures: ``redis_server`` (no password) and ``redis_with_password`` (``--requirepass``), each
stopped after the test.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import pytest
from redis.asyncio import Redis

__all__ = ["REDIS_PASSWORD", "RedisServer", "redis_server", "redis_with_password"]

REDIS_PASSWORD = "redis-pw-6c1e9f0b7a2d4e83"  # must never appear in a log line or a Redis key


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class RedisServer:
    def __init__(self, directory: Path, password: str | None = None) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed: `make test` installs it (Debian package redis-server)")
        self.binary = binary
        self.directory = directory
        self.password = password
        self.port = _free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> None:
        """Start it (again, on the same port) and wait until it accepts connections."""
        args = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.directory)]
        args += ["--save", "", "--appendonly", "no", "--daemonize", "no", "--loglevel", "warning"]
        if self.password:
            args += ["--requirepass", self.password]
        with (self.directory / "redis.log").open("ab") as log:
            self.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server did not start on port {self.port}") from None
                time.sleep(0.01)

    def stop(self) -> None:
        """Stop it for good (SIGKILL: no goodbye to its clients, and it works on a frozen one)."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        self.process = None

    async def astart(self) -> None:
        """`start`, waited for off the event loop."""
        await asyncio.to_thread(self.start)

    async def astop(self) -> None:
        """`stop`, waited for off the event loop."""
        await asyncio.to_thread(self.stop)

    def freeze(self) -> None:
        """SIGSTOP: connections stay open and every command hangs, as with a Redis that hangs."""
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        """SIGCONT: a frozen Redis answers again, its data and connections as they were."""
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGCONT)

    def client(self) -> Redis:
        """A new redis-py asyncio client (``aclose`` it)."""
        return Redis(host="127.0.0.1", port=self.port, password=self.password, socket_timeout=5)

    async def dump(self) -> dict[bytes, list[bytes]]:
        """Every key and what it holds (a string's value, a hash's fields and values)."""
        client = self.client()
        try:
            found: dict[bytes, list[bytes]] = {}
            async for key in client.scan_iter(count=1000):
                if await client.type(key) == b"hash":
                    fields = cast(dict[bytes, bytes], await client.hgetall(key))
                    found[key] = [item for pair in fields.items() for item in pair]
                else:
                    found[key] = [cast(bytes, await client.get(key))]
            return found
        finally:
            await client.aclose()


def _run(directory: Path, password: str | None) -> Iterator[RedisServer]:
    server = RedisServer(directory, password)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    yield from _run(tmp_path, None)


@pytest.fixture
def redis_with_password(tmp_path: Path) -> Iterator[RedisServer]:
    yield from _run(tmp_path, REDIS_PASSWORD)
