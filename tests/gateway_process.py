"""`GatewayProcess`: ``python server.py`` as a child process, as production runs it.

The process gets only the environment a test gives it (plus ``PATH``), listens on a free
loopback port, and its stdout (every JSON log line: the supervisor's, each worker's, the access
lines) is read as it comes, on the test's event loop. Every wait is bounded; `close` kills
whatever is left, so a failed test never leaves a process behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

__all__ = ["Connection", "GatewayProcess", "ask", "connections_by_worker", "free_port", "process_holding"]

ROOT = Path(__file__).resolve().parent.parent
Line = dict[str, Any]
Connection = tuple[asyncio.StreamReader, asyncio.StreamWriter]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def demo_server(port: int) -> subprocess.Popen[str]:
    """``python server.py`` with no configuration, as ``make run`` starts it (demo mode), its
    output (text) on ``stdout``."""
    return subprocess.Popen(
        [sys.executable, "server.py"],
        cwd=ROOT,
        env={"PATH": os.environ["PATH"], "PORT": str(port)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


class GatewayProcess:
    def __init__(self, proc: asyncio.subprocess.Process, port: int) -> None:
        self.proc = proc
        self.port = port
        self.lines: list[Line] = []
        self.text: list[str] = []  # every line, JSON or not, for failure messages
        self._changed = asyncio.Event()
        self._reader = asyncio.ensure_future(self._read())

    @classmethod
    async def start(cls, env: dict[str, str], serving: int = 1, within: float = 15) -> GatewayProcess:
        """Start ``server.py`` with ``env`` and wait until ``serving`` processes listen."""
        port = free_port()
        full = {"PATH": os.environ["PATH"], "HOST": "127.0.0.1", "PORT": str(port), **env}
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "server.py",
            cwd=ROOT,
            env=full,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        gateway = cls(proc, port)
        try:
            await gateway.wait_for(lambda: len(gateway.records("listening")) >= serving, within)
        except BaseException:
            await gateway.close()
            raise
        return gateway

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        while True:
            raw = await self.proc.stdout.readline()
            if not raw:
                break
            text = raw.decode(errors="replace").rstrip("\n")
            self.text.append(text)
            try:
                line = json.loads(text)
            except ValueError:
                line = None
            if isinstance(line, dict):
                self.lines.append(line)
            self._changed.set()
        self._changed.set()

    def records(self, message: str | None = None, **fields: Any) -> list[Line]:
        """The JSON lines with this ``message`` (any when None) and these field values."""
        return [
            line
            for line in self.lines
            if (message is None or line.get("message") == message)
            and all(line.get(name) == value for name, value in fields.items())
        ]

    def access(self, **fields: Any) -> list[Line]:
        return [line for line in self.records("request", **fields) if line.get("logger") == "gatehouse.access"]

    async def wait_for(self, condition: Callable[[], Any], within: float) -> Any:
        """Wait until ``condition()`` (looked at as each line arrives) is truthy; its value."""
        deadline = time.monotonic() + within
        while True:
            value = condition()
            if value:
                return value
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError("timed out; the process said:\n" + "\n".join(self.text[-40:]))
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), min(left, 0.1))

    def signal(self, signum: int = signal.SIGTERM) -> float:
        """Send ``signum``; the monotonic time it was sent."""
        self.proc.send_signal(signum)
        return time.monotonic()

    async def exited(self, within: float) -> int:
        """The exit status, once the process has exited (within ``within`` seconds) and every
        line it wrote has been read."""
        try:
            status = await asyncio.wait_for(self.proc.wait(), within)
        except TimeoutError:
            raise AssertionError(f"still running after {within} s; it said:\n" + "\n".join(self.text[-40:])) from None
        await asyncio.wait_for(asyncio.shield(self._reader), 5)
        return status

    async def close(self) -> None:
        """Kill the process (and any worker it left) if it still runs, and stop reading."""
        if self.proc.returncode is None:
            for line in self.records("worker started"):
                if _parent_of(line["pid"]) == self.proc.pid:  # still ours (never a reused pid)
                    os.kill(line["pid"], signal.SIGKILL)
            self.proc.kill()
            await asyncio.wait_for(self.proc.wait(), 5)
        await asyncio.wait_for(self._reader, 5)


async def ask(conn: Connection, request_id: str) -> int:
    """``GET /healthz`` on a kept-alive connection; the status (0 when the connection is gone)."""
    reader, writer = conn
    try:
        writer.write(f"GET /healthz HTTP/1.1\r\nHost: g\r\nX-Request-ID: {request_id}\r\n\r\n".encode())
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        length = next(int(line[15:]) for line in head.lower().split(b"\r\n") if line.startswith(b"content-length:"))
        await asyncio.wait_for(reader.readexactly(length), 5)
    except (ConnectionError, asyncio.IncompleteReadError):
        return 0
    return int(head.split(b" ", 2)[1])


async def connections_by_worker(gate: GatewayProcess, label: str, count: int = 8) -> dict[int, list[Connection]]:
    """Open ``count`` connections at once, ask once on each; which worker holds each one."""
    opened = await asyncio.gather(*(asyncio.open_connection("127.0.0.1", gate.port) for _ in range(count)))
    ids = [f"{label}-{n}" for n in range(count)]
    assert await asyncio.gather(*(ask(conn, rid) for conn, rid in zip(opened, ids, strict=True))) == [200] * count
    await gate.wait_for(lambda: all(gate.access(request_id=rid) for rid in ids), 5)
    held: dict[int, list[Connection]] = {}
    for conn, rid in zip(opened, ids, strict=True):
        held.setdefault(gate.access(request_id=rid)[0]["worker"], []).append(conn)
    return held


async def spread_until(
    gate: GatewayProcess,
    held: dict[int, list[Connection]],
    done: Callable[[dict[int, list[Connection]], dict[int, list[Connection]]], bool],
    label: str,
    rounds: int = 10,
) -> int:
    """Open connections in rounds (`connections_by_worker`), adding them to ``held`` by worker,
    until ``done(held, this_round)``; the requests asked. The shared socket gives connections to
    whichever worker accepts first, so reaching a given worker can take a few rounds."""
    asked = 0
    for round_ in range(rounds):
        found = await connections_by_worker(gate, f"{label}{round_}")
        asked += sum(len(conns) for conns in found.values())
        for worker, conns in found.items():
            held.setdefault(worker, []).extend(conns)
        if done(held, found):
            return asked
    raise AssertionError(f"{label}: not reached in {rounds} rounds; connections by worker: {sorted(held)}")


def _parent_of(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[1])  # the fields after "(comm)": state, ppid, ...


def process_holding(conn: Connection, pids: Iterable[int]) -> int | None:
    """Which of ``pids`` has accepted this loopback TCP connection (Linux): the server's end of it
    is found in ``/proc/net/tcp``, then among each process's open files. None while none has: a
    connection still in the listen queue has no socket inode yet."""
    writer = conn[1]
    client, server = writer.get_extra_info("sockname"), writer.get_extra_info("peername")
    wanted = (_hex_address(server), _hex_address(client))
    inode = next(
        (fields[9] for fields in _tcp_table() if (fields[1], fields[2]) == wanted and fields[9] != "0"),
        None,
    )
    if inode is None:
        return None
    target = f"socket:[{inode}]"
    for pid in pids:
        with contextlib.suppress(OSError):  # gone meanwhile
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    if os.readlink(f"/proc/{pid}/fd/{fd}") == target:
                        return pid
    return None


def _tcp_table() -> list[list[str]]:
    return [line.split() for line in Path("/proc/net/tcp").read_text().splitlines()[1:]]


def _hex_address(address: tuple[str, int]) -> str:
    """An IPv4 address as /proc/net/tcp writes it: the address in host order, then the port."""
    host, port = address[:2]
    return f"{int.from_bytes(socket.inet_aton(host), sys.byteorder):08X}:{port:04X}"
