"""The Next.js drop-in (``examples/nextjs``), built and started for the browser tests.

``next build`` writes the rewrites, with ``GATEHOUSE_URL`` in them, into
``.next/routes-manifest.json``: a build serves one gatehouse address. A build is reused while
it points at the wanted address and is newer than every source file; else the app is built
again (about 20 s). `preferred_gatehouse_port` lets the tests' gatehouse take the port of the
existing build, so a second run does not build again.

``next start`` then runs with the variables the app reads at run time: ``NEXTAUTH_SECRET``
(gatehouse's session secret), ``NEXTAUTH_URL``, ``BACKEND_URL`` (the demo backend's login, for
next-auth's Credentials provider), ``SUPABASE_URL`` and ``SUPABASE_ANON_KEY``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

from tests.browser.servers import Gatehouse, free_port, port_is_free

__all__ = ["APP", "NextApp", "build", "preferred_gatehouse_port", "start"]

APP = Path(__file__).resolve().parents[2] / "examples" / "nextjs"
NEXT = ["node", "node_modules/next/dist/bin/next"]
SOURCES = ("app", "lib", "next.config.mjs", "package.json", "package-lock.json")
BUILD_TIMEOUT = 300


def _env(**extra: str) -> dict[str, str]:
    keep = {name: os.environ[name] for name in ("PATH", "HOME", "LANG") if name in os.environ}
    return {**keep, "NEXT_TELEMETRY_DISABLED": "1", **extra}


def built_for() -> str | None:
    """The gatehouse origin the current build's rewrites point at, if it is newer than its sources."""
    manifest = APP / ".next" / "routes-manifest.json"
    build_id = APP / ".next" / "BUILD_ID"
    if not manifest.exists() or not build_id.exists():
        return None
    newest = max(p.stat().st_mtime for name in SOURCES for p in _files(APP / name))
    if build_id.stat().st_mtime < newest:
        return None
    rewrites = json.loads(manifest.read_text()).get("rewrites", {})
    rules = rewrites.get("afterFiles", []) if isinstance(rewrites, dict) else rewrites
    for rule in rules:
        if rule["source"] == "/api/proxy/:path*":
            return str(rule["destination"]).removesuffix("/api/proxy/:path*")
    return None


def _files(path: Path) -> list[Path]:
    return [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]


def preferred_gatehouse_port() -> int:
    """The port the existing build expects gatehouse on, when it is free; else any free port."""
    origin = built_for()
    if origin is not None and origin.startswith("http://127.0.0.1:"):
        port = int(origin.rsplit(":", 1)[1])
        if port_is_free(port):
            return port
    return free_port()


def _run(command: list[str], env: dict[str, str], what: str) -> None:
    result = subprocess.run(command, cwd=APP, env=env, capture_output=True, text=True, timeout=BUILD_TIMEOUT)
    if result.returncode != 0:
        raise RuntimeError(f"{what} failed ({result.returncode}):\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}")


def build(gatehouse_url: str) -> None:
    """Install the locked dependencies if they are missing, and build for ``gatehouse_url``."""
    if shutil.which("node") is None:
        raise RuntimeError("node is not installed: the Next.js tests need Node.js 20.9 or later")
    if not (APP / "node_modules" / "next").exists():
        _run(["npm", "ci", "--no-audit", "--no-fund"], _env(), "npm ci in examples/nextjs")
    if built_for() != gatehouse_url:
        _run([*NEXT, "build"], _env(GATEHOUSE_URL=gatehouse_url), "next build")


class NextApp:
    """``next start`` beside ``gatehouse``, on a free port."""

    def __init__(self, gatehouse: Gatehouse, log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        supabase = gatehouse.settings.supabase
        assert supabase is not None
        env = _env(
            NEXTAUTH_SECRET=gatehouse.secret,
            NEXTAUTH_URL=self.url,
            BACKEND_URL=gatehouse.demo.backend_url,
            SUPABASE_URL=supabase.url,
            SUPABASE_ANON_KEY=supabase.anon_key or "",
        )
        self._log = log.open("w")
        self.process = subprocess.Popen(
            [*NEXT, "start", "-p", str(self.port), "-H", "127.0.0.1"],
            cwd=APP,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self.log = log

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"next start exited {self.process.returncode}:\n{self.log.read_text()}")
            try:
                with urllib.request.urlopen(f"{self.url}/api/auth/providers", timeout=5) as answer:
                    if answer.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.2)
        raise RuntimeError(f"next start did not answer within {timeout} s:\n{self.log.read_text()}")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
        self._log.close()


def start(gatehouse: Gatehouse, log: Path) -> NextApp:
    build(gatehouse.url)
    app = NextApp(gatehouse, log)
    try:
        app.wait_ready()
    except BaseException:
        app.stop()
        raise
    return app
