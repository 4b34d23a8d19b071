"""Many concurrent proxied SSE streams through one gatehouse process.

    python bench/streams.py                 # 1,000 streams of 10 events at 1 s (about 20 s)
    python bench/streams.py --full          # 9,500 streams of 30 events at 1 s (see below)
    python bench/streams.py --streams 5000 --events 30

Starts three processes on 127.0.0.1: the benchmark upstream (bench/upstream.py), gatehouse
(server.py, production-like: full next-auth session decryption, JSON access log at INFO), and
this script as the client. Streams are opened at ``--ramp`` per second, each upstream stream
sends its events ``--interval`` apart stamped with their send time, and the client records
every event's relay latency (receive time minus send stamp).

Reported: streams completed (every event received and the stream properly ended), errors,
gatehouse's RSS before the streams and at its peak, RSS per stream, relay latency p50/p99/max.

Why 9,500 and not 10,000: the hard open-file limit of the machine these figures come from is
20,000 and cannot be raised; a proxy holds two sockets per stream (browser side and upstream
side), so 10,000 streams need more than 20,000 descriptors. ``--full`` uses 9,500.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import resource
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from auth.nextauth import NextAuthV4Codec  # noqa: E402

SECRET = "bench-secret-not-for-production-0123456789"
_SENT = re.compile(rb'"sent": ([0-9.]+)')


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


async def wait_listening(port: int, seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        except OSError:
            await asyncio.sleep(0.1)
    raise RuntimeError(f"nothing listening on {port}")


class Stats:
    def __init__(self) -> None:
        self.completed = 0
        self.errors: dict[str, int] = {}
        self.latencies: list[float] = []
        self.open = 0
        self.peak_open = 0

    def error(self, kind: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1


async def one_stream(port: int, request: bytes, events: int, stats: Stats) -> None:
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError as exc:
        stats.error(f"connect: {type(exc).__name__}")
        return
    stats.open += 1
    stats.peak_open = max(stats.peak_open, stats.open)
    received, ended = 0, False
    try:
        writer.write(request)
        head = await reader.readuntil(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200"):
            stats.error(f"status: {head.split(b' ', 2)[1].decode()}")
            return
        tail = b""
        while True:
            data = await reader.read(65536)
            if not data:
                break
            now = time.time()
            for match in _SENT.finditer(data):
                stats.latencies.append(now - float(match.group(1)))
                received += 1
            tail = (tail + data)[-7:]
            if tail.endswith(b"0\r\n\r\n"):
                ended = True
                break
    except (OSError, asyncio.IncompleteReadError) as exc:
        stats.error(f"read: {type(exc).__name__}")
        return
    finally:
        stats.open -= 1
        writer.close()
    if received == events and ended:
        stats.completed += 1
    else:
        stats.error("incomplete")


class Processes:
    """The upstream and gatehouse processes of one run; `stop` ends both."""

    def __init__(self) -> None:
        self.upstream_port, self.gateway_port = free_port(), free_port()
        results_dir = ROOT / "bench" / "results"
        results_dir.mkdir(parents=True, exist_ok=True)
        self.log_file = (results_dir / "streams-gatehouse.log").open("w")
        self.upstream = subprocess.Popen(
            [sys.executable, str(ROOT / "bench" / "upstream.py"), "--port", str(self.upstream_port)],
            stdout=subprocess.DEVNULL,
        )
        env = {
            "PATH": os.environ["PATH"],
            "BACKEND_URL": f"http://127.0.0.1:{self.upstream_port}",
            "SESSION_SECRET": SECRET,
            "PORT": str(self.gateway_port),
            "LOG_LEVEL": "INFO",  # as in production: one JSON access line per stream
        }
        self.gateway = subprocess.Popen(
            [sys.executable, str(ROOT / "server.py")], env=env, stdout=self.log_file, stderr=subprocess.STDOUT, cwd=ROOT
        )

    def stop(self) -> None:
        self.gateway.send_signal(signal.SIGTERM)
        self.upstream.terminate()
        self.gateway.wait(timeout=30)
        self.upstream.wait(timeout=10)
        self.log_file.close()


async def run(args: argparse.Namespace, procs: Processes) -> dict[str, object]:
    await wait_listening(procs.upstream_port)
    await wait_listening(procs.gateway_port)
    port = procs.gateway_port
    cookie = NextAuthV4Codec(SECRET).encode({"sub": "bench", "access_token": "bench-access-token"})
    request = (
        f"GET /api/proxy/sse?events={args.events}&interval={args.interval} HTTP/1.1\r\n"
        f"Host: 127.0.0.1:{port}\r\nCookie: next-auth.session-token={cookie}\r\n"
        "Accept: text/event-stream\r\n\r\n"
    ).encode()
    await asyncio.sleep(0.5)
    pid = procs.gateway.pid
    baseline = peak = rss_kib(pid)
    stats = Stats()
    tasks: list[asyncio.Task[None]] = []
    started = time.monotonic()
    batch = max(1, args.ramp // 10)
    for i in range(0, args.streams, batch):
        for _ in range(min(batch, args.streams - i)):
            tasks.append(asyncio.ensure_future(one_stream(port, request, args.events, stats)))
        await asyncio.sleep(0.1)
        peak = max(peak, rss_kib(pid))
    pending = set(tasks)
    while pending:
        _, pending = await asyncio.wait(pending, timeout=0.5)
        peak = max(peak, rss_kib(pid))
    elapsed = time.monotonic() - started
    lat = sorted(stats.latencies)

    def pct(p: float) -> float:
        return round(lat[min(len(lat) - 1, int(p * len(lat)))] * 1000, 1) if lat else float("nan")

    return {
        "streams": args.streams,
        "events_per_stream": args.events,
        "interval_s": args.interval,
        "completed": stats.completed,
        "errors": stats.errors,
        "peak_concurrent": stats.peak_open,
        "events_received": len(lat),
        "gatehouse_rss_baseline_mib": round(baseline / 1024, 1),
        "gatehouse_rss_peak_mib": round(peak / 1024, 1),
        "rss_per_stream_kib": round((peak - baseline) / max(1, stats.peak_open), 1),
        "latency_ms_p50": pct(0.50),
        "latency_ms_p99": pct(0.99),
        "latency_ms_max": round(lat[-1] * 1000, 1) if lat else None,
        "latency_ms_mean": round(statistics.fmean(lat) * 1000, 1) if lat else None,
        "wall_s": round(elapsed, 1),
        "cpus": os.cpu_count(),
        "loadavg_before": os.getloadavg()[0],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description="Concurrent SSE streams through gatehouse.")
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--events", type=int, default=10)
    parser.add_argument("--interval", type=float, default=1.0)
    parser.add_argument("--ramp", type=int, default=1000, help="new streams per second")
    parser.add_argument("--full", action="store_true", help="9,500 streams of 30 events (the 10,000-stream run)")
    args = parser.parse_args()
    if args.full:
        args.streams, args.events = 9500, 30
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    procs = Processes()
    try:
        try:
            import uvloop

            result = uvloop.run(run(args, procs))
        except ImportError:
            result = asyncio.run(run(args, procs))
    finally:
        procs.stop()
    print(json.dumps(result, indent=2))
    out = ROOT / "bench" / "results" / f"streams-{args.streams}.json"
    out.write_text(json.dumps(result, indent=2))
    ok = result["completed"] == args.streams and not result["errors"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
