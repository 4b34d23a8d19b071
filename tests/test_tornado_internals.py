"""Fails loudly when a Tornado upgrade moves the private API gatehouse relies on.

``upstream/client.py`` aborts fetches through ``tornado.simple_httpclient`` internals
(``_connection_class``, ``_HTTPConnection._handle_exception`` / ``final_callback`` /
``stream``, ``_RequestProxy.request``), and gatehouse's handlers add private attributes to
`tornado.web.RequestHandler` subclasses, which must never shadow Tornado's own (assigning
``self._headers`` in a handler once replaced Tornado's response headers).
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import gc
import inspect
import socket
import textwrap
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import tornado.web
from tornado.httpclient import AsyncHTTPClient, _RequestProxy
from tornado.iostream import IOStream
from tornado.simple_httpclient import SimpleAsyncHTTPClient, _HTTPConnection

from tests.fakes.raw import RawUpstream, Script
from upstream import client as upstream_client
from upstream.client import AbortableRequest, UpstreamAborted, UpstreamClient

HANDLERS = Path(__file__).resolve().parent.parent / "handlers"
Reader = asyncio.StreamReader
Writer = asyncio.StreamWriter


# -- the private names, statically -----------------------------------------------------------------


def test_simple_httpclient_private_names_still_exist() -> None:
    assert inspect.isclass(_HTTPConnection)
    handle = _HTTPConnection._handle_exception
    assert list(inspect.signature(handle).parameters) == ["self", "typ", "value", "tb"]
    assert "self.final_callback" in inspect.getsource(handle)  # it only acts while unanswered
    assert "self.stream.close()" in inspect.getsource(handle)
    # The client builds each connection through the overridable hook.
    assert callable(SimpleAsyncHTTPClient._connection_class)
    assert "self._connection_class()(" in inspect.getsource(SimpleAsyncHTTPClient._handle_request)
    # fetch wraps each request in a _RequestProxy holding the original as ``.request``.
    assert "_RequestProxy(request, self.defaults)" in inspect.getsource(AsyncHTTPClient.fetch)


def test_tornado_quirks_the_connection_subclass_corrects_are_still_there() -> None:
    """Each override in upstream/client.py answers one behaviour of Tornado 6.6.1's client.
    If one of these changes, revisit the override (and its test in test_relay.py)."""
    run = inspect.getsource(_HTTPConnection.run)
    # _NoDefaultContentType relies on this membership test, and on run() starting after __init__.
    assert '"Content-Type" not in self.request.headers' in run
    assert "application/x-www-form-urlencoded" in run
    assert "self.run()" in inspect.getsource(_HTTPConnection.__init__)
    # on_connection_close: a reset is raised from the close callback instead of answering.
    assert "raise self.stream.error" in inspect.getsource(_HTTPConnection.on_connection_close)
    # finish: a close-delimited body ends at any close, a reset included.
    from tornado.http1connection import HTTP1Connection

    until_close = inspect.getsource(HTTP1Connection._read_body_until_close)
    assert "except iostream.StreamClosedError:" in until_close
    assert "self.stream.error" in inspect.getsource(upstream_client._AbortableConnection.finish)


@pytest.mark.gen_test(timeout=5)
async def test_the_private_names_the_connection_pool_relies_on_still_exist() -> None:
    """``upstream/pool.py`` and the pooling half of ``_AbortableConnection``."""
    run = inspect.getsource(_HTTPConnection.run)
    assert "await self.tcp_client.connect(" in run  # the connector stands in for the TCPClient
    assert '"Connection" not in self.request.headers' in run  # else Tornado sends "close"
    assert "self.stream.close()" in inspect.getsource(_HTTPConnection._on_end_request)
    assert inspect.iscoroutinefunction(_HTTPConnection.headers_received)
    stream = IOStream(socket.socket())
    try:
        assert "_read_buffer_size" in vars(stream)  # unread bytes: out of step
    finally:
        stream.close()
    # run() returns only once the answer is read to its end (the stream is free to reuse).
    assert "await self.connection.read_response(self)" in inspect.getsource(_HTTPConnection._write_body)


@pytest.mark.gen_test(timeout=5)
async def test_the_abortable_client_builds_the_abortable_connection() -> None:
    client = upstream_client._AbortableClient(force_instance=True)
    try:
        connection_class = client._connection_class()
        assert connection_class is upstream_client._AbortableConnection
        assert issubclass(connection_class, _HTTPConnection)
    finally:
        client.close()


# -- the private names, live -------------------------------------------------------------------------


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

        # What AbortableRequest.abort relies on, on the live connection.
        connection = request._connection
        assert isinstance(connection, upstream_client._AbortableConnection)
        assert "final_callback" in vars(connection) and callable(connection.final_callback)
        assert isinstance(connection.stream, IOStream) and not connection.stream.closed()
        assert isinstance(connection.request, _RequestProxy)
        assert connection.request.request is request
        # The proxy applies the client's defaults: no total timeout, no decompression.
        assert connection.request.request_timeout == 0
        assert connection.request.decompress_response is False

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
        assert connection.final_callback is None
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
            await asyncio.sleep(0)  # fetch() has built the connection; its connect is pending
            connection = request._connection
            assert isinstance(connection, upstream_client._AbortableConnection)
            assert not hasattr(connection, "stream")
        else:
            assert request._connection is None
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


# -- handler attributes vs RequestHandler's -------------------------------------------------------------


@contextlib.contextmanager
def _no_gc() -> Iterator[None]:
    """CPython 3.11 can raise ``SystemError: AST constructor recursion depth mismatch`` when a
    garbage collection runs Python finalizers (e.g. earlier tests' abandoned tasks logging)
    in the middle of ``ast.parse``; collect first and keep the collector out of the parse."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def _private_attributes_assigned(source: str) -> set[str]:
    """``_x`` names assigned on ``self`` (plain, annotated, augmented, tuple targets,
    ``self.__dict__["_x"]``, ``setattr(self, "_x", ...)``) or at class level in ``source``."""
    found: set[str] = set()

    def target_names(target: ast.expr) -> Iterator[str]:
        if isinstance(target, (ast.Tuple, ast.List)):
            for element in target.elts:
                yield from target_names(element)
        elif isinstance(target, ast.Starred):
            yield from target_names(target.value)
        elif isinstance(target, ast.Attribute) and isinstance(target.value, ast.Name) and target.value.id == "self":
            yield target.attr
        elif (
            isinstance(target, ast.Subscript)
            and isinstance(target.value, ast.Attribute)
            and target.value.attr == "__dict__"
            and isinstance(target.value.value, ast.Name)
            and target.value.value.id == "self"
            and isinstance(target.slice, ast.Constant)
            and isinstance(target.slice.value, str)
        ):
            yield target.slice.value

    with _no_gc():
        tree = ast.parse(textwrap.dedent(source))
    for node in ast.walk(tree):
        targets: list[ast.expr] = []
        if isinstance(node, ast.Assign):
            targets = list(node.targets)
        elif isinstance(node, (ast.AnnAssign, ast.AugAssign)):
            targets = [node.target]
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id == "setattr"
            and len(node.args) >= 2
            and isinstance(node.args[0], ast.Name)
            and node.args[0].id == "self"
            and isinstance(node.args[1], ast.Constant)
            and isinstance(node.args[1].value, str)
        ):
            found.add(node.args[1].value)
        elif isinstance(node, ast.ClassDef):
            for statement in node.body:
                if isinstance(statement, ast.Assign):
                    found.update(t.id for t in statement.targets if isinstance(t, ast.Name))
                elif isinstance(statement, ast.AnnAssign) and isinstance(statement.target, ast.Name):
                    found.add(statement.target.id)
        for target in targets:
            found.update(target_names(target))
    return {name for name in found if name.startswith("_") and not name.startswith("__")}


def _tornado_private_names() -> set[str]:
    handler = tornado.web.RequestHandler
    with _no_gc():
        source = inspect.getsource(handler)  # parses all of tornado/web.py
    assigned = _private_attributes_assigned(source)
    members = {name for name in dir(handler) if name.startswith("_") and not name.startswith("__")}
    return assigned | members


def test_the_attribute_collector_sees_every_form_of_assignment() -> None:
    source = """
    class H:
        _declared: int | None = None
        _plain = 1
        def m(self):
            self._headers = {}
            self._a, (self._b, *self._c) = 1, (2, 3)
            self._d: int = 4
            self._e += 1
            self.__dict__["_f"] = 5
            setattr(self, "_g", 6)
            self.public = 7
            other._h = 8
    """
    assert _private_attributes_assigned(source) == {
        "_declared",
        "_plain",
        "_headers",
        "_a",
        "_b",
        "_c",
        "_d",
        "_e",
        "_f",
        "_g",
    }


def test_handlers_never_assign_requesthandler_private_attributes() -> None:
    tornado_names = _tornado_private_names()
    # Control: the collector does find Tornado's own state ...
    assert {"_headers", "_finished", "_headers_written", "_write_buffer", "_status_code", "_execute"} <= tornado_names

    ours: dict[str, set[str]] = {}
    for path in sorted(HANDLERS.glob("*.py")):
        ours[path.name] = _private_attributes_assigned(path.read_text())
    # ... and the handlers' own private state.
    assert {"_relay", "_pipe", "_buffer", "_target", "_received"} <= ours["relaying.py"]
    assert "_request_id" in ours["base.py"]

    collisions = {name: sorted(names & tornado_names) for name, names in ours.items() if names & tornado_names}
    assert collisions == {}, f"handler attributes shadow tornado.web.RequestHandler's: {collisions}"
