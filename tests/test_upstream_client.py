"""The gateway's upstream client (``upstream/client.py``): aborting a fetch in any phase.

A browser that goes away must free the upstream at once: `AbortableRequest.abort` fails the
fetch and closes its socket whether the fetch is waiting to connect, connecting or streaming.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from tests.fakes.raw import RawUpstream, Script
from upstream.client import AbortableRequest, UpstreamAborted, UpstreamClient

Reader = asyncio.StreamReader
Writer = asyncio.StreamWriter


@pytest.fixture
def silent_upstream(
    upstreams: Callable[[Script], Awaitable[RawUpstream]],
) -> Callable[[], Awaitable[RawUpstream]]:
    """An upstream that sends a response head, then nothing."""

    async def script(reader: Reader, writer: Writer) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(30)

    return lambda: upstreams(script)


def now() -> float:
    return asyncio.get_running_loop().time()


@pytest.mark.gen_test(timeout=10)
async def test_abort_fails_a_streaming_fetch_and_closes_its_socket(silent_upstream: Any) -> None:
    upstream = await silent_upstream()
    client = UpstreamClient(connect_timeout=5)
    header_lines: list[str] = []
    head_done = asyncio.Event()

    def on_header(line: str) -> None:
        header_lines.append(line)
        if line == "\r\n":
            head_done.set()

    async def on_chunk(chunk: bytes) -> None:
        pass

    request = AbortableRequest(upstream.url, header_callback=on_header, streaming_callback=on_chunk)
    fetching = asyncio.ensure_future(client.fetch(request))
    try:
        await asyncio.wait_for(head_done.wait(), 2)
        assert header_lines[0].startswith("HTTP/1.1 200")

        # Control: left alone, this fetch would wait for the silent upstream.
        await asyncio.sleep(0.2)
        assert not fetching.done()
        assert client.active_fetches == 1
        assert not upstream.closed.is_set()

        aborted_at = now()
        request.abort(UpstreamAborted("test"))
        with pytest.raises(UpstreamAborted) as raised:
            await asyncio.wait_for(asyncio.shield(fetching), 1)
        assert now() - aborted_at < 0.1
        assert raised.value.args[0] == "test"
        await asyncio.wait_for(upstream.closed.wait(), 1)
        assert upstream.closed_at[0] - aborted_at < 0.1
        assert client.active_fetches == 0
        request.abort(UpstreamAborted("again"))  # idempotent: no error, nothing changes
    finally:
        fetching.cancel()
        client.close()


@pytest.mark.parametrize("moment", ["before_the_connection_exists", "while_connecting"])
@pytest.mark.gen_test(timeout=10)
async def test_abort_before_the_upstream_socket_is_ready(silent_upstream: Any, moment: str) -> None:
    upstream = await silent_upstream()
    client = UpstreamClient(connect_timeout=5)
    request = AbortableRequest(upstream.url)
    fetching = asyncio.ensure_future(client.fetch(request))
    try:
        if moment == "while_connecting":
            await asyncio.sleep(0)  # fetch() has started the exchange; its connect is pending
            assert request._exchange is not None and client.active_fetches == 1
        else:
            assert request._exchange is None
        aborted_at = now()
        request.abort(UpstreamAborted("early"))

        with pytest.raises(UpstreamAborted):
            await asyncio.wait_for(asyncio.shield(fetching), 1)
        assert now() - aborted_at < 0.1
        assert client.active_fetches == 0
        await asyncio.sleep(0.3)
        assert upstream.heads == []  # no request ever reached the upstream
        assert len(upstream.closed_at) == upstream.connections  # nor was a socket left open
    finally:
        fetching.cancel()
        client.close()
