"""`make run`'s demo mode, as a newcomer meets it: the README walkthrough, run verbatim.

The walkthrough's commands are taken from README.md and run with bash and curl against a real
``python server.py`` started with no configuration. The only change made to them is the port
(8000 may be taken on a test machine). Every ``# ->`` line is checked against the output of
the command above it; ``...`` in it stands for anything.
"""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.gateway_process import demo_server

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def walkthrough() -> list[tuple[str, str]]:
    readme = (ROOT / "README.md").read_text()
    block = readme.split("<!-- walkthrough:start", 1)[1].split("<!-- walkthrough:end", 1)[0]
    steps: list[tuple[str, str]] = []
    command = None
    for line in block.splitlines():
        if line.startswith("curl "):
            command = line
        elif line.startswith("# -> ") and command is not None:
            steps.append((command, line[len("# -> ") :]))
            command = None
    return steps


Demo = tuple[int, dict[str, str], subprocess.Popen[str]]  # port, the banner's exports, the process


@pytest.fixture(scope="module")
def demo() -> Iterator[Demo]:
    port = free_port()
    env = {"PATH": os.environ["PATH"], "PORT": str(port)}
    proc = subprocess.Popen(
        [sys.executable, "server.py"], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        for line in proc.stdout or ():
            lines.put(line)

    threading.Thread(target=pump, daemon=True).start()
    output, exports, deadline = [], dict[str, str](), time.monotonic() + 20
    while len(exports) < 2 and time.monotonic() < deadline:
        try:
            line = lines.get(timeout=0.5)
        except queue.Empty:
            continue
        output.append(line)
        match = re.match(r"export (GATEHOUSE_COOKIE|SUPABASE_TOKEN)='(.+)'$", line.strip())
        if match:
            exports[match.group(1)] = match.group(2)
    assert len(exports) == 2, "".join(output)
    yield port, exports, proc
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=20)


def test_demo_prints_a_cookie_a_token_and_curl_lines(demo: Demo) -> None:
    _, exports, _ = demo
    assert exports["GATEHOUSE_COOKIE"].startswith("next-auth.session-token=")
    assert exports["SUPABASE_TOKEN"].count(".") == 2  # a JWT
    assert len(walkthrough()) >= 12


@pytest.mark.parametrize(("command", "expected"), walkthrough())
def test_readme_walkthrough_works_verbatim(demo: Demo, command: str, expected: str) -> None:
    port, exports, _ = demo
    result = subprocess.run(
        ["bash", "-c", command.replace("127.0.0.1:8000", f"127.0.0.1:{port}")],
        cwd=ROOT,
        env={"PATH": os.environ["PATH"], **exports},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    position = 0
    for part in (p.strip() for p in expected.split("...")):
        if part:
            found = result.stdout.find(part, position)
            assert found >= 0, f"{part!r} not in output after position {position}:\n{result.stdout}"
            position = found + len(part)


def test_demo_stops_cleanly_on_sigterm() -> None:
    port = free_port()
    proc = demo_server(port)
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=20)
    finally:
        proc.kill()
    assert proc.returncode == 0, out
    assert '"event_loop": "uvloop"' in out
    assert "Traceback" not in out


def test_the_demo_backend_keeps_only_its_newest_items(demo: Demo) -> None:
    """A demo left running (or load-tested) must not grow without end: it keeps 100 items."""
    port, exports, _ = demo
    url = f"http://127.0.0.1:{port}/api/proxy/items"
    cookie = {"Cookie": exports["GATEHOUSE_COOKIE"]}
    for n in range(110):
        post = urllib.request.Request(
            url, json.dumps({"n": n}).encode(), {**cookie, "Content-Type": "application/json"}
        )
        with urllib.request.urlopen(post, timeout=10) as response:
            last = json.load(response)
    with urllib.request.urlopen(urllib.request.Request(url, headers=cookie), timeout=10) as response:
        items = json.load(response)["items"]
    assert len(items) == 100
    assert items[-1] == last and last["data"] == {"n": 109}
    assert [item["id"] for item in items] == list(range(last["id"] - 99, last["id"] + 1))  # ids still unique
