"""The scenarios of the peer benchmark (``bench/run.py``), each measured on one running peer.

* A `json_get`: wrk ``-t1 -c50`` on ``GET /json`` (the upstream echoes the Authorization it got):
  requests per second, latency p50 / p99, non-2xx answers and socket errors.
* B `streams`: C concurrent SSE streams of N events 1 s apart, opened at 1,000 per second with
  ``bench/streams.py``'s client (`one_stream`): streams complete, errors, RSS per stream (peak
  minus baseline over peak concurrent streams), relay latency p50 / p99 (receive time minus the
  upstream's send stamp).
* C `slow_reader`: a client reading 10 KB/s from a 200 MB body the upstream sends as fast as
  TCP lets it: the peer's RSS growth.
* D `disconnect`: a client drops a stream mid-way (closes its socket after the first event):
  seconds until the upstream sees its own socket close (``/hold`` + ``/closed`` of
  ``bench/upstream_ext.py``).
* E `upload`: a 1 GiB ``application/octet-stream`` POST with Content-Length: RSS growth and MiB/s.

Each returns `Metrics`, a flat ``{name: number or None}``; ``None`` is "not measured" (the
``direct`` peer has no process of its own, so no RSS).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import math
import re
import statistics
import time
import uuid

from bench.harness import COOKIE_NAME, Peer, fetch, read_response
from bench.streams import Stats, one_stream

__all__ = ["Config", "Metrics", "disconnect", "json_get", "slow_reader", "streams", "upload"]

Metrics = dict[str, float | None]
MIB = 1024 * 1024


@dataclasses.dataclass(frozen=True)
class Config:
    a_seconds: int = 10
    a_warmup_seconds: int = 2
    a_connections: int = 50
    b_streams: tuple[int, ...] = (1000, 5000, 9500)
    b_events: int = 30
    b_interval: float = 1.0
    b_ramp: int = 1000  # new streams per second
    c_seconds: float = 10.0
    c_rate: int = 10_000  # bytes per second the slow client reads
    c_size: int = 200_000_000
    d_trials: int = 5
    d_timeout: float = 10.0
    e_bytes: int = 1024 * MIB
    e_timeout: float = 300.0
    f_streams: tuple[int, ...] = (250, 500, 1000, 2000)
    f_seconds: float = 10.0
    f_interval: float = 0.05  # an LLM's 20 tokens a second


# -- A ---------------------------------------------------------------------------------------

_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


def _ms(text: str) -> float:
    match = re.fullmatch(r"([0-9.]+)(us|ms|s|m)", text)
    if match is None:
        raise ValueError(f"not a wrk duration: {text!r}")
    return float(match.group(1)) * _UNITS[match.group(2)]


def parse_wrk(out: str) -> Metrics:
    """Requests/sec, the 50 % and 99 % latencies and the error count of ``wrk --latency``."""
    rps = re.search(r"Requests/sec:\s+([0-9.]+)", out)
    p50 = re.search(r"^\s+50%\s+(\S+)", out, re.M)
    p99 = re.search(r"^\s+99%\s+(\S+)", out, re.M)
    if rps is None or p50 is None or p99 is None:
        raise ValueError(f"unexpected wrk output:\n{out}")
    errors = 0
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    if non2xx:
        errors += int(non2xx.group(1))
    sockets = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if sockets:
        errors += sum(int(g) for g in sockets.groups())
    return {"rps": float(rps.group(1)), "p50_ms": _ms(p50.group(1)), "p99_ms": _ms(p99.group(1)), "errors": errors}


async def _wrk(argv: list[str]) -> str:
    proc = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    try:
        out, _ = await proc.communicate()
    except BaseException:  # cancelled (Ctrl-C, SIGTERM): wrk must not outlive the run
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        raise
    if proc.returncode != 0:
        raise RuntimeError(f"wrk failed: {out.decode(errors='replace')}")
    return out.decode()


async def json_get(peer: Peer, cfg: Config, cookie: str) -> Metrics:
    url = f"http://127.0.0.1:{peer.port}{peer.prefix}/json"
    base = ["wrk", "-t1", f"-c{cfg.a_connections}", "--latency", "-H", f"Cookie: {COOKIE_NAME}={cookie}"]
    await _wrk([*base, f"-d{cfg.a_warmup_seconds}s", url])
    return parse_wrk(await _wrk([*base, f"-d{cfg.a_seconds}s", url]))


# -- B ---------------------------------------------------------------------------------------


def _pct(values: list[float], p: float) -> float | None:
    return values[min(len(values) - 1, int(p * len(values)))] if values else None


async def streams(peer: Peer, cfg: Config, cookie: str, count: int) -> Metrics:
    request = (
        f"GET {peer.prefix}/sse?events={cfg.b_events}&interval={cfg.b_interval} HTTP/1.1\r\n"
        f"Host: 127.0.0.1:{peer.port}\r\nCookie: {COOKIE_NAME}={cookie}\r\n"
        "Accept: text/event-stream\r\n\r\n"
    ).encode()
    stats = Stats()
    limit = cfg.b_events * cfg.b_interval + 60.0

    async def guarded() -> None:
        try:
            await asyncio.wait_for(one_stream(peer.port, request, cfg.b_events, stats), limit)
        except TimeoutError:
            stats.error("timeout")

    baseline = peer.rss_kib()
    peak = baseline
    tasks: list[asyncio.Task[None]] = []
    batch = max(1, cfg.b_ramp // 10)
    for i in range(0, count, batch):
        tasks.extend(asyncio.ensure_future(guarded()) for _ in range(min(batch, count - i)))
        await asyncio.sleep(0.1)
        peak = _max(peak, peer.rss_kib())
    pending = set(tasks)
    while pending:
        _, pending = await asyncio.wait(pending, timeout=0.5)
        peak = _max(peak, peer.rss_kib())
    latencies = sorted(stats.latencies)
    if stats.errors:
        print(f"      {peer.name}: errors {stats.errors}", flush=True)
    per_stream = None
    if baseline is not None and peak is not None:
        per_stream = (peak - baseline) / max(1, stats.peak_open)
    return {
        "completed": stats.completed,
        "peak_open": stats.peak_open,
        "errors": sum(stats.errors.values()),
        "rss_per_stream_kib": per_stream,
        "rss_peak_mib": None if peak is None else peak / 1024,
        "p50_ms": _scale(_pct(latencies, 0.50), 1000),
        "p99_ms": _scale(_pct(latencies, 0.99), 1000),
    }


def _max(a: int | None, b: int | None) -> int | None:
    return None if a is None or b is None else max(a, b)


def _scale(value: float | None, factor: float) -> float | None:
    return None if value is None else value * factor


# -- F ---------------------------------------------------------------------------------------


async def token_rate(peer: Peer, cfg: Config, cookie: str, count: int) -> Metrics:
    """``count`` streams opened at once, each an event every ``f_interval`` for ``f_seconds``:
    a chat front end receiving answers token by token. Events per second, not streams held,
    decide how many users a process serves; the peer's CPU (share of one core) says what they
    cost."""
    events = round(cfg.f_seconds / cfg.f_interval)
    shaped = dataclasses.replace(cfg, b_events=events, b_interval=cfg.f_interval, b_ramp=max(cfg.b_ramp, count * 10))
    cpu_before, started = peer.cpu_seconds(), time.monotonic()
    metrics = await streams(peer, shaped, cookie, count)
    cpu_after, took = peer.cpu_seconds(), time.monotonic() - started
    cpu = None if cpu_before is None or cpu_after is None else 100 * (cpu_after - cpu_before) / took
    return {**metrics, "cpu_pct": cpu}


# -- C ---------------------------------------------------------------------------------------


async def slow_reader(peer: Peer, cfg: Config, cookie: str) -> Metrics:
    if peer.proc is None:
        return {"rss_growth_mib": None, "received_kib": None}
    baseline = peer.rss_kib()
    peak = baseline
    reader, writer = await asyncio.open_connection("127.0.0.1", peer.port, limit=4096)
    received = 0
    try:
        writer.write(
            f"GET {peer.prefix}/bytes?size={cfg.c_size} HTTP/1.1\r\nHost: 127.0.0.1:{peer.port}\r\n"
            f"Cookie: {COOKIE_NAME}={cookie}\r\n\r\n".encode()
        )
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        status_line = head.split(b"\r\n", 1)[0]
        if b" 200 " not in status_line:
            raise RuntimeError(f"{peer.name}: slow reader got {status_line!r}")
        tick = 0.1
        per_tick = int(cfg.c_rate * tick)
        started = time.monotonic()
        while time.monotonic() - started < cfg.c_seconds:
            data = await asyncio.wait_for(reader.read(per_tick), 10)
            if not data:
                break
            received += len(data)
            peak = _max(peak, peer.rss_kib())
            await asyncio.sleep(tick)
        peak = _max(peak, peer.rss_kib())
    finally:
        writer.close()
    await asyncio.sleep(0.3)
    growth = None if peak is None or baseline is None else (peak - baseline) / 1024
    return {"rss_growth_mib": growth, "received_kib": received / 1024}


# -- D ---------------------------------------------------------------------------------------


async def disconnect(peer: Peer, cfg: Config, cookie: str, upstream_port: int) -> Metrics:
    delays: list[float] = []
    for _ in range(cfg.d_trials):
        hold = uuid.uuid4().hex
        reader, writer = await asyncio.open_connection("127.0.0.1", peer.port)
        try:
            writer.write(
                f"GET {peer.prefix}/hold?id={hold}&interval=0.1 HTTP/1.1\r\nHost: 127.0.0.1:{peer.port}\r\n"
                f"Cookie: {COOKIE_NAME}={cookie}\r\nAccept: text/event-stream\r\n\r\n".encode()
            )
            seen = b""
            while b"data:" not in seen:
                data = await asyncio.wait_for(reader.read(65536), 10)
                if not data:
                    raise RuntimeError(f"{peer.name}: the stream ended before its first event")
                seen += data
        finally:
            dropped = time.time()
            writer.close()  # a FIN, as when a browser tab goes away
        closed = None
        while closed is None and time.time() - dropped < cfg.d_timeout:
            status, body = await fetch(upstream_port, f"/closed?id={hold}")
            closed = json.loads(body)["closed"] if status == 200 else None
            if closed is None:
                await asyncio.sleep(0.005)
        delays.append(math.inf if closed is None else max(0.0, closed - dropped))
        await asyncio.sleep(0.2)
    return {"close_s": statistics.median(delays), "close_max_s": max(delays)}


# -- E ---------------------------------------------------------------------------------------


async def upload(peer: Peer, cfg: Config, cookie: str) -> Metrics:
    baseline = peer.rss_kib()
    peak = baseline
    done = asyncio.Event()

    async def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = _max(peak, peer.rss_kib())
            await asyncio.sleep(0.1)

    sampler = asyncio.ensure_future(sample())
    reader, writer = await asyncio.open_connection("127.0.0.1", peer.port)
    chunk = bytes(MIB)
    started = time.monotonic()
    try:
        writer.write(
            f"POST {peer.prefix}/upload HTTP/1.1\r\nHost: 127.0.0.1:{peer.port}\r\n"
            f"Cookie: {COOKIE_NAME}={cookie}\r\nContent-Type: application/octet-stream\r\n"
            f"Content-Length: {cfg.e_bytes}\r\n\r\n".encode()
        )

        async def send_and_read() -> tuple[int, bytes]:
            sent = 0
            while sent < cfg.e_bytes:
                n = min(MIB, cfg.e_bytes - sent)
                writer.write(chunk if n == MIB else chunk[:n])
                await writer.drain()
                sent += n
            return await read_response(reader)

        status, body = await asyncio.wait_for(send_and_read(), cfg.e_timeout)
        elapsed = time.monotonic() - started
    except (OSError, asyncio.IncompleteReadError, TimeoutError) as exc:
        print(f"      {peer.name}: upload failed: {type(exc).__name__}: {exc}", flush=True)
        status, body, elapsed = 0, b"", math.nan
    finally:
        writer.close()
        done.set()
        await sampler
    ok = status == 200 and json.loads(body).get("bytes") == cfg.e_bytes
    if not ok and status:
        print(f"      {peer.name}: upload answered {status} {body[:200]!r}", flush=True)
    growth = None if peak is None or baseline is None else (peak - baseline) / 1024
    return {
        "mib_s": cfg.e_bytes / MIB / elapsed if ok else None,
        "rss_growth_mib": growth,
        "errors": 0 if ok else 1,
    }
