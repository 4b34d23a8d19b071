"""The metrics with ``WORKERS=2`` (``ops/metrics_files.py``), on ``python server.py`` as
production runs it.

Whichever worker answers a scrape, it answers with the sum over both (each scrape is asked of
both); what a scraper reads never goes down, also when a worker is ``kill -9``'d and replaced,
while another scraper scrapes in a loop: the dead worker's counts are kept (folded into an
archive), its live gauges dropped, and the directory holds no file of a dead worker, however many
die. A scrape that runs while a dead worker's files are folded never sees its counts twice or
not at all; a scrape that holds its lock forever (a worker stopped mid-scrape) does not stop the
supervisor, and the fold waits for it. The directory is gatehouse's own, and gone once it exits.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import shutil
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import mmap_dict

from ops import metrics_files
from ops.metrics_exposition import Exposition
from tests.conftest import SECRET
from tests.fakes.backend import FakeBackend
from tests.gateway_process import (
    Connection,
    GatewayProcess,
    ask,
    free_port,
    process_holding,
    spread_until,
)
from tests.metrics_scrape import Scrape, SeriesKey, scrape, scrape_on

HEALTHZ = {"route": "healthz", "method": "GET", "status": "200"}
CUMULATIVE = ("_total", "_count", "_sum", "_bucket")  # never go down


class Rising:
    """What one scraper has read so far: each counter, histogram count, sum and bucket only ever
    rises from one of its scrapes to the next."""

    def __init__(self) -> None:
        self.highest: dict[SeriesKey, float] = {}

    def check(self, result: Scrape) -> None:
        for key, value in result.gatehouse().items():
            if key[0].endswith(CUMULATIVE):
                assert value >= self.highest.get(key, 0.0), (key, value, self.highest.get(key))
                self.highest[key] = value


def live_workers(gate: GatewayProcess) -> set[int]:
    """The pids of the workers serving now (listening, and not dead since)."""
    dead = {line["pid"] for line in gate.records("worker died; restarting it")}
    return {line["pid"] for line in gate.records("listening")} - dead


class Scraper:
    """Asks every live worker for each scrape, on a kept-alive connection to each (which worker
    accepted a connection is read from /proc), so both answer every time: they must answer the
    same, and what they answer never goes down."""

    def __init__(self, gate: GatewayProcess, port: int) -> None:
        self.gate, self.port = gate, port
        self.conns: dict[int, Connection] = {}
        self.rising = Rising()
        self.answered: collections.Counter[int] = collections.Counter()  # scrapes per worker pid

    async def scrape(self) -> Scrape:
        live = live_workers(self.gate)
        await self._connect(live)
        results = []
        for pid in sorted(live):
            result = await scrape_on(self.conns[pid])
            assert result.status == 200, result.text
            self.answered[pid] += 1
            self.rising.check(result)
            results.append(result)
        assert all(result.gatehouse() == results[0].gatehouse() for result in results), "workers disagree"
        return results[-1]

    async def _connect(self, live: set[int]) -> None:
        """A kept-alive connection accepted by each of ``live``, none by a dead worker."""
        for pid in set(self.conns) - live:
            self.conns.pop(pid)[1].close()
        for _ in range(50):  # the first worker to wake takes a connection: a few may be needed
            if set(self.conns) >= live:
                return
            conn = await asyncio.open_connection("127.0.0.1", self.port)
            holder = await _accepted_by(conn, live)
            if holder is None or holder in self.conns:
                conn[1].close()
            else:
                self.conns[holder] = conn
        raise AssertionError(f"not every worker took a connection: {sorted(self.conns)} of {sorted(live)}")

    def close(self) -> None:
        for _, writer in self.conns.values():
            writer.close()


async def _accepted_by(conn: Connection, pids: set[int]) -> int | None:
    """The one of ``pids`` that accepts ``conn`` (within 5 s; None if none does)."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        holder = process_holding(conn, pids)
        if holder is not None:
            return holder
        await asyncio.sleep(0.01)
    return None


class ScrapingLoop:
    """Scrapes on a fresh connection after another, as fast as it can, until stopped: whatever
    else happens meanwhile (a worker killed, its files folded), every answer is whole and
    nothing it reads goes down. A scrape that the killed worker had accepted dies with it
    (counted in `lost`)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.rising = Rising()
        self.scrapes = 0
        self.lost = 0
        self._stopped = False
        self._task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        while not self._stopped:
            try:
                result = await scrape("127.0.0.1", self.port)
            except (ConnectionError, asyncio.IncompleteReadError):
                self.lost += 1
                continue
            assert result.status == 200, result.text
            self.rising.check(result)
            self.scrapes += 1

    async def stop(self) -> None:
        """Stop, and raise what went wrong, if anything did."""
        self._stopped = True
        await asyncio.wait_for(self._task, 15)

    def cancel(self) -> None:
        self._task.cancel()


def db_files(directory: Path) -> list[str]:
    """The metrics files in ``directory`` (``counter_<pid>.db``, ``histogram_archive.db``...)."""
    return sorted(path.name for path in directory.glob("*.db"))


def pids_in(directory: Path) -> set[int]:
    """The pids the files of ``directory`` belong to."""
    stems = (name.removesuffix(".db").rsplit("_", 1)[1] for name in db_files(directory))
    return {int(stem) for stem in stems if stem.isdigit()}


def mode_of(directory: Path) -> int | None:
    """The permission bits of ``directory``; None once it is gone."""
    return directory.stat().st_mode & 0o777 if directory.exists() else None


async def close(gate: GatewayProcess) -> None:
    """`GatewayProcess.close`, and the metrics directory removed, which a supervisor killed by
    a failed test leaves behind."""
    await gate.close()
    for line in gate.records("supervisor"):
        if line.get("metrics_dir"):
            shutil.rmtree(line["metrics_dir"], ignore_errors=True)


def close_all(held: dict[int, list[Connection]]) -> None:
    for conns in held.values():
        for _, writer in conns:
            writer.close()


async def ask_all(held: dict[int, list[Connection]], label: str) -> int:
    """``GET /healthz`` once on every held connection; how many answered 200."""
    statuses = await asyncio.gather(
        *(ask(conn, f"{label}-{n}") for n, conn in enumerate(c for conns in held.values() for c in conns))
    )
    return statuses.count(200)


@pytest.mark.gen_test(timeout=45)
async def test_two_workers_scrape_as_one_and_the_counts_survive_a_killed_worker(
    backend: FakeBackend, session_cookie: Callable[..., str]
) -> None:
    metrics_port = free_port()
    env = {"BACKEND_URL": backend.url, "SESSION_SECRET": SECRET, "WORKERS": "2", "METRICS_PORT": str(metrics_port)}
    gate = await GatewayProcess.start(env, serving=2)
    scraper = Scraper(gate, metrics_port)
    scraping: ScrapingLoop | None = None
    held: dict[int, list[Connection]] = {}
    try:
        [supervisor] = gate.records("supervisor")
        directory = Path(supervisor["metrics_dir"])
        assert mode_of(directory) == 0o700  # private
        assert supervisor["metrics"] == f"127.0.0.1:{metrics_port}"
        started = {line["worker"]: line["pid"] for line in gate.records("worker started")}

        # Traffic on both workers (the access lines say which served what).
        asked = await spread_until(gate, held, lambda held, _: len(held) == 2, "spread")
        assert sorted(held) == [0, 1]
        asked += await ask_all(held, "again")
        await gate.wait_for(lambda: len(gate.access(route="healthz")) == asked, 5)
        served = {w: len(gate.access(route="healthz", worker=w)) for w in (0, 1)}
        assert sum(served.values()) == asked and min(served.values()) > 0

        result = await scraper.scrape()
        assert result.value("gatehouse_requests_total", **HEALTHZ) == asked  # the sum, from either
        assert result.value("gatehouse_request_duration_seconds_count", route="healthz") == asked

        # A long stream on worker 0's connection: in flight and active, in the sum.
        victim, survivor = 0, 1
        reader, writer = held[victim][0]
        cookie = session_cookie()
        writer.write(
            f"GET /api/proxy/sse?events=600&interval=0.1 HTTP/1.1\r\nHost: g\r\nCookie: {cookie}\r\n\r\n".encode()
        )
        assert (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)).startswith(b"HTTP/1.1 200")
        await asyncio.wait_for(reader.readuntil(b"data: "), 5)
        result = await scraper.scrape()
        assert result.value("gatehouse_streams_active", route="proxy") == 1
        assert result.value("gatehouse_requests_in_flight", route="proxy") == 1
        assert result.value("gatehouse_stream_first_event_seconds_count", route="proxy") == 1

        # kill -9 the worker holding it: its counts stay, its live gauges go, its files go. Another
        # scraper scrapes all along, through the deaths and the folds.
        scraping = ScrapingLoop(metrics_port)
        await asyncio.sleep(0.2)
        os.kill(started[victim], signal.SIGKILL)
        await gate.wait_for(lambda: gate.records("worker died; restarting it", pid=started[victim]), 5)
        await gate.wait_for(lambda: len(gate.records("listening")) == 3, 10)
        result = await scraper.scrape()
        assert result.value("gatehouse_requests_total", **HEALTHZ) == asked
        assert result.value("gatehouse_request_duration_seconds_count", route="healthz") == asked
        assert result.value("gatehouse_stream_first_event_seconds_count", route="proxy") == 1
        assert result.value("gatehouse_streams_active", route="proxy") == 0
        assert result.value("gatehouse_requests_in_flight", route="proxy") == 0
        assert started[victim] not in pids_in(directory)
        archives = [name for name in db_files(directory) if name.endswith("_archive.db")]
        assert archives == ["counter_archive.db", "histogram_archive.db"]

        # New traffic adds to what was kept.
        more = await ask_all({survivor: held[survivor]}, "survivor")
        asked += await spread_until(gate, held, lambda _, found: 0 in found, "after")  # the replacement serves
        result = await scraper.scrape()
        assert result.value("gatehouse_requests_total", **HEALTHZ) == asked + more

        # A second death: still one archive per kind, and files only of the live workers.
        replacement = [line["pid"] for line in gate.records("worker started", worker=victim)][-1]
        files_before = len(db_files(directory))
        os.kill(replacement, signal.SIGKILL)
        await gate.wait_for(lambda: gate.records("worker died; restarting it", pid=replacement), 5)
        await gate.wait_for(lambda: len(gate.records("listening")) == 4, 10)
        result = await scraper.scrape()
        assert result.value("gatehouse_requests_total", **HEALTHZ) == asked + more
        live = {line["pid"] for line in gate.records("listening")} - {started[victim], replacement}
        assert pids_in(directory) <= live
        assert [name for name in db_files(directory) if name.endswith("_archive.db")] == archives
        assert len(db_files(directory)) <= files_before
        await asyncio.sleep(0.2)
        await scraping.stop()
        assert scraping.scrapes >= 20 and scraping.lost <= 4, (scraping.scrapes, scraping.lost)
        # Both live workers answered each scrape: every worker that ever served answered some.
        assert set(scraper.answered) == {line["pid"] for line in gate.records("listening")}
        assert sum(scraper.answered.values()) == 2 * 5  # five scrapes, each asked of both workers

        gate.signal(signal.SIGTERM)
        assert await gate.exited(10) == 0
        assert mode_of(directory) is None  # gatehouse's own directory, removed
    finally:
        if scraping is not None:
            scraping.cancel()
        close_all(held)
        scraper.close()
        await close(gate)


@pytest.fixture
def stale(tmp_path: Path) -> Path:
    """A multiprocess directory left by someone else: a dead process's count of 1,000 healthz."""
    directory = tmp_path / "stale"
    directory.mkdir()
    files: Any = mmap_dict  # untyped in prometheus_client
    old = files.MmapedDict(str(directory / "counter_1.db"))
    key = files.mmap_key("gatehouse_requests", "gatehouse_requests_total", list(HEALTHZ), list(HEALTHZ.values()), "x")
    old.write_value(key, 1000.0, 0.0)
    old.close()
    return directory


@pytest.mark.gen_test(timeout=30)
async def test_a_multiprocess_directory_from_the_environment_is_not_used(backend: FakeBackend, stale: Path) -> None:
    """Gatehouse manages the directory itself: one set in the environment is neither read
    (stale files would add old counts) nor written."""
    before = db_files(stale)
    metrics_port = free_port()
    for workers in ("1", "2"):
        env = {
            "BACKEND_URL": backend.url,
            "SESSION_SECRET": SECRET,
            "WORKERS": workers,
            "METRICS_PORT": str(metrics_port),
            "PROMETHEUS_MULTIPROC_DIR": str(stale),
        }
        gate = await GatewayProcess.start(env, serving=int(workers))
        try:
            assert await ask(await asyncio.open_connection("127.0.0.1", gate.port), "one") == 200
            result = await scrape("127.0.0.1", metrics_port)
            assert result.value("gatehouse_requests_total", **HEALTHZ) == 1
            assert db_files(stale) == before == ["counter_1.db"]
            gate.signal(signal.SIGTERM)
            assert await gate.exited(10) == 0
        finally:
            await close(gate)


def dead_worker(directory: Path, pid: int, requests: float) -> None:
    """The counter file a worker that served ``requests`` health checks left, as it writes it
    (``prometheus_client``'s ``MmapedDict``, created as the worker made it)."""
    files: Any = mmap_dict  # untyped in prometheus_client
    counts = files.MmapedDict(str(directory / f"counter_{pid}.db"))
    key = files.mmap_key("gatehouse_requests", "gatehouse_requests_total", list(HEALTHZ), list(HEALTHZ.values()), "x")
    counts.write_value(key, requests, 0.0)
    counts.close()


@pytest.mark.gen_test(timeout=60)
async def test_a_scrape_while_a_dead_worker_is_folded_sees_its_counts_once(tmp_path: Path) -> None:
    """`metrics_files.retire` folds a dead worker's files into the archive while the live workers
    scrape (``ops/metrics_files.py``: the scrapes share a lock the fold takes alone). Here a
    thread plays the supervisor, folding one dead worker after another as fast as it can, while
    three scrapes at a time render the directory as a worker does (`Exposition`, off the loop).
    Dead worker ``i`` served ``2**i`` requests, so every total a scrape may see is ``2**n - 1``:
    a scrape that counted a worker twice (its file, then the archive it was just added to) reads
    another number, and one that lost a file between listing and reading it fails. Without the
    lock, either happens within a few hundred folds."""
    per_round = 30  # 2**29 at most: exact in a double
    rounds = [(str(tmp_path), Exposition(directory=str(tmp_path)))]  # a fresh directory each round
    stop = threading.Event()
    folds = 0
    deferred = 0

    def supervisor() -> None:
        nonlocal folds, deferred
        while not stop.is_set():
            directory = rounds[-1][0]
            for n in range(per_round):
                dead_worker(Path(directory), 100_000 + n, float(2**n))
                while not metrics_files.retire(directory, 100_000 + n):
                    deferred += 1  # the scrapes held the lock LOCK_WAIT long: as the supervisor, try again
                folds += 1
            fresh = tmp_path / f"round{len(rounds)}"
            fresh.mkdir()
            rounds.append((str(fresh), Exposition(directory=str(fresh))))

    async def scraper() -> int:
        highest: dict[int, float] = {}  # by round: what it read last
        scrapes = 0
        while not stop.is_set():
            round_ = len(rounds) - 1
            body, _ = await rounds[round_][1].render("")
            total = Scrape.parse(200, "text/plain", body.decode()).value("gatehouse_requests_total", **HEALTHZ)
            assert total == int(total) and (int(total) + 1) & int(total) == 0, f"not 2**n - 1: {total}"
            assert total >= highest.get(round_, 0.0)
            highest[round_] = total
            scrapes += 1
        return scrapes

    folding = threading.Thread(target=supervisor)
    folding.start()
    try:
        scrapers = [asyncio.ensure_future(scraper()) for _ in range(3)]
        await asyncio.wait(scrapers, timeout=3, return_when=asyncio.FIRST_EXCEPTION)
    finally:
        stop.set()
        folding.join(10)
    scrapes = sum(await asyncio.gather(*scrapers))
    assert folds >= 200 and scrapes >= 200, (folds, scrapes, deferred)


@pytest.mark.gen_test(timeout=60)
async def test_a_scrape_that_holds_the_lock_forever_stops_neither_the_supervisor_nor_the_counts(
    backend: FakeBackend,
) -> None:
    """A worker stopped (SIGSTOP, a cgroup freezer) in the middle of a scrape holds the scrapes'
    shared lock for as long as it is stopped; here the test holds it, as such a worker would. A
    worker then dies: the supervisor cannot fold its files, and says so, but it does not wait:
    the replacement starts and serves, the dead worker's counts are still counted (once, from its
    own file), and the supervisor still drains on SIGTERM. The fold happens once the lock is free."""
    metrics_port = free_port()
    env = {"BACKEND_URL": backend.url, "SESSION_SECRET": SECRET, "WORKERS": "2", "METRICS_PORT": str(metrics_port)}
    gate = await GatewayProcess.start(env, serving=2)
    held: dict[int, list[Connection]] = {}
    frozen = contextlib.ExitStack()
    try:
        directory = Path(gate.records("supervisor")[0]["metrics_dir"])
        started = {line["worker"]: line["pid"] for line in gate.records("worker started")}
        asked = await spread_until(gate, held, lambda held, _: len(held) == 2, "spread")
        assert (await scrape("127.0.0.1", metrics_port)).value("gatehouse_requests_total", **HEALTHZ) == asked

        frozen.enter_context(metrics_files.reading(str(directory)))  # a scrape's lock, held: frozen
        victim = started[0]
        os.kill(victim, signal.SIGKILL)
        [deferred] = await gate.wait_for(lambda: gate.records("worker died; restarting it", pid=victim), 10)
        assert gate.records("the metrics of a dead worker are folded later: a scrape holds the lock", pid=victim)
        await gate.wait_for(lambda: len(gate.records("listening")) == 3, 10)  # replaced all the same
        replacement = gate.records("listening")[-1]["pid"]
        asked += await spread_until(gate, held, lambda _, found: 0 in found, "after")  # the replacement serves
        await gate.wait_for(lambda: len(gate.access(route="healthz")) == asked, 5)
        during = await scrape("127.0.0.1", metrics_port)  # scrapes share the lock: they go on
        assert during.value("gatehouse_requests_total", **HEALTHZ) == asked
        assert victim in pids_in(directory)  # not folded yet: its own file is read, once

        frozen.close()  # the frozen scrape ends
        await gate.wait_for(lambda: gate.records("the metrics of a dead worker are folded", pid=victim), 5)
        assert victim not in pids_in(directory) and replacement in pids_in(directory)
        after = await scrape("127.0.0.1", metrics_port)
        assert after.value("gatehouse_requests_total", **HEALTHZ) == asked
        assert deferred["restart_in"] == 0.5

        gate.signal(signal.SIGTERM)
        assert await gate.exited(10) == 0
    finally:
        frozen.close()
        close_all(held)
        await close(gate)
