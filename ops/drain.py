"""The graceful drain: what a serving process does between SIGTERM (or SIGINT) and its exit.

The order and the timings, all in `drain`::

    t = 0               1. readiness flips: /readyz answers 503 {"status": "draining"};
                           /healthz stays 200 (the process is alive, just leaving)
    0 .. delay          2. everything is served as before, for SHUTDOWN_DELAY seconds, so the
                           load balancer sees the flip and stops routing here
    delay               3. the listeners stop accepting (a new connection is refused) and close
                           their idle keep-alive connections (a metrics scraper's included); an
                           answer from now on closes its connection
    .. + DRAIN_TIMEOUT  4. requests and streams in flight run to their end
    deadline            5. what is still open is ended: an SSE stream with
                           ``event: error`` / ``data: {"error": "shutting_down", ...}`` (a Dify
                           chat also gets Dify's stop call), any other answer is cut off
                           (connection closed, never a body that looks complete); those endings
                           get DEADLINE_GRACE to go out
    then                6. every connection left is closed; the process exits 0

A second signal exits at once: that is the signal handler's business (``server.py``,
``ops/supervisor.py``), not the drain's.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from typing import Protocol

from ops.lifecycle import Lifecycle

__all__ = ["DEADLINE_GRACE", "DrainTimings", "Listener", "drain"]

log = logging.getLogger("gatehouse")
DEADLINE_GRACE = 0.5  # seconds the deadline's endings (error events, Dify stop calls) get to go out
_POLL = 0.05  # how often the drain looks whether what it waits for is done


class Listener(Protocol):
    """A server the drain controls: gatehouse's `FrontDoor`, Tornado's ``HTTPServer`` (as
    ``server.py`` wraps it), a metrics listener."""

    def stop(self) -> None:
        """Accept no new connection (close the listening sockets)."""

    def drain(self) -> None:
        """Close the idle connections now, and every other one once its answer is done."""

    @property
    def busy(self) -> bool:
        """Some connection still has a request in hand (or bytes of an answer to send)."""

    async def close_all_connections(self) -> None:
        """Close whatever is left, now."""


@dataclasses.dataclass(frozen=True)
class DrainTimings:
    shutdown_delay: float  # step 2: seconds served on after readiness flipped
    drain_timeout: float  # step 4: seconds what is in flight gets once the listeners closed


async def drain(
    lifecycle: Lifecycle,
    listeners: Sequence[Listener],
    timings: DrainTimings,
    settled: Callable[[], bool] = lambda: True,
) -> bool:
    """Run the drain, steps 1 to 6 above (the exit is the caller's). ``settled`` says whether
    the work that outlives a connection is done too (upstream calls such as Dify's stop).
    True when everything ended on its own, False when the deadline ended something."""
    started = time.monotonic()
    lifecycle.draining = True  # 1
    log.info(
        "draining",
        extra={"shutdown_delay": timings.shutdown_delay, "drain_timeout": timings.drain_timeout},
    )
    if timings.shutdown_delay > 0:
        await asyncio.sleep(timings.shutdown_delay)  # 2
    lifecycle.closing = True  # 3
    for listener in listeners:
        listener.stop()
        listener.drain()

    def quiet() -> bool:
        return not any(listener.busy for listener in listeners) and settled()

    drained = await _until(quiet, timings.drain_timeout)  # 4
    if not drained:  # 5
        ended = lifecycle.interrupt()
        log.warning("drain deadline: ending what is still open", extra={"interrupted": ended})
        await _until(quiet, DEADLINE_GRACE)
    lifecycle.cutting = True  # 6
    for listener in listeners:
        await listener.close_all_connections()
    log.info("drained", extra={"clean": drained, "seconds": round(time.monotonic() - started, 3)})
    return drained


async def _until(condition: Callable[[], bool], seconds: float) -> bool:
    """Wait until ``condition()`` holds, ``seconds`` at most; whether it did."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() >= deadline:
            return False
        # Polled: the counts it reads (connections, upstream fetches) have no event to wait on.
        await asyncio.sleep(min(_POLL, max(0.0, deadline - time.monotonic())))
    return True
