"""``make load``: run the locust users of ``loadtest/locustfile.py`` against a demo gatehouse.

Contract:

1. Starts ``python server.py`` (this interpreter, so the venv's) in demo mode on a free
   127.0.0.1 port: a clean environment (``PATH``, ``HOME``, locale, plus ``PORT``, ``HOST``,
   ``ENV=development``, ``LOG_LEVEL=WARNING`` to keep its output small and
   ``CHAT_RATE_PER_MINUTE=0``, since every chat user is the one demo Supabase user) in an empty
   temporary directory (no ``.env`` is read). Reads the ``export GATEHOUSE_COOKIE=`` and
   ``export SUPABASE_TOKEN=`` lines of its demo banner and waits for ``GET /healthz``.
2. Runs locust headless (``--users``, default 50; ``--spawn-rate``, default 10/s; ``--duration``,
   default 60 s) against it, ``SUPABASE_TOKEN`` in locust's environment and HTTP proxies turned
   off, so all traffic stays on 127.0.0.1. Locust prints its own table at the end.
3. Samples gatehouse's RSS (``VmRSS`` of ``/proc/<pid>/status``) every second meanwhile. The
   first ``--warmup`` seconds (default 10: the users spawning, first connections, the JWKS
   fetch) are left out; of the rest, the median of the first quarter is compared with the
   median of the last quarter. Both are printed, pass or fail.
4. Exits 1 if any request failed (or a locust task raised, or locust itself exited non-zero),
   if gatehouse died, or if that RSS median grew more than 10 %; 0 otherwise (2 for bad
   arguments). Gatehouse (SIGTERM, then SIGKILL after 15 s) and locust are always stopped.

With ``--workers N`` (``make load`` runs ``--workers 2 --redis`` after the default run), the demo
upstreams run in a process of their own (``loadtest/upstreams.py``) and gatehouse runs against
them, not in demo mode, with ``WORKERS=N``; ``--redis`` adds a real ``redis-server`` on a free
loopback port (``REDIS_URL``) and sets ``CHAT_RATE_PER_MINUTE`` high enough never to refuse, so
every chat takes the shared limiter's Lua script without being limited. RSS is then the sum over
the supervisor and its workers, and ``/readyz`` must say ``"redis": "ok"`` before and after.

Every step is bounded: 30 s for gatehouse to start, duration + 10 s stop timeout + 60 s for
locust. Arguments after ``--`` go to locust as they are: ``make load LOAD_ARGS="--users 100
--duration 2m -- --loglevel DEBUG"``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LOCUSTFILE = Path(__file__).resolve().parent / "locustfile.py"
RSS_GROWTH_LIMIT = 0.10
START_TIMEOUT = 30.0
STOP_TIMEOUT = 10  # locust --stop-timeout: users finish the stream they are reading
LOCUST_GRACE = 60.0
GATEHOUSE_STOP_WAIT = 15.0  # gatehouse drains requests for up to 10 s on SIGTERM
KEPT_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "TMPDIR")
UPSTREAM_VARIABLES = frozenset(
    ("BACKEND_URL", "SESSION_SECRET", "DIFY_API_URL", "DIFY_API_KEY", "SUPABASE_URL", "SUPABASE_ANON_KEY")
)
EXPORT_LINE = re.compile(r"^export (GATEHOUSE_COOKIE|SUPABASE_TOKEN)='([^']*)'$")


class LoadTestError(Exception):
    """The run could not be carried out (gatehouse did not start, locust hung, ...)."""


@dataclass(frozen=True)
class Options:
    duration: int
    users: int
    spawn_rate: float
    warmup: int
    locust_args: tuple[str, ...]
    workers: int = 1
    redis: bool = False


@dataclass(frozen=True)
class LocustTotals:
    requests: int
    failures: int
    rps: float
    median_ms: float
    p99_ms: float | None
    exceptions: int
    started_at: float | None  # time.time() when locust started its users


@dataclass
class RssSamples:
    """``(wall-clock time, RSS in KiB)``, one a second."""

    points: list[tuple[float, int]] = field(default_factory=list)

    def window(self, start: float, end: float) -> list[int]:
        return [kib for at, kib in self.points if start <= at < end]


@dataclass(frozen=True)
class RssVerdict:
    first_kib: float
    last_kib: float
    first_n: int
    last_n: int
    first_span: tuple[float, float]
    last_span: tuple[float, float]

    @property
    def growth(self) -> float:
        return self.last_kib / self.first_kib - 1


def seconds(text: str) -> int:
    """``90``, ``90s``, ``2m``, ``1h`` or ``1m30s`` as whole seconds (> 0)."""
    match = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s?)?", text.strip())
    if not text.strip() or match is None:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (try 60, 60s, 2m)")
    hours, minutes, secs = (int(part or 0) for part in match.groups())
    total = hours * 3600 + minutes * 60 + secs
    if total <= 0:
        raise argparse.ArgumentTypeError("the duration must be positive")
    return total


def positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError("must be positive")
    return value


def parse_args(argv: Sequence[str]) -> Options:
    argv = list(argv)
    extra: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, extra = argv[:cut], argv[cut + 1 :]
    parser = argparse.ArgumentParser(
        prog="loadtest/run.py", description="Run the locust users against a demo gatehouse (make load)."
    )
    parser.add_argument("--duration", type=seconds, default=60, help="run time: 60, 60s, 2m (default 60 s)")
    parser.add_argument("--users", "-u", type=positive_int, default=50, help="locust users (default 50)")
    parser.add_argument("--spawn-rate", "-r", type=float, default=10.0, help="users started per second (default 10)")
    parser.add_argument(
        "--warmup", type=int, default=10, help="seconds left out of the RSS comparison at the start (default 10)"
    )
    parser.add_argument(
        "--workers", type=positive_int, default=1, help="WORKERS: >1 runs the demo upstreams apart (default 1)"
    )
    parser.add_argument("--redis", action="store_true", help="share state through a real redis-server (REDIS_URL)")
    args = parser.parse_args(argv)
    if args.spawn_rate <= 0:
        parser.error("--spawn-rate must be positive")
    if not 0 <= args.warmup <= args.duration // 2:
        parser.error("--warmup must be between 0 and half the duration")
    return Options(args.duration, args.users, args.spawn_rate, args.warmup, tuple(extra), args.workers, args.redis)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def rss_kib(pid: int) -> int | None:
    """``VmRSS`` of the process and its children (a supervisor's workers) in KiB; None once it is gone."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            own = next((int(line.split()[1]) for line in status if line.startswith("VmRSS:")), None)
    except (OSError, ValueError):
        return None
    if own is None:
        return None
    return own + sum(rss_kib(child) or 0 for child in children(pid))


def children(pid: int) -> list[int]:
    found: list[int] = []
    with contextlib.suppress(OSError, ValueError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            found += [int(child) for child in (task / "children").read_text().split()]
    return found


def logged_problems(path: Path) -> list[str]:
    """Gatehouse's own WARNING and ERROR log lines (one JSON object per line)."""
    found: list[str] = []
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return found
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("level") in ("WARNING", "ERROR", "CRITICAL"):
            found.append(line)
    return found


def log_tail(path: Path, lines: int = 20) -> str:
    """The last lines of gatehouse's output, without the banner's ``export`` lines (a cookie, a token)."""
    try:
        kept = [line for line in path.read_text(errors="replace").splitlines() if not line.startswith("export ")]
        return "\n".join(kept[-lines:])
    except OSError:
        return "(no log)"


def start_process(
    command: list[str], workdir: Path, env: dict[str, str], name: str
) -> tuple[subprocess.Popen[bytes], Path]:
    """``command`` in ``workdir`` with a clean environment plus ``env``, its output to ``<name>.log``."""
    clean = {name: os.environ[name] for name in KEPT_ENV if name in os.environ}
    log_path = workdir / f"{name}.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            command,
            cwd=workdir,
            env={**clean, "PYTHONUNBUFFERED": "1", **env},
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # our SIGTERM, not the terminal's ^C, shuts it down
        )
    return process, log_path


def start_gatehouse(
    port: int, workdir: Path, upstreams: dict[str, str], options: Options, redis_url: str | None
) -> tuple[subprocess.Popen[bytes], Path]:
    """Gatehouse in demo mode (no ``upstreams``), or against them with ``WORKERS``."""
    env = {"PORT": str(port), "HOST": "127.0.0.1", "ENV": "development", "LOG_LEVEL": "WARNING"}
    env["CHAT_RATE_PER_MINUTE"] = "1000000" if redis_url else "0"  # one demo user: never refused
    env.update(upstreams)
    if options.workers > 1:
        env["WORKERS"] = str(options.workers)
    if redis_url:
        env["REDIS_URL"] = redis_url
    return start_process([sys.executable, str(ROOT / "server.py")], workdir, env, "gatehouse")


def start_redis(workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise LoadTestError("redis-server is not installed (the Makefile's redis-server target installs it)")
    port = free_port()
    command = [
        binary,
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--dir",
        str(workdir),
        "--save",
        "",
        "--appendonly",
        "no",
    ]
    process, _ = start_process(command, workdir, {}, "redis")
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1) as probe:
            probe.sendall(b"PING\r\n")
            if probe.recv(16).startswith(b"+PONG"):
                return process, f"redis://127.0.0.1:{port}/0"
        if process.poll() is not None:
            raise LoadTestError(f"redis-server exited with {process.returncode}")
        time.sleep(0.1)
    raise LoadTestError("redis-server did not answer PING in time")


def start_upstreams(workdir: Path) -> tuple[subprocess.Popen[bytes], dict[str, str], dict[str, str]]:
    """``loadtest/upstreams.py``: the gatehouse environment it prints, and its banner's exports."""
    process, log_path = start_process(
        [sys.executable, str(ROOT / "loadtest" / "upstreams.py")], workdir, {}, "upstreams"
    )
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        lines = log_path.read_text(errors="replace").splitlines()
        if "ready" in lines:
            pairs = (line.split("=", 1) for line in lines if "=" in line and not line.startswith("export "))
            env = {name: value for name, value in pairs if name in UPSTREAM_VARIABLES}
            exports = {m.group(1): m.group(2) for m in map(EXPORT_LINE.match, lines) if m}
            return process, env, exports
        if process.poll() is not None:
            raise LoadTestError(f"the demo upstreams exited with {process.returncode}")
        time.sleep(0.1)
    raise LoadTestError("the demo upstreams did not start in time")


def readiness(base: str) -> dict[str, object]:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(f"{base}/readyz", timeout=2) as response:
            data = json.load(response)
            return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def wait_for_banner(process: subprocess.Popen[bytes], log_path: Path, deadline: float) -> dict[str, str]:
    """The ``export`` lines of the demo banner, as a dict."""
    while time.monotonic() < deadline:
        exports: dict[str, str] = {}
        for line in log_path.read_text(errors="replace").splitlines():
            match = EXPORT_LINE.match(line.strip())
            if match:
                exports[match.group(1)] = match.group(2)
        if len(exports) == 2:
            return exports
        if process.poll() is not None:
            raise LoadTestError(f"gatehouse exited with {process.returncode}:\n{log_tail(log_path)}")
        time.sleep(0.1)
    raise LoadTestError(f"no demo banner from gatehouse within {START_TIMEOUT:.0f} s:\n{log_tail(log_path)}")


def wait_healthy(base: str, process: subprocess.Popen[bytes], deadline: float) -> None:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never via a proxy
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise LoadTestError(f"gatehouse exited with {process.returncode}")
        try:
            with opener.open(f"{base}/healthz", timeout=2) as response:
                if response.status == 200 and json.load(response) == {"status": "ok"}:
                    return
        except (OSError, ValueError):
            pass
        time.sleep(0.2)
    raise LoadTestError(f"{base}/healthz did not answer ok within {START_TIMEOUT:.0f} s")


def locust_env(exports: dict[str, str], summary: Path) -> dict[str, str]:
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith("LOCUST_") and name.lower() not in ("http_proxy", "https_proxy", "all_proxy")
    }
    env.update(exports)
    env.update(NO_PROXY="*", no_proxy="*", PYTHONUNBUFFERED="1", LOADTEST_SUMMARY=str(summary))
    return env


def start_locust(options: Options, base: str, workdir: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    command = [
        sys.executable,
        "-m",
        "locust",
        "-f",
        str(LOCUSTFILE),
        "--headless",
        "--users",
        str(options.users),
        "--spawn-rate",
        f"{options.spawn_rate:g}",
        "--run-time",
        f"{options.duration}s",
        "--stop-timeout",
        str(STOP_TIMEOUT),
        "--host",
        base,
        "--only-summary",
        "--exit-code-on-error",
        "1",
        *options.locust_args,
    ]
    print("$", " ".join(command[2:]), flush=True)
    # cwd: the empty work directory, so no locust.conf / pyproject.toml is picked up by accident.
    return subprocess.Popen(command, cwd=workdir, env=env, stdin=subprocess.DEVNULL)


def sample_until_done(
    locust: subprocess.Popen[bytes], gatehouse: subprocess.Popen[bytes], samples: RssSamples, deadline: float
) -> None:
    """Sample gatehouse's RSS once a second until locust exits (or the deadline: LoadTestError)."""
    tick = time.monotonic()
    while locust.poll() is None:
        if time.monotonic() > deadline:
            raise LoadTestError("locust did not finish in time")
        if gatehouse.poll() is not None:
            raise LoadTestError(f"gatehouse exited with {gatehouse.returncode} during the run")
        kib = rss_kib(gatehouse.pid)
        if kib is not None:
            samples.points.append((time.time(), kib))
        tick += 1.0
        with contextlib.suppress(subprocess.TimeoutExpired):
            locust.wait(timeout=max(0.0, tick - time.monotonic()))


def locust_totals(path: Path) -> LocustTotals | None:
    """The totals the locustfile wrote when locust quit (``LOADTEST_SUMMARY``), None if it did not."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return LocustTotals(
            requests=int(data["requests"]),
            failures=int(data["failures"]),
            rps=float(data["rps"]),
            median_ms=float(data["median_ms"]),
            p99_ms=None if data["p99_ms"] is None else float(data["p99_ms"]),
            exceptions=int(data["exceptions"]),
            started_at=None if data["started_at"] is None else float(data["started_at"]),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def rss_verdict(samples: RssSamples, start: float, options: Options) -> RssVerdict | None:
    """First and last quarter (after the warm-up) of ``[start, start + duration]``."""
    measured = options.duration - options.warmup
    first = (start + options.warmup, start + options.warmup + measured / 4)
    last = (start + options.duration - measured / 4, start + options.duration + 0.5)
    first_kib, last_kib = samples.window(*first), samples.window(*last)
    if len(first_kib) < 2 or len(last_kib) < 2:
        return None
    return RssVerdict(
        statistics.median(first_kib),
        statistics.median(last_kib),
        len(first_kib),
        len(last_kib),
        (first[0] - start, first[1] - start),
        (last[0] - start, min(last[1], start + options.duration) - start),
    )


def stop(process: subprocess.Popen[bytes], name: str, wait: float) -> None:
    """SIGTERM, then SIGKILL after ``wait`` seconds; only this process, by its pid."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=wait)
    except subprocess.TimeoutExpired:
        print(f"{name} ignored SIGTERM for {wait:.0f} s: killing it", file=sys.stderr)
        process.kill()
        process.wait(timeout=10)


def mib(kib: float) -> str:
    return f"{kib / 1024:.1f} MiB"


def report(
    options: Options, locust_code: int, totals: LocustTotals | None, verdict: RssVerdict | None, samples: RssSamples
) -> list[str]:
    """Print the figures; the reasons the run failed (empty: it passed)."""
    problems: list[str] = []
    print("\n== make load: summary ==")
    if totals is None:
        problems.append("locust wrote no statistics")
    else:
        print(
            f"requests {totals.requests}, failures {totals.failures}, {totals.rps:.1f} req/s, "
            f"median {totals.median_ms:.0f} ms, p99 {totals.p99_ms or 0:.0f} ms, task exceptions {totals.exceptions}"
        )
        if totals.requests == 0:
            problems.append("no request was made")
        if totals.failures:
            problems.append(f"{totals.failures} request(s) failed")
        if totals.exceptions:
            problems.append(f"{totals.exceptions} locust task exception(s)")
    if locust_code != 0:
        problems.append(f"locust exited with {locust_code}")
    if samples.points:
        values = [kib for _, kib in samples.points]
        print(
            f"gatehouse RSS: {len(values)} samples, min {mib(min(values))}, max {mib(max(values))}, "
            f"every 5 s: {' '.join(f'{kib / 1024:.1f}' for kib in values[::5])} MiB"
        )
    if verdict is None:
        problems.append("too few RSS samples to compare the first and last quarter")
    else:
        print(
            f"gatehouse RSS median, first quarter after a {options.warmup} s warm-up "
            f"(t={verdict.first_span[0]:.0f}-{verdict.first_span[1]:.0f} s, {verdict.first_n} samples): "
            f"{mib(verdict.first_kib)}; last quarter (t={verdict.last_span[0]:.0f}-{verdict.last_span[1]:.0f} s, "
            f"{verdict.last_n} samples): {mib(verdict.last_kib)}; growth {verdict.growth:+.1%} "
            f"(limit +{RSS_GROWTH_LIMIT:.0%})"
        )
        if verdict.growth > RSS_GROWTH_LIMIT:
            problems.append(f"gatehouse RSS grew {verdict.growth:+.1%} (limit +{RSS_GROWTH_LIMIT:.0%})")
    return problems


def main(argv: Sequence[str] | None = None) -> int:
    try:
        options = parse_args(sys.argv[1:] if argv is None else argv)
    except SystemExit as exc:  # argparse: --help is 0, a bad argument 2
        return int(exc.code or 0)
    gatehouse: subprocess.Popen[bytes] | None = None
    locust: subprocess.Popen[bytes] | None = None
    helpers: list[subprocess.Popen[bytes]] = []  # the demo upstreams and redis-server, when apart
    log_path: Path | None = None
    show_log = False  # gatehouse's own output, when it failed to start or died
    with tempfile.TemporaryDirectory(prefix="gatehouse-load-") as tmp:
        workdir = Path(tmp)
        try:
            port = free_port()
            base = f"http://127.0.0.1:{port}"
            upstreams: dict[str, str] = {}
            redis_url = None
            if options.redis:
                redis, redis_url = start_redis(workdir)
                helpers.append(redis)
            if options.workers > 1 or options.redis:
                process, upstreams, exports = start_upstreams(workdir)
                helpers.append(process)
            gatehouse, log_path = start_gatehouse(port, workdir, upstreams, options, redis_url)
            deadline = time.monotonic() + START_TIMEOUT
            if not upstreams:
                exports = wait_for_banner(gatehouse, log_path, deadline)
            wait_healthy(base, gatehouse, deadline)
            mode = "demo mode" if not upstreams else f"WORKERS={options.workers}, demo upstreams apart"
            if redis_url:
                mode += ", REDIS_URL (a local redis-server)"
                if readiness(base).get("redis") != "ok":
                    raise LoadTestError(f"/readyz does not report redis ok: {readiness(base)}")
            print(
                f"gatehouse ({mode}, pid {gatehouse.pid}) on {base}: LOG_LEVEL=WARNING; "
                f"RSS at start {mib(rss_kib(gatehouse.pid) or 0)}",
                flush=True,
            )
            samples = RssSamples()
            launched = time.time()
            summary = workdir / "locust-summary.json"
            locust = start_locust(options, base, workdir, locust_env(exports, summary))
            sample_until_done(
                locust, gatehouse, samples, time.monotonic() + options.duration + STOP_TIMEOUT + LOCUST_GRACE
            )
            totals = locust_totals(summary)
            start = totals.started_at if totals and totals.started_at else launched
            verdict = rss_verdict(samples, start, options)
            problems = report(options, locust.returncode, totals, verdict, samples)
            if gatehouse.poll() is not None:
                problems.append(f"gatehouse exited with {gatehouse.returncode}")
                show_log = True
            elif redis_url and readiness(base).get("redis") != "ok":
                problems.append("/readyz no longer reports redis ok")
            logged = logged_problems(log_path)
            print(f"gatehouse logged {len(logged)} warning/error line(s)" + (": last ones:" if logged else ""))
            for line in logged[-5:]:
                print(f"  {line[:300]}")
        except LoadTestError as exc:
            problems = [str(exc)]
            show_log = True
        except KeyboardInterrupt:
            problems = ["interrupted"]
        finally:
            if locust is not None:
                stop(locust, "locust", 10.0)
            if gatehouse is not None:
                stop(gatehouse, "gatehouse", GATEHOUSE_STOP_WAIT)
            for helper in helpers:
                stop(helper, "helper", 10.0)
        if show_log and log_path is not None:
            print(f"\ngatehouse log (last lines):\n{log_tail(log_path)}", file=sys.stderr)
    if problems:
        print("make load: FAILED: " + "; ".join(problems), file=sys.stderr)
        return 1
    print("make load: passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
