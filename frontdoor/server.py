"""`FrontDoor`: the listening side of gatehouse's own server connection (`ServerConnection`).

It offers what ``server.py`` and the tests use of Tornado's ``HTTPServer`` (``add_sockets``,
``listen``, ``stop``, ``close_all_connections``), and what a graceful drain needs
(``ops/drain.py``'s ``Listener``): stop accepting (the listening sockets closed, so a new
connection is refused), close the idle connections, let the requests in hand finish, and know
when none is left (`busy`).

A connection the kernel accepted before `stop` can get its protocol only after `drain` has run:
asyncio makes it in a task on a later turn than the ``accept``, and uvloop calls
``connection_made`` on a later turn than it makes it. Such a connection is draining from the
start (`ServerConnection.drain`: its first request, if it comes at once, is served, else it
closes), never left idle, holding `busy` until the drain's deadline. A protocol made after
`stop` counts in `connections` (and `busy`) only once connected: asyncio (3.11) fails to make
the transport of a connection accepted just before its server closed, and that protocol would
never be connected nor lost. (That socket is asyncio's: the client sees it reset when it is
collected, at the latest when the process exits.)
"""

from __future__ import annotations

import asyncio
import socket

from tornado.httputil import HTTPServerConnectionDelegate
from tornado.ioloop import IOLoop
from tornado.netutil import bind_sockets

from frontdoor.connection import ConnectionParams, ServerConnection

__all__ = ["FrontDoor"]


class FrontDoor:
    def __init__(
        self, app: HTTPServerConnectionDelegate, params: ConnectionParams | None = None, backlog: int = 4096
    ) -> None:
        self._app = app
        self._params = params or ConnectionParams()
        # asyncio's and uvloop's servers listen() again on a socket they are given, with their
        # own backlog (100 by default): a burst of connections would then be dropped and retried.
        self._backlog = backlog
        self._servers: list[asyncio.Server] = []
        self._starting: dict[asyncio.Task[asyncio.Server], socket.socket] = {}
        self.connections: set[ServerConnection] = set()
        self._accepting = True
        self._draining = False

    def listen(self, port: int, address: str | None = None) -> None:
        self.add_sockets(bind_sockets(port, address, backlog=self._backlog))

    def add_sockets(self, sockets: list[socket.socket]) -> None:
        """Serve on ``sockets`` (bound and listening); accepting starts on the loop's next turn,
        and connections that arrive before wait in the listen backlog."""
        # The loop Tornado serves on, running or not yet (as Tornado's HTTPServer allows).
        loop = IOLoop.current().asyncio_loop  # type: ignore[attr-defined]
        for sock in sockets:
            task = loop.create_task(loop.create_server(self._connection, sock=sock, backlog=self._backlog))
            task.add_done_callback(self._started)
            self._starting[task] = sock

    def _started(self, task: asyncio.Task[asyncio.Server]) -> None:
        sock = self._starting.pop(task)
        if task.cancelled() or task.exception() is not None:
            sock.close()  # never served: nobody else closes it
            return
        server = task.result()
        if self._accepting:
            self._servers.append(server)
        else:
            server.close()

    def _connection(self) -> ServerConnection:
        if self._accepting:
            conn = ServerConnection(self._app, self._params, self.connections.discard)
            self.connections.add(conn)
        else:
            # Made after `stop` (asyncio, see the module's docstring): counted once connected,
            # since asyncio may never connect it (its server is closed: the transport fails).
            conn = ServerConnection(self._app, self._params, self.connections.discard, self.connections.add)
        if self._draining:
            conn.drain()  # accepted before `stop`, made after `drain`: drained like the others
        return conn

    @property
    def busy(self) -> bool:
        """A connection is open: once `drain` has run, only those with an answer to finish are."""
        return bool(self.connections)

    def stop(self) -> None:
        """Accept no new connection (the listening sockets are closed: a new one is refused);
        those open are served on."""
        self._accepting = False
        for task in self._starting:
            task.cancel()
        for server in self._servers:
            server.close()
        self._servers.clear()

    def drain(self) -> None:
        """Close every idle connection now, and every other one once its request is answered;
        a connection made from now on too (see the module's docstring)."""
        self._draining = True
        for conn in list(self.connections):
            conn.drain()

    async def close_all_connections(self, within: float = 5.0) -> None:
        """Abort every connection, requests in hand or not (unsent bytes are dropped: a client
        that does not read cannot hold a shutdown), and wait until they are gone, ``within``
        seconds at most."""
        for conn in list(self.connections):
            conn.abort()
        deadline = asyncio.get_running_loop().time() + within
        while self.connections and asyncio.get_running_loop().time() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.01)  # connection_lost runs on a later turn
