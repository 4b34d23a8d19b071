"""gatehouse against its peers, side by side (issue #6): one command, one markdown table.

    .venv/bin/python bench/run.py                  # everything: 3 repetitions (about 45 minutes)
    .venv/bin/python bench/run.py --quick          # a smoke run of every scenario (about 2 minutes)
    .venv/bin/python bench/run.py --only A,D --reps 3
    .venv/bin/python bench/run.py --only B --streams 1000,5000 --reps 1
    make bench BENCH_ARGS="--quick"

Starts the benchmark upstream (``bench/upstream_ext.py``: ``bench/upstream.py`` plus upload, echo
and disconnect routes), then, one at a time and afresh for each measurement, each peer proxying
``/api/proxy/<path>`` to it with the same next-auth v4 cookie -> ``Authorization: Bearer`` work:

* ``gatehouse``: ``server.py``, demo off (``BACKEND_URL`` = the upstream), JSON access log at
  INFO as in production, ``MAX_BODY_BYTES`` = 2 GiB so the 1 GiB upload passes;
* ``gatehouse-tornado``: the same with ``SERVER_IMPL=tornado`` (Tornado's server on the browser
  side), so gatehouse's own server connection is measured against the one it replaced;
* ``gatehouse-py3.12``, ``gatehouse-py3.13`` (only with ``--peers``): gatehouse on that Python,
  from ``.venv-3.12`` / ``.venv-3.13`` (built on first use), to weigh the runtime;
* ``gatehouse-baseline`` (only with ``--peers``): gatehouse from ``GATEHOUSE_BASELINE=<checkout>``,
  e.g. a worktree of the commit before a lever, to weigh the lever in the same run;
* ``nextjs``: ``bench/peers/nextjs`` (app-router route handler, next-auth@4 ``getToken`` +
  ``fetch``), ``next build`` + ``next start``, telemetry off;
* ``fastapi``: ``bench/peers/fastapi_peer.py`` (FastAPI, uvicorn + uvloop + httptools, httpx);
* ``nginx``: ``bench/peers/nginx.conf`` (Debian's nginx, only checks the cookie is there);
* ``direct``: the client on the upstream itself.

Scenarios (``bench/scenarios.py``): A JSON GET with wrk, B concurrent SSE streams (1,000 /
5,000 / 9,500: 10,000 would need more than the machine's 20,000 descriptors, two per stream),
C slow reader, D client disconnect, E 1 GiB upload, F token-rate streams (250 / 500 / 1,000 /
2,000 streams, an event every 50 ms for 10 s, with the peer's CPU). Peers alternate within each repetition (the
order rotates), medians over the repetitions. The session cookie is minted by next-auth's own
``encode`` (``bench/peers/nextjs/mint.mjs``).

Installs what it needs when missing (``requirements-bench.txt``; apt ``nginx`` and ``wrk``;
``npm ci`` + ``next build`` for the Next.js peer; ``--no-install`` to refuse), writes the report
to ``bench/results/<timestamp>.md`` (and the raw figures to ``.json``), prints it, and stops
every process it started, also on Ctrl-C or an error. All traffic stays on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import datetime
import importlib.metadata
import json
import os
import platform
import resource
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:] = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]

from bench import scenarios  # noqa: E402
from bench.harness import (  # noqa: E402
    DEFAULT_PEERS,
    NEXTJS_DIR,
    PEERS,
    Bench,
    Peer,
    Processes,
    SetupError,
    ensure_tools,
    mint_cookie,
    nginx_path,
)
from bench.report import Results, render  # noqa: E402
from bench.scenarios import Config, Metrics  # noqa: E402

SCENARIOS = ("A", "B", "C", "D", "E", "F")
ORDER = ("A", "D", "C", "E", "F", "B")  # cheapest first: B is most of a full run
QUICK = Config(
    a_seconds=3,
    a_warmup_seconds=1,
    b_streams=(200,),
    b_events=5,
    c_seconds=3.0,
    d_trials=3,
    d_timeout=5.0,
    e_bytes=128 * 1024 * 1024,
    f_streams=(250, 1000),
    f_seconds=3.0,
)


def _csv(allowed: tuple[str, ...], upper: bool) -> Callable[[str], tuple[str, ...]]:
    def parse(raw: str) -> tuple[str, ...]:
        items = tuple(i.strip().upper() if upper else i.strip().lower() for i in raw.split(",") if i.strip())
        bad = [i for i in items if i not in allowed]
        if bad or not items:
            raise argparse.ArgumentTypeError(f"choose from {','.join(allowed)}")
        return items

    return parse


def _counts(raw: str) -> tuple[int, ...]:
    try:
        counts = tuple(int(c.replace("_", "")) for c in raw.split(",") if c.strip())
    except ValueError:
        raise argparse.ArgumentTypeError("comma-separated stream counts, e.g. 1000,5000,9500") from None
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError("at least one positive stream count")
    return counts


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="gatehouse against nextjs, fastapi, nginx and direct (issue #6).",
        epilog="Reports go to bench/results/<timestamp>.md (gitignored).",
    )
    parser.add_argument("--quick", action="store_true", help="a short smoke run: small C, short runs, 1 repetition")
    parser.add_argument("--only", type=_csv(SCENARIOS, True), default=SCENARIOS, help="scenarios, e.g. A,B")
    parser.add_argument(
        "--peers", type=_csv(PEERS, False), default=DEFAULT_PEERS, help="peers (gatehouse is always in)"
    )
    parser.add_argument("--reps", type=int, help="repetitions (3; --quick: 1)")
    parser.add_argument("--b-reps", type=int, help="repetitions of scenario B only (default: --reps)")
    parser.add_argument("--streams", type=_counts, help="scenario B's stream counts (1000,5000,9500)")
    parser.add_argument("--events", type=int, help="events per stream in B (30; --quick: 5)")
    parser.add_argument("--duration", type=int, help="seconds of each wrk run in A (10; --quick: 3)")
    parser.add_argument("--no-install", action="store_true", help="fail instead of installing missing tools")
    parser.add_argument("--keep-logs", action="store_true", help="keep the processes' logs (temp directory)")
    args = parser.parse_args(argv)
    if "gatehouse" not in args.peers:
        args.peers = ("gatehouse", *args.peers)
    args.peers = tuple(p for p in PEERS if p in args.peers)
    args.reps = args.reps or (1 if args.quick else 3)
    if args.reps < 1 or (args.b_reps is not None and args.b_reps < 1):
        parser.error("--reps and --b-reps must be at least 1")
    return args


def config(args: argparse.Namespace) -> Config:
    cfg = QUICK if args.quick else Config()
    if args.streams:
        cfg = dataclasses.replace(cfg, b_streams=args.streams)
    if args.events:
        cfg = dataclasses.replace(cfg, b_events=args.events)
    if args.duration:
        cfg = dataclasses.replace(cfg, a_seconds=args.duration)
    return cfg


# -- the environment -------------------------------------------------------------------------


def _output(argv: list[str]) -> str:
    try:
        result = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    return (result.stdout + result.stderr).strip()


def _npm_version(name: str) -> str:
    try:
        package = json.loads((NEXTJS_DIR / "node_modules" / name / "package.json").read_text())
        return str(package["version"])
    except (OSError, ValueError, KeyError):
        return "?"


def versions(peers: tuple[str, ...]) -> list[str]:
    def py(name: str) -> str:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            return "?"

    lines = [
        f"gatehouse: Python {platform.python_version()}, Tornado {py('tornado')}, uvloop {py('uvloop')}, "
        f"cryptography {py('cryptography')}"
    ]
    if "nextjs" in peers:
        lines.append(
            f"nextjs: Node.js {_output(['node', '--version'])}, Next.js {_npm_version('next')}, "
            f"next-auth {_npm_version('next-auth')}, React {_npm_version('react')}"
        )
    if "fastapi" in peers:
        lines.append(
            f"fastapi: FastAPI {py('fastapi')}, Starlette {py('starlette')}, uvicorn {py('uvicorn')}, "
            f"httptools {py('httptools')}, uvloop {py('uvloop')}, httpx {py('httpx')}"
        )
    if "nginx" in peers:
        nginx = nginx_path()
        lines.append(f"nginx: {_output([nginx, '-v']).replace('nginx version: ', '') if nginx else '?'} (Debian)")
    wrk = shutil.which("wrk")
    if wrk:
        lines.append(f"load: {_output([wrk, '-v']).splitlines()[0].split(' Copyright')[0]}; Python client for B-E")
    return lines


def machine() -> str:
    model, mem = "?", "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem = f"{int(line.split()[1]) / 1024**2:.0f} GiB"
                break
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return (
        f"{os.cpu_count()} cores ({model}), {mem} RAM, Linux {platform.release()}, open-file limit {hard:,}; "
        "upstream, peer and load client on the same machine"
    )


def _load() -> str:
    return ", ".join(f"{v:.2f}" for v in os.getloadavg())


# -- the run ---------------------------------------------------------------------------------


def _brief(metrics: Metrics) -> str:
    parts = []
    for key, value in metrics.items():
        if value is None:
            continue
        if isinstance(value, float):
            text = f"{value:,.0f}" if abs(value) >= 100 else f"{value:.2f}" if abs(value) >= 1 else f"{value:.4f}"
            parts.append(f"{key}={text}")
        else:
            parts.append(f"{key}={value}")
    return " ".join(parts)


async def run_all(
    args: argparse.Namespace, cfg: Config, procs: Processes, tmp: Path, results: Results, failures: list[str]
) -> None:
    claims = {
        "name": "Bench User",
        "email": "bench@example.com",
        "sub": "bench-user",
        "access_token": "bench-access-token-6f1d2c9a5e",
        "expires_at": int(time.time()) + 30 * 24 * 3600,
    }
    cookie, minted_by = mint_cookie(json.dumps(claims), use_node="nextjs" in args.peers)
    print(f"bench: session cookie minted by {minted_by}", flush=True)
    args.minted_by = minted_by
    bench = Bench(procs, tmp, cookie)
    await bench.start_upstream()
    peers: tuple[str, ...] = args.peers

    async def measure(key: str, reps: int, run: Callable[[Peer], Awaitable[Metrics]]) -> None:
        results[key] = {}
        for rep in range(reps):
            order = peers[rep % len(peers) :] + peers[: rep % len(peers)]
            for name in order:
                if key == "C" and name == "direct":
                    continue  # a slow reader on the upstream itself measures nothing: no proxy
                started = time.monotonic()
                try:
                    peer = await bench.start_peer(name)
                except (SetupError, OSError) as exc:
                    failures.append(f"{key} rep {rep + 1}: {name} did not start: {exc}")
                    print(f"bench: {failures[-1]}", flush=True)
                    continue
                try:
                    metrics = await run(peer)
                except Exception as exc:
                    failures.append(f"{key} rep {rep + 1}: {name}: {type(exc).__name__}: {exc}")
                    print(f"bench: {failures[-1]}", flush=True)
                    continue
                finally:
                    bench.stop_peer(peer)
                results[key].setdefault(name, []).append(metrics)
                took = time.monotonic() - started
                print(f"  {key} {rep + 1}/{reps} {name:<9} {_brief(metrics)}  ({took:.0f} s)", flush=True)

    for scenario in (s for s in ORDER if s in args.only):
        print(f"bench: scenario {scenario} (load {_load()})", flush=True)
        if scenario == "A":
            await measure("A", args.reps, lambda p: scenarios.json_get(p, cfg, cookie))
        elif scenario == "C":
            await measure("C", args.reps, lambda p: scenarios.slow_reader(p, cfg, cookie))
        elif scenario == "D":
            await measure("D", args.reps, lambda p: scenarios.disconnect(p, cfg, cookie, bench.upstream_port))
        elif scenario == "E":
            await measure("E", args.reps, lambda p: scenarios.upload(p, cfg, cookie))
        elif scenario == "F":
            for count in cfg.f_streams:

                def run_token_rate(p: Peer, count: int = count) -> Awaitable[Metrics]:
                    return scenarios.token_rate(p, cfg, cookie, count)

                await measure(f"F{count}", args.reps, run_token_rate)
        else:
            for count in cfg.b_streams:

                def run_streams(p: Peer, count: int = count) -> Awaitable[Metrics]:
                    return scenarios.streams(p, cfg, cookie, count)

                await measure(f"B{count}", args.b_reps or args.reps, run_streams)


def _run_loop(coro: Awaitable[None]) -> None:
    """Run ``coro`` on uvloop (asyncio without it). Ctrl-C (asyncio's own SIGINT handling) and
    SIGTERM cancel it, so every ``finally`` stops what it started; either ends in
    `asyncio.CancelledError` or `KeyboardInterrupt` here."""

    async def main() -> None:
        task = asyncio.current_task()
        assert task is not None
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
        await coro

    try:
        import uvloop

        uvloop.run(main())
    except ImportError:
        asyncio.run(main())


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    cfg = config(args)
    scenario_order = tuple(s for s in SCENARIOS if s in args.only)
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # the peers and the client inherit it
    try:
        ensure_tools(args.peers, scenario_order, install=not args.no_install)
    except SetupError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2
    command = "python bench/run.py" + (" " + shlex.join(argv) if argv else "")
    load_before = _load()
    started = datetime.datetime.now()
    tmp = Path(tempfile.mkdtemp(prefix="gatehouse-bench-"))
    procs = Processes(tmp)
    results: Results = {}
    failures: list[str] = []
    interrupted = False
    try:
        _run_loop(run_all(args, cfg, procs, tmp, results, failures))
    except (KeyboardInterrupt, asyncio.CancelledError):
        interrupted = True
        print("bench: interrupted; stopping what it started", file=sys.stderr)
    except Exception as exc:
        failures.append(f"the run stopped: {type(exc).__name__}: {exc}")
        print(f"bench: {failures[-1]}", file=sys.stderr)
    finally:
        procs.stop_all()
    elapsed = (datetime.datetime.now() - started).total_seconds()
    header = [
        f"## gatehouse and its peers, {started:%Y-%m-%d %H:%M}" + (" (interrupted: partial)" if interrupted else ""),
        "",
        f"- Command: `{command}`{' (quick smoke run)' if args.quick else ''}; took {elapsed / 60:.1f} min",
        f"- Machine: {machine()}",
        f"- Load average (1, 5, 15 min) before: {load_before}; after: {_load()}",
        *(f"- {line}" for line in versions(args.peers)),
        f"- Session cookie: next-auth v4 JWE minted by {getattr(args, 'minted_by', '?')}; the same for every peer",
    ]
    b_reps = args.b_reps or args.reps
    reps = f"{args.reps} repetition{'s' if args.reps != 1 else ''}"
    if "B" in args.only and b_reps != args.reps:
        reps += f" ({b_reps} for B)"
    report = render(results, cfg, args.peers, reps, header, failures)
    out_dir = ROOT / "bench" / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = out_dir / f"{started:%Y%m%d-%H%M%S}"
    stem.with_suffix(".md").write_text(report)
    stem.with_suffix(".json").write_text(json.dumps({"command": command, "results": results}, indent=1))
    print()
    print(report)
    print(f"bench: written to {stem.with_suffix('.md').relative_to(ROOT)} (raw figures: .json)")
    errors = any((m.get("errors") or 0) > 0 for runs in results.values() for ms in runs.values() for m in ms)
    if args.keep_logs or failures or interrupted or errors:
        print(f"bench: process logs in {tmp}")
    else:
        shutil.rmtree(tmp, ignore_errors=True)
    return 130 if interrupted else 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
