"""`Lifecycle`: one process's serving state, shared by its handlers and its drain.

The drain (``ops/drain.py``) moves it forward; the handlers read it and register with it:

* `draining` (step 1): ``/readyz`` answers 503 ``{"status": "draining"}``;
* `closing` (step 3): the listener is closed; every answer closes its connection;
* `cutting` (step 6): every connection left is being closed by the gateway: a request whose
  connection closes now was cut, its client did not leave (the metrics count it as 503, not 499);
* `requests`: the requests in hand, for a server that cannot say when it is idle
  (Tornado's ``HTTPServer``); gatehouse's own server knows it from its connections;
* `interruptible`: the answers to end at the drain's deadline (step 5), each in its own way
  (an SSE stream with an ``error`` event ``shutting_down``, a Dify chat with Dify's stop call).

It knows nothing of what it serves: handlers register themselves as `Interruptible`.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Protocol

__all__ = ["Interruptible", "Lifecycle"]

log = logging.getLogger("gatehouse")


class Interruptible(Protocol):
    def shut_down(self) -> None:
        """The drain's deadline: end the answer now, as cleanly as it can be ended."""


class Lifecycle:
    def __init__(self) -> None:
        self.draining = False
        self.closing = False
        self.cutting = False
        self.requests: set[object] = set()
        self._interruptible: set[Interruptible] = set()

    @contextlib.contextmanager
    def interruptible(self, answer: Interruptible) -> Iterator[None]:
        """While in this block, ``answer`` is ended at the drain's deadline."""
        self._interruptible.add(answer)
        try:
            yield
        finally:
            self._interruptible.discard(answer)

    def interrupt(self) -> int:
        """End every interruptible answer still open (the deadline); how many there were."""
        answers, self._interruptible = self._interruptible, set()
        for answer in answers:
            try:
                answer.shut_down()
            except Exception:  # one answer's failure must not keep the others open
                log.error("ending an answer at the drain deadline failed", exc_info=True)
        return len(answers)
