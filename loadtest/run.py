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
    args = parser.parse_args(argv)
    if args.spawn_rate <= 0:
        parser.error("--spawn-rate must be positive")
    if not 0 <= args.warmup <= args.duration // 2:
        parser.error("--warmup must be between 0 and half the duration")
    return Options(args.duration, args.users, args.spawn_rate, args.warmup, tuple(extra))


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def rss_kib(pid: int) -> int | None:
    """``VmRSS`` of the process in KiB; None once it is gone."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


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


def start_gatehouse(port: int, workdir: Path) -> tuple[subprocess.Popen[bytes], Path]:
    env = {name: os.environ[name] for name in KEPT_ENV if name in os.environ}
    env.update(
        PORT=str(port),
        HOST="127.0.0.1",
        ENV="development",
        LOG_LEVEL="WARNING",
        CHAT_RATE_PER_MINUTE="0",
        PYTHONUNBUFFERED="1",
    )
    log_path = workdir / "gatehouse.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, str(ROOT / "server.py")],
            cwd=workdir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # our SIGTERM, not the terminal's ^C, shuts it down
        )
    return process, log_path


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
    log_path: Path | None = None
    show_log = False  # gatehouse's own output, when it failed to start or died
    with tempfile.TemporaryDirectory(prefix="gatehouse-load-") as tmp:
        workdir = Path(tmp)
        try:
            port = free_port()
            base = f"http://127.0.0.1:{port}"
            gatehouse, log_path = start_gatehouse(port, workdir)
            deadline = time.monotonic() + START_TIMEOUT
            exports = wait_for_banner(gatehouse, log_path, deadline)
            wait_healthy(base, gatehouse, deadline)
            print(
                f"gatehouse (demo mode, pid {gatehouse.pid}) on {base}: CHAT_RATE_PER_MINUTE=0, LOG_LEVEL=WARNING; "
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
        if show_log and log_path is not None:
            print(f"\ngatehouse log (last lines):\n{log_tail(log_path)}", file=sys.stderr)
    if problems:
        print("make load: FAILED: " + "; ".join(problems), file=sys.stderr)
        return 1
    print("make load: passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
