"""The demo upstreams in a process of their own, for ``make load``'s run with ``WORKERS=2``.

Demo mode runs one gatehouse process with its demo upstreams inside it (``demo/``); several
workers need the upstreams outside. This starts the same three (backend, Dify, Supabase Auth)
on free loopback ports through ``demo.start_demo``, then prints, one per line, the environment a
gatehouse needs to use them (``KEY=value``) and the demo banner's ``export`` lines (a session
cookie and a Supabase token for the demo user), then ``ready``, and serves until terminated.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from demo import start_demo
from settings import load_settings


async def main() -> None:
    settings, banner = await start_demo(load_settings({}, dotenv=None))
    assert settings.backend is not None and settings.supabase is not None and settings.session_secret
    environment = {
        "BACKEND_URL": str(settings.backend),
        "SESSION_SECRET": settings.session_secret,
        "DIFY_API_URL": settings.dify_api_url,
        "DIFY_API_KEY": settings.dify_api_key or "",
        "SUPABASE_URL": settings.supabase.url,
        "SUPABASE_ANON_KEY": settings.supabase.anon_key or "",
    }
    for name, value in environment.items():
        print(f"{name}={value}")
    for line in banner.splitlines():
        if line.startswith("export "):
            print(line)
    print("ready", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


if __name__ == "__main__":
    asyncio.run(main())
