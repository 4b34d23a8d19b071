"""``WORKERS``: N worker processes under one supervisor, sharing one listening socket
(``ops/supervisor.py``), run as production runs them: ``python server.py`` in a child process.

Both of two workers serve (the access lines name them); a ``kill -9``'d worker is replaced (a
new pid, the death logged) while the other serves on, its connections untouched; a replacement
that cannot be forked is tried again, and the supervisor lives on; WORKERS > 1 without
REDIS_URL says once that single flight and rate limits are per worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import SECRET
from tests.fakes.backend import FakeBackend
from tests.gateway_process import Connection, GatewayProcess, ask, spread_until


@pytest.mark.gen_test(timeout=45)
async def test_two_workers_serve_and_a_killed_worker_is_replaced_while_the_other_serves_on(
    backend: FakeBackend,
) -> None:
    gate = await GatewayProcess.start({"BACKEND_URL": backend.url, "SESSION_SECRET": SECRET, "WORKERS": "2"}, serving=2)
    held: dict[int, list[Connection]] = {}
    try:
        warnings = [line for line in gate.lines if "REDIS_URL" in str(line.get("message"))]
        assert len(warnings) == 1 and warnings[0]["level"] == "WARNING"
        started = {line["worker"]: line["pid"] for line in gate.records("worker started")}
        assert sorted(started) == [0, 1] and len(set(started.values())) == 2

        # Both workers serve: connections land on each.
        await spread_until(gate, held, lambda held, _: len(held) == 2, "spread")
        assert sorted(held) == [0, 1]

        victim, survivor = 0, 1
        os.kill(started[victim], signal.SIGKILL)
        killed_at = time.monotonic()
        # The survivor's connections, and new ones, are served throughout the replacement.
        statuses: list[int] = []
        n = 0
        while time.monotonic() - killed_at < 1.5:
            n += 1
            statuses += await asyncio.gather(*(ask(conn, f"survivor-{n}") for conn in held[survivor]))
            fresh = await asyncio.open_connection("127.0.0.1", gate.port)
            statuses.append(await ask(fresh, f"fresh-{n}"))
            fresh[1].close()
            await asyncio.sleep(0.05)
        assert statuses and set(statuses) == {200}
        assert await ask(held[victim][0], "victim") == 0  # its connections died with it

        died = await gate.wait_for(lambda: gate.records("worker died; restarting it", worker=victim), 5)
        assert (died[0]["pid"], died[0]["signal"], died[0]["exit_code"]) == (started[victim], "SIGKILL", None)
        assert died[0]["level"] == "WARNING" and died[0]["restart_in"] > 0

        def replacement() -> list[dict[str, Any]]:
            return [line for line in gate.records("worker started", worker=victim) if line["pid"] != started[victim]]

        new_pid = (await gate.wait_for(replacement, 5))[0]["pid"]
        await gate.wait_for(lambda: gate.records("listening", pid=new_pid), 5)
        # ... and the replacement serves.
        await spread_until(gate, held, lambda _, found: victim in found, "after")  # the replacement serves
        assert gate.records("worker started", worker=survivor) == [gate.records("worker started")[1]]  # never restarted

        gate.signal(signal.SIGTERM)
        assert await gate.exited(10) == 0
        stopped = gate.records("worker stopped")
        assert sorted((line["worker"], line["exit_code"]) for line in stopped) == [(0, 0), (1, 0)]
        assert {line["pid"] for line in stopped} == {new_pid, started[survivor]}
    finally:
        close_all(held)
        await gate.close()


def close_all(held: dict[int, list[Connection]]) -> None:
    for conns in held.values():
        for _, writer in conns:
            writer.close()


PIDS = Path("/sys/fs/cgroup/pids")  # cgroup v1's pids controller


@pytest.fixture
def no_fork() -> Iterator[Callable[[int], Callable[[], None]]]:
    """``allow = no_fork(pid)``: process ``pid`` can fork no more (moved alone into a cgroup of
    its own whose ``pids.max`` is what it has: ``fork`` fails with EAGAIN); ``allow()`` lifts
    the limit. Needs cgroup v1's pids controller, writable (root, as CI runs)."""
    if not os.access(PIDS / "cgroup.procs", os.W_OK):
        pytest.skip("no writable cgroup v1 pids controller: nothing can make fork fail")
    group = PIDS / f"gatehouse-test-{os.getpid()}"
    group.mkdir()

    def limit(pid: int) -> Callable[[], None]:
        (group / "cgroup.procs").write_text(str(pid))
        (group / "pids.max").write_text((group / "pids.current").read_text())

        def allow() -> None:
            (group / "pids.max").write_text("max")

        return allow

    try:
        yield limit
    finally:
        for pid in (group / "cgroup.procs").read_text().split():
            with contextlib.suppress(OSError):  # gone meanwhile
                (PIDS / "cgroup.procs").write_text(pid)
        group.rmdir()


@pytest.mark.gen_test(timeout=45)
async def test_a_worker_that_cannot_be_forked_is_tried_again_and_the_supervisor_lives_on(
    backend: FakeBackend, no_fork: Callable[[int], Callable[[], None]]
) -> None:
    """A replacement whose ``fork`` fails (EAGAIN: a process limit, ENOMEM) is logged and tried
    again with the backoff; the supervisor neither dies of it (taking the other worker with it)
    nor stops serving: the other worker serves on, and the slot is filled once ``fork`` works."""
    gate = await GatewayProcess.start({"BACKEND_URL": backend.url, "SESSION_SECRET": SECRET, "WORKERS": "2"}, serving=2)
    try:
        started = {line["worker"]: line["pid"] for line in gate.records("worker started")}
        allow = no_fork(gate.proc.pid)
        os.kill(started[0], signal.SIGKILL)
        message = "worker could not be started; trying again"
        await gate.wait_for(lambda: len(gate.records(message)) >= 2, 10)  # at 0.5 s, then 1 s later
        failed = gate.records(message)[:2]
        assert [(line["worker"], line["errno"], line["level"]) for line in failed] == [(0, "EAGAIN", "ERROR")] * 2
        assert [line["restart_in"] for line in failed] == [1.0, 2.0]  # the backoff, doubling
        assert gate.proc.returncode is None  # the supervisor lives on
        conn = await asyncio.open_connection("127.0.0.1", gate.port)
        assert await ask(conn, "meanwhile") == 200  # and the other worker serves
        conn[1].close()
        assert (await gate.wait_for(lambda: gate.access(request_id="meanwhile"), 5))[0]["worker"] == 1

        allow()
        [replacement] = await gate.wait_for(lambda: gate.records("worker started", worker=0)[1:], 10)
        await gate.wait_for(lambda: gate.records("listening", pid=replacement["pid"]), 10)
        gate.signal(signal.SIGTERM)
        assert await gate.exited(10) == 0
    finally:
        await gate.close()


@pytest.mark.gen_test(timeout=30)
async def test_demo_mode_runs_one_process_whatever_workers_says() -> None:
    """The demo upstreams live in the serving process: one process keeps the demo whole."""
    gate = await GatewayProcess.start({"WORKERS": "3"})
    try:
        [warning] = gate.records("demo mode runs one process: WORKERS is ignored")
        assert (warning["level"], warning["workers"]) == ("WARNING", 3)
        [listening] = gate.records("listening")
        assert (listening["demo"], listening["worker"], listening["workers"]) == (True, 0, 1)
        assert not gate.records("worker started")  # no supervisor
        status = await ask(await asyncio.open_connection("127.0.0.1", gate.port), "demo")
        assert status == 200
        assert (await gate.wait_for(lambda: gate.access(request_id="demo"), 5))[0]["worker"] == 0
        gate.signal(signal.SIGINT)  # Ctrl-C: one process, so it drains itself
        assert await gate.exited(10) == 0
    finally:
        await gate.close()
