"""The processes of the peer benchmark (``bench/run.py``): tools, the upstream, the peers.

* `Processes` starts every process of a run in its own process group, logs it to a file in the
  run's temporary directory, and stops it (and only it: by its process group id) on `stop` /
  `stop_all`, including on Ctrl-C and errors.
* `ensure_tools` installs what the selected peers and scenarios need when it is missing: the
  Python peer's packages (``requirements-bench.txt``), Debian's ``nginx`` and ``wrk`` (apt), and
  the Next.js peer (``npm ci`` and ``next build`` when its build is missing or stale).
* `Bench.start_peer` starts one peer on a free port and waits until it answers an
  authenticated request; `Peer.rss_kib` is the RSS of its whole process tree.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from bench.streams import SECRET, free_port, wait_listening

__all__ = [
    "BENCH",
    "COOKIE_NAME",
    "DEFAULT_PEERS",
    "NEXTJS_DIR",
    "PEERS",
    "ROOT",
    "SECRET",
    "Bench",
    "Peer",
    "Processes",
    "SetupError",
    "ensure_tools",
    "fetch",
    "mint_cookie",
    "runtime_python",
    "tree_cpu_seconds",
    "tree_rss_kib",
]

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
NEXTJS_DIR = BENCH / "peers" / "nextjs"
NEXT_BIN = NEXTJS_DIR / "node_modules" / "next" / "dist" / "bin" / "next"
# "gatehouse-tornado": gatehouse itself with SERVER_IMPL=tornado (Tornado's HTTPServer on the
# browser side instead of gatehouse's own connection), so both are measured side by side.
# "gatehouse-py3.12" / "-py3.13": gatehouse on another Python (issue 12's runtime lever), in its
# own venv (.venv-3.12, .venv-3.13) built from requirements.txt; only when asked for by --peers.
PEERS = (
    "gatehouse",
    "gatehouse-tornado",
    "gatehouse-py3.12",
    "gatehouse-py3.13",
    "gatehouse-baseline",
    "nextjs",
    "fastapi",
    "nginx",
    "direct",
)
# "gatehouse-baseline": gatehouse from another checkout (GATEHOUSE_BASELINE=<path>, e.g. a git
# worktree of an earlier commit), to measure a lever against the code before it in one run.
DEFAULT_PEERS = tuple(p for p in PEERS if not p.startswith(("gatehouse-py", "gatehouse-baseline")))
COOKIE_NAME = "next-auth.session-token"
UPLOAD_LIMIT = 2 * 1024**3  # gatehouse's MAX_BODY_BYTES in the bench: scenario E sends 1 GiB
MIN_NODE = (20, 9)  # Next.js 16


class SetupError(Exception):
    """A tool the run needs is missing and could not be installed."""


def _base_env() -> dict[str, str]:
    keep = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR")
    return {k: os.environ[k] for k in keep if k in os.environ}


# -- processes -------------------------------------------------------------------------------


class Processes:
    """Every process a run started. Each gets its own session (so a terminal's Ctrl-C reaches
    only the harness, which then stops them in order) and a log file under ``log_dir``."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.running: list[subprocess.Popen[bytes]] = []

    def start(
        self, name: str, argv: list[str], env: dict[str, str], cwd: Path | None = None
    ) -> subprocess.Popen[bytes]:
        with (self.log_dir / f"{name}.log").open("ab") as log:
            proc = subprocess.Popen(
                argv,
                env=env,
                cwd=cwd or ROOT,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.running.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes], grace: float = 10.0) -> None:
        """SIGTERM to the process's group, SIGKILL after ``grace`` seconds, then SIGKILL to any
        member of the group left behind (a worker the leader did not wait for)."""
        if proc.poll() is None:
            _signal_group(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                _signal_group(proc.pid, signal.SIGKILL)
                proc.wait(timeout=grace)
        _signal_group(proc.pid, signal.SIGKILL)
        if proc in self.running:
            self.running.remove(proc)

    def stop_all(self) -> None:
        for proc in reversed(list(self.running)):
            try:
                self.stop(proc)
            except (OSError, subprocess.SubprocessError) as exc:
                print(f"bench: could not stop process {proc.pid}: {exc}", file=sys.stderr)


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _tree(pid: int) -> list[int]:
    """``pid`` and its descendants."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        try:
            tasks = list(Path(f"/proc/{current}/task").iterdir())
        except OSError:
            continue
        for task in tasks:
            with contextlib.suppress(OSError):
                todo.extend(int(child) for child in (task / "children").read_text().split())
    return found


def tree_cpu_seconds(pid: int) -> float:
    """User plus system CPU time of ``pid`` and its descendants, seconds."""
    ticks = 0
    for current in _tree(pid):
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = Path(f"/proc/{current}/stat").read_text().rsplit(")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    return ticks / os.sysconf("SC_CLK_TCK")


def tree_rss_kib(pid: int) -> int:
    """The summed RSS of ``pid`` and its descendants, KiB (0 once it has exited)."""
    total, todo = 0, [pid]
    while todo:
        current = todo.pop()
        try:
            status = Path(f"/proc/{current}/status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
                break
        try:
            tasks = list(Path(f"/proc/{current}/task").iterdir())
        except OSError:
            continue
        for task in tasks:
            try:
                todo.extend(int(child) for child in (task / "children").read_text().split())
            except OSError:
                continue
    return total


# -- tools ---------------------------------------------------------------------------------


def _run(argv: list[str], cwd: Path | None = None, env: dict[str, str] | None = None) -> None:
    print(f"bench: $ {' '.join(argv)}", flush=True)
    result = subprocess.run(argv, cwd=cwd, env=env, check=False)
    if result.returncode != 0:
        raise SetupError(f"{' '.join(argv)} failed with exit status {result.returncode}")


def _apt_install(packages: list[str]) -> None:
    sudo: list[str] = []
    if os.geteuid() != 0:
        if shutil.which("sudo") is None:
            raise SetupError(f"{', '.join(packages)} missing and not root: apt-get install -y {' '.join(packages)}")
        sudo = ["sudo", "-n"]
    if shutil.which("apt-get") is None:
        raise SetupError(f"{', '.join(packages)} missing and no apt-get to install them with")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    _run([*sudo, "apt-get", "update"], env=env)
    _run([*sudo, "apt-get", "install", "-y", *packages], env=env)


def nginx_path() -> str | None:
    return shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx", "/sbin/nginx") if os.access(p, os.X_OK)), None)


def node_version() -> tuple[int, int] | None:
    node = shutil.which("node")
    if node is None:
        return None
    out = subprocess.run([node, "--version"], capture_output=True, text=True, check=False).stdout.strip()
    try:
        major, minor = out.lstrip("v").split(".")[:2]
        return int(major), int(minor)
    except ValueError:
        return None


def _stale(target: Path, sources: list[Path]) -> bool:
    if not target.exists():
        return True
    built = target.stat().st_mtime
    return any(source.stat().st_mtime > built for source in sources if source.exists())


def ensure_tools(peers: tuple[str, ...], scenarios: tuple[str, ...], install: bool) -> None:
    """Install what ``peers`` and ``scenarios`` need (or, without ``install``, say what is missing)."""
    missing_py = [m for m in ("fastapi", "uvicorn", "httptools", "uvloop") if importlib.util.find_spec(m) is None]
    if "fastapi" in peers and missing_py:
        if not install:
            raise SetupError(
                f"Python packages missing: {', '.join(missing_py)} (pip install -r requirements-bench.txt)"
            )
        _run([sys.executable, "-m", "pip", "install", "--quiet", "-r", str(ROOT / "requirements-bench.txt")])
    apt = []
    if "nginx" in peers and nginx_path() is None:
        apt.append("nginx")
    if "A" in scenarios and shutil.which("wrk") is None:
        apt.append("wrk")
    if apt:
        if not install:
            raise SetupError(f"missing: {', '.join(apt)} (apt-get install -y {' '.join(apt)})")
        _apt_install(apt)
    if "nextjs" in peers:
        _ensure_nextjs(install)
    if "gatehouse-baseline" in peers:
        baseline_root()
    for peer in peers:
        if peer.startswith("gatehouse-py"):
            _ensure_runtime(peer.removeprefix("gatehouse-py"), install)


def baseline_root() -> Path:
    """The checkout peer ``gatehouse-baseline`` runs (``GATEHOUSE_BASELINE``)."""
    path = os.environ.get("GATEHOUSE_BASELINE")
    if not path or not (Path(path) / "server.py").exists():
        raise SetupError("gatehouse-baseline needs GATEHOUSE_BASELINE=<a gatehouse checkout>")
    return Path(path)


def runtime_python(version: str) -> Path:
    """The interpreter of the ``.venv-<version>`` gatehouse runs on as peer ``gatehouse-py<version>``."""
    return ROOT / f".venv-{version}" / "bin" / "python"


def _ensure_runtime(version: str, install: bool) -> None:
    python = runtime_python(version)
    stamp = python.parent.parent / ".installed"
    if not _stale(stamp, [ROOT / "requirements.txt"]):
        return
    base = shutil.which(f"python{version}") or next(
        (str(p) for p in sorted(Path.home().glob(f".pyenv/versions/{version}.*/bin/python")) if p.exists()), None
    )
    if base is None or not install:
        raise SetupError(
            f"gatehouse-py{version} needs python{version} and .venv-{version} (pip install -r requirements.txt)"
        )
    _run([base, "-m", "venv", str(python.parent.parent)])
    _run(
        [
            str(python),
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "-r",
            str(ROOT / "requirements.txt"),
        ]
    )
    stamp.touch()


def _ensure_nextjs(install: bool) -> None:
    version = node_version()
    if version is None or version < MIN_NODE:
        want = ".".join(map(str, MIN_NODE))
        raise SetupError(
            f"the nextjs peer needs Node.js >= {want} with npm (found {version or 'none'}); "
            "install it (https://nodejs.org) or leave the peer out with --peers"
        )
    lock = NEXTJS_DIR / "package-lock.json"
    installed = NEXTJS_DIR / "node_modules" / ".package-lock.json"
    if _stale(installed, [lock]):
        if not install:
            raise SetupError(f"the nextjs peer is not installed: cd {NEXTJS_DIR} && npm ci")
        _run(["npm", "ci", "--no-audit", "--no-fund"], cwd=NEXTJS_DIR)
    sources = [lock, NEXTJS_DIR / "next.config.mjs", NEXTJS_DIR / "tsconfig.json", *NEXTJS_DIR.glob("app/**/*.ts")]
    if _stale(NEXTJS_DIR / ".next" / "BUILD_ID", sources):
        if not install:
            raise SetupError(f"the nextjs peer is not built: cd {NEXTJS_DIR} && npx next build")
        env = {**os.environ, "NEXT_TELEMETRY_DISABLED": "1"}
        _run(["node", str(NEXT_BIN), "build"], cwd=NEXTJS_DIR, env=env)


def mint_cookie(claims_json: str, use_node: bool) -> tuple[str, str]:
    """A next-auth v4 session cookie value for ``claims_json`` and who minted it: next-auth's own
    ``encode`` (``bench/peers/nextjs/mint.mjs``) when the Next.js peer is installed, else
    gatehouse's codec (the same format; the interop tests check they agree)."""
    if use_node and (NEXTJS_DIR / "node_modules" / "next-auth").is_dir():
        result = subprocess.run(
            ["node", "mint.mjs", claims_json],
            cwd=NEXTJS_DIR,
            env={**_base_env(), "NEXTAUTH_SECRET": SECRET},
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode == 0 and result.stdout.strip():
            return result.stdout.strip(), "next-auth `encode` (next-auth/jwt)"
        print(f"bench: node mint.mjs failed, minting in Python: {result.stderr.strip()}", file=sys.stderr)
    import json

    from auth.nextauth import NextAuthV4Codec

    return NextAuthV4Codec(SECRET).encode(json.loads(claims_json)), "gatehouse's NextAuthV4Codec"


# -- HTTP ------------------------------------------------------------------------------------


async def fetch(
    port: int, target: str, headers: dict[str, str] | None = None, seconds: float = 10.0
) -> tuple[int, bytes]:
    """A one-off ``GET`` on 127.0.0.1:``port`` (``Connection: close``): status and body."""

    async def go() -> tuple[int, bytes]:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
            writer.write(
                f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{extra}Connection: close\r\n\r\n".encode()
            )
            return await read_response(reader)
        finally:
            writer.close()

    return await asyncio.wait_for(go(), seconds)


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """One HTTP/1.1 response (Content-Length, chunked, or to EOF): status and body."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    fields = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
    if "content-length" in fields:
        return status, await reader.readexactly(int(fields["content-length"]))
    if "chunked" in fields.get("transfer-encoding", "").lower():
        body = bytearray()
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";", 1)[0], 16)
            if size == 0:
                await reader.readuntil(b"\r\n")
                return status, bytes(body)
            body += await reader.readexactly(size + 2)
            del body[-2:]
    return status, await reader.read()


# -- peers -----------------------------------------------------------------------------------


@dataclasses.dataclass
class Peer:
    """One running peer: where to send requests and, for a proxy, its process."""

    name: str
    port: int
    prefix: str  # "/api/proxy" for the proxies, "" for direct
    proc: subprocess.Popen[bytes] | None

    def rss_kib(self) -> int | None:
        return None if self.proc is None else tree_rss_kib(self.proc.pid)

    def cpu_seconds(self) -> float | None:
        return None if self.proc is None else tree_cpu_seconds(self.proc.pid)

    def alive(self) -> bool:
        return self.proc is None or self.proc.poll() is None


class Bench:
    """The upstream of a run and the peers it starts, one at a time, on fresh ports."""

    def __init__(self, procs: Processes, tmp: Path, cookie: str) -> None:
        self.procs = procs
        self.tmp = tmp
        self.cookie = cookie
        self.upstream_port = 0
        self.upstream: subprocess.Popen[bytes] | None = None

    async def start_upstream(self) -> None:
        self.upstream_port = free_port()
        argv = [sys.executable, str(BENCH / "upstream_ext.py"), "--port", str(self.upstream_port)]
        self.upstream = self.procs.start("upstream", argv, _base_env())
        await wait_listening(self.upstream_port)

    def auth_headers(self) -> dict[str, str]:
        return {"Cookie": f"{COOKIE_NAME}={self.cookie}"}

    async def start_peer(self, name: str) -> Peer:
        if name == "direct":
            peer = Peer(name, self.upstream_port, "", None)
        else:
            port = free_port()
            argv, env, cwd = self._command(name, port)
            peer = Peer(name, port, "/api/proxy", self.procs.start(name, argv, {**_base_env(), **env}, cwd))
        try:
            await self._wait_ready(peer)
        except BaseException:
            self.stop_peer(peer)
            raise
        return peer

    def stop_peer(self, peer: Peer) -> None:
        if peer.proc is not None:
            self.procs.stop(peer.proc)

    def _command(self, name: str, port: int) -> tuple[list[str], dict[str, str], Path | None]:
        backend = f"http://127.0.0.1:{self.upstream_port}"
        if name.startswith("gatehouse"):
            env = {
                "SERVER_IMPL": "tornado" if name == "gatehouse-tornado" else "gatehouse",
                "BACKEND_URL": backend,
                "SESSION_SECRET": SECRET,
                "HOST": "127.0.0.1",
                "PORT": str(port),
                "LOG_LEVEL": "INFO",  # one JSON access line per request, as in production
                "MAX_BODY_BYTES": str(UPLOAD_LIMIT),
            }
            python = (
                runtime_python(name.removeprefix("gatehouse-py")) if name.startswith("gatehouse-py") else sys.executable
            )
            root = baseline_root() if name == "gatehouse-baseline" else ROOT
            return [str(python), str(root / "server.py")], env, root
        if name == "fastapi":
            env = {"BACKEND_URL": backend, "SESSION_SECRET": SECRET}
            return [sys.executable, str(BENCH / "peers" / "fastapi_peer.py"), "--port", str(port)], env, ROOT
        if name == "nextjs":
            env = {
                "BACKEND_URL": backend,
                "NEXTAUTH_SECRET": SECRET,
                "NODE_ENV": "production",
                "NEXT_TELEMETRY_DISABLED": "1",
            }
            argv = ["node", str(NEXT_BIN), "start", "-H", "127.0.0.1", "-p", str(port)]
            return argv, env, NEXTJS_DIR
        if name == "nginx":
            return self._nginx(port), {}, None
        raise ValueError(f"unknown peer {name!r}")

    def _nginx(self, port: int) -> list[str]:
        prefix = self.tmp / f"nginx-{port}"
        prefix.mkdir()
        for sub in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
            (prefix / sub).mkdir()
        values = {
            "@USER@": "user root;" if os.geteuid() == 0 else "",
            "@PREFIX@": str(prefix),
            "@NOFILE@": "20000",
            "@CONNECTIONS@": "19900",  # 9,500 streams hold two sockets each
            "@UPSTREAM_PORT@": str(self.upstream_port),
            "@PORT@": str(port),
        }
        conf = (BENCH / "peers" / "nginx.conf").read_text()
        for key, value in values.items():
            conf = conf.replace(key, value)
        (prefix / "nginx.conf").write_text(conf)
        nginx = nginx_path()
        if nginx is None:
            raise SetupError("nginx is not installed")
        return [nginx, "-p", str(prefix), "-c", str(prefix / "nginx.conf"), "-e", "stderr"]

    async def _wait_ready(self, peer: Peer, seconds: float = 60.0) -> None:
        """Listening, and answering an authenticated ``GET /json`` with 200 (a few times: lazy
        imports, route compilation and connection pools are warmed before anything is measured)."""
        deadline = time.monotonic() + seconds
        while True:
            if not peer.alive():
                raise SetupError(f"{peer.name} exited with status {peer.proc.returncode if peer.proc else '?'}")
            try:
                status, body = await fetch(peer.port, f"{peer.prefix}/json", self.auth_headers(), seconds=5)
            except (OSError, asyncio.IncompleteReadError, TimeoutError, ValueError, IndexError):
                status, body = 0, b""
            if status == 200:
                break
            if time.monotonic() > deadline:
                raise SetupError(f"{peer.name} did not answer GET /json with 200 (last: {status} {body[:200]!r})")
            await asyncio.sleep(0.1)
        for _ in range(20):
            await fetch(peer.port, f"{peer.prefix}/json", self.auth_headers())
        await asyncio.sleep(0.3)
