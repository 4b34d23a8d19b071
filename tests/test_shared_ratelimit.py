"""The chat's rate limit across instances: one bucket per user in a real redis-server.

Two gatehouses run as separate processes (``python server.py``) in front of the fake Dify and
Supabase; without the shared bucket each would allow the user its own ``CHAT_RATE_PER_MINUTE``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable

import pytest
from tornado.httpclient import AsyncHTTPClient, HTTPResponse

from tests.fakes.dify import FakeDify, Stream, message_end
from tests.fakes.supabase import FakeSupabase
from tests.instances import Instance, instances
from tests.redis_server import RedisServer, redis_server

__all__ = ["instances", "redis_server"]  # fixtures used here

USER = "2b1f6a0e-7c3d-4e5f-8a9b-0c1d2e3f4a5b"
Instances = Callable[..., Awaitable[list[Instance]]]


async def chats(urls: list[str], token: str) -> list[HTTPResponse]:
    """One ``POST /api/chat`` to each URL, all at once."""
    client = AsyncHTTPClient(force_instance=True, max_clients=len(urls) + 4)
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    body = json.dumps({"message": "hi", "stream": False})
    try:
        return await asyncio.gather(
            *(client.fetch(url, method="POST", headers=headers, body=body, raise_error=False) for url in urls)
        )
    finally:
        client.close()


@pytest.mark.gen_test(timeout=30)
async def test_30_chats_over_two_instances_spend_one_limit_of_10(
    dify: FakeDify, supabase: FakeSupabase, redis_server: RedisServer, instances: Instances
) -> None:
    dify.default_script = Stream([message_end()])
    first, second = await instances(
        2,
        DIFY_API_KEY=dify.api_key,
        DIFY_API_URL=dify.url,
        SUPABASE_URL=supabase.url,
        SUPABASE_JWT_SECRET=supabase.jwt_secret or "",
        CHAT_RATE_PER_MINUTE="10",
        REDIS_URL=redis_server.url,
    )

    # Alternating, and all at once: the check and the spend are one atomic step in Redis.
    responses = await chats([(first, second)[n % 2].url + "/api/chat" for n in range(30)], supabase.mint(USER))

    assert sorted(r.code for r in responses) == [200] * 10 + [429] * 20
    assert len(dify.calls("/chat-messages")) == 10
    for limited in (r for r in responses if r.code == 429):
        assert json.loads(limited.body)["error"] == "rate_limited"
        # The next token is 6 s away (10 a minute), less the moments the test took.
        assert limited.headers["Retry-After"] in ("5", "6"), limited.headers["Retry-After"]
    assert {n % 2 for n, r in enumerate(responses) if r.code == 429} == {0, 1}  # both instances refuse
    keys = list(await redis_server.dump())
    assert len(keys) == 1 and keys[0].startswith(b"gatehouse:ratelimit:chat:") and USER.encode() not in keys[0]
