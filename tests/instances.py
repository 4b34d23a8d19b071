"""Gatehouse instances as separate processes: ``python server.py`` with an environment, as a
deployment runs several behind a load balancer.

``instances``: ``await instances(n, **env)`` starts ``n`` gatehouses on free loopback ports, each
with ``env`` (``BACKEND_URL``, ``REDIS_URL``, ...) and the test secret as ``SESSION_SECRET``, and
waits until each answers ``/healthz``. Everything a process prints goes to a file
(`Instance.log_text`, `Instance.records`). They are stopped (SIGTERM, then SIGKILL) after the test;
`Instance.stop` stops one sooner, waiting without blocking the test's event loop.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from tornado.httpclient import AsyncHTTPClient

from tests.conftest import SECRET

__all__ = ["Instance", "instances"]

ROOT = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Instance:
    def __init__(self, name: str, directory: Path, env: dict[str, str]) -> None:
        self.port = _free_port()
        self.log_path = directory / f"{name}.log"
        environ = {"PATH": os.environ["PATH"], "HOST": "127.0.0.1", "PORT": str(self.port), "LOG_LEVEL": "INFO"}
        environ |= {"SESSION_SECRET": SECRET, **env}
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "server.py"], cwd=ROOT, env=environ, stdout=log, stderr=subprocess.STDOUT
            )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def ready(self, client: AsyncHTTPClient, within: float = 20.0) -> None:
        deadline = time.monotonic() + within
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"gatehouse exited with {self.process.returncode}:\n{self.log_text()}")
            try:
                response = await client.fetch(self.url + "/healthz", raise_error=False, request_timeout=1)
                if response.code == 200:
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"gatehouse did not answer on {self.url}:\n{self.log_text()}")
            await asyncio.sleep(0.05)

    async def stop(self, within: float = 15.0) -> None:
        """SIGTERM, and SIGKILL if it has not exited ``within`` seconds; polls, so the event
        loop (and the fakes and gatehouses on it) runs on meanwhile."""
        if self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        if not await self._exited(within):
            self.process.kill()
            await self._exited(10.0)

    async def _exited(self, within: float) -> bool:
        deadline = time.monotonic() + within
        while self.process.poll() is None:
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.02)
        return True

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def records(self) -> list[dict[str, Any]]:
        """Every JSON log line (anything else the process printed is in `log_text` only)."""
        found = []
        for line in self.log_text().splitlines():
            if line.startswith("{"):
                found.append(json.loads(line))
        return found


@pytest.fixture
def instances(tmp_path: Path, io_loop: Any) -> Iterator[Callable[..., Awaitable[list[Instance]]]]:
    started: list[Instance] = []
    client = AsyncHTTPClient(force_instance=True)

    async def start(count: int, **env: str) -> list[Instance]:
        batch = [Instance(f"gatehouse-{len(started) + n}", tmp_path, env) for n in range(count)]
        started.extend(batch)
        await asyncio.gather(*(instance.ready(client) for instance in batch))
        return batch

    yield start
    client.close()

    async def stop_all() -> None:
        await asyncio.gather(*(instance.stop() for instance in started))

    io_loop.run_sync(stop_all)
