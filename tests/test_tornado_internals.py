"""Fails loudly when a Tornado upgrade moves what gatehouse relies on beyond Tornado's docs.

``upstream/client.py`` is an `AsyncHTTPClient` implementation. The gateway calls its ``send``,
which is ``fetch(raise_error=False)`` without ``fetch``'s copy of the request's headers: it
relies on what ``fetch`` does being that (asserted below, so that a Tornado release that stops
copying is noticed), on ``HTTPResponse._error_is_response_code`` telling an answer's own error
status from a failure (``fetch``'s own test), on the client's ``defaults`` and ``_closed``, and
on a request's unset timeouts being ``None``. ``fetch`` itself still works for any other
caller: it relies on ``fetch`` wrapping each request in a ``_RequestProxy`` (holding the
original as ``.request``) before calling ``fetch_impl``, and on a 599 answer with an error
raising that error even with ``raise_error=False``. Gatehouse's handlers add private attributes to
`tornado.web.RequestHandler` subclasses, which must never shadow Tornado's own (assigning
``self._headers`` in a handler once replaced Tornado's response headers).
"""

from __future__ import annotations

import ast
import contextlib
import gc
import inspect
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import tornado.web
from tornado.httpclient import AsyncHTTPClient, HTTPRequest, HTTPResponse, _RequestProxy

from upstream.client import UpstreamAborted

HANDLERS = Path(__file__).resolve().parent.parent / "handlers"


# -- the AsyncHTTPClient contract the gateway's client implements ------------------------------------


def test_fetch_hands_fetch_impl_a_proxy_of_the_original_request() -> None:
    fetch = inspect.getsource(AsyncHTTPClient.fetch)
    assert "_RequestProxy(request, self.defaults)" in fetch
    assert "self.fetch_impl(" in fetch
    assert "request.headers = httputil.HTTPHeaders(request.headers)" in fetch  # a copy per fetch
    proxy = _RequestProxy(HTTPRequest("http://x/"), {"connect_timeout": 3})
    assert isinstance(proxy.request, HTTPRequest)
    assert proxy.connect_timeout == 3  # defaults apply where the request sets none


def test_what_send_relies_on_beside_fetch() -> None:
    fetch = inspect.getsource(AsyncHTTPClient.fetch)
    assert "raise_error or not response._error_is_response_code" in fetch
    request = HTTPRequest("http://x/")
    assert request.request_timeout is None and request.connect_timeout is None
    assert HTTPResponse(request, 502)._error_is_response_code  # an answer, error status and all
    assert HTTPResponse(request, 599)._error_is_response_code  # an upstream's own 599 too
    assert not HTTPResponse(request, 599, error=UpstreamAborted("gone"))._error_is_response_code
    client = AsyncHTTPClient(force_instance=True, defaults={"connect_timeout": 3})
    assert client.defaults["connect_timeout"] == 3 and not client._closed
    client.close()
    assert client._closed


@pytest.mark.gen_test(timeout=5)
async def test_a_599_with_an_error_raises_it_even_without_raise_error() -> None:
    class Failing(AsyncHTTPClient):
        def fetch_impl(self, request: HTTPRequest, callback: object) -> None:
            callback(HTTPResponse(request, 599, error=UpstreamAborted("gone")))  # type: ignore[operator]

    client = Failing(force_instance=True)
    try:
        with pytest.raises(UpstreamAborted):
            await client.fetch("http://x/", raise_error=False)
    finally:
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
    assert {"_relay", "_pipe", "_target", "_received"} <= ours["relaying.py"]
    assert {"_request_id", "_body"} <= ours["base.py"]

    collisions = {name: sorted(names & tornado_names) for name, names in ours.items() if names & tornado_names}
    assert collisions == {}, f"handler attributes shadow tornado.web.RequestHandler's: {collisions}"
