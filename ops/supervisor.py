"""`Supervisor`: N worker processes serving the same listening sockets, kept running.

Contract:

* The caller binds the listening sockets before `Supervisor.run`; the workers inherit them
  through ``fork``. No event loop exists in the supervisor, before or after a fork (an IOLoop
  must never cross a fork), so it restarts workers by forking again at any time.
* Each worker runs ``run_worker(index)`` (index ``0..N-1``) in a forked child and exits with its
  return value. A worker that dies is started again in the same slot after a backoff
  (`Backoff`: 0.5 s, doubling to 30 s, back to 0.5 s once a worker has lived 30 s), and the
  death is logged as one JSON line: ``worker``, ``pid``, ``exit_code`` or ``signal``. A fork
  that fails (``EAGAIN``: a process limit; ``ENOMEM``) is logged and tried again after the same
  backoff: it never ends the supervisor, whose exit would take every worker with it.
* On SIGTERM or SIGINT it closes its own copies of the listening sockets (so that, once the
  workers have closed theirs, a new connection is refused), restarts nothing more, sends
  SIGTERM to every worker (each drains: ``ops/drain.py``) and returns once all have exited:
  0 when each exited 0. A second SIGTERM or SIGINT kills the workers (SIGKILL) and returns 1
  at once. (A worker takes a second SIGTERM of its own as a duplicate and drains on: systemd's
  default ``KillMode=control-group`` signals every process as the supervisor forwards.)
* Workers ignore SIGINT: a terminal's Ctrl-C reaches the whole process group, and the
  supervisor alone turns it into one SIGTERM each (a second one would cut their drain short).
  A worker starts with the signal mask `Supervisor.run` was called with (a caller that blocks
  SIGTERM until its worker can drain keeps a SIGTERM sent early from killing it).
  On Linux a worker whose supervisor dies gets SIGTERM, and drains (``PR_SET_PDEATHSIG``).
* ``on_exit(pid)``, when given, runs after each worker's exit (e.g. to clean up what the dead
  process left, such as its metrics files), before the slot's restart. It returns False when it
  cannot do its work now (e.g. a lock is held): it is then called again for that pid on later
  turns, at least once a second, until it returns True, while the supervisor serves signals
  and restarts workers meanwhile. It must bound its own time: the supervisor waits on it.
"""

from __future__ import annotations

import ctypes
import dataclasses
import errno
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable, Sequence
from typing import NoReturn

__all__ = ["Backoff", "Supervisor"]

log = logging.getLogger("gatehouse")
_SIGNALS = {signal.SIGCHLD, signal.SIGTERM, signal.SIGINT}
_PR_SET_PDEATHSIG = 1
_WAKE = 1.0  # at most this long between looks at the children, should a SIGCHLD ever be missed


@dataclasses.dataclass(frozen=True)
class Backoff:
    first: float = 0.5  # seconds before the first restart of a slot
    most: float = 30.0  # the longest wait, however often a worker dies
    stable: float = 30.0  # a worker that lived this long is restarted after `first` again

    def next(self, previous: float | None, lived: float) -> float:
        if previous is None or lived >= self.stable:
            return self.first
        return min(previous * 2, self.most)


@dataclasses.dataclass
class _Slot:
    index: int
    pid: int | None = None
    started: float = 0.0
    delay: float | None = None  # the last backoff
    restart_at: float | None = None


class Supervisor:
    def __init__(
        self,
        workers: int,
        run_worker: Callable[[int], int],
        sockets: Sequence[socket.socket],
        backoff: Backoff = Backoff(),
        on_exit: Callable[[int], bool] | None = None,
    ) -> None:
        self._run_worker = run_worker
        self._sockets = list(sockets)
        self._backoff = backoff
        self._on_exit = on_exit
        self._slots = [_Slot(index) for index in range(workers)]
        self._unfinished: list[int] = []  # pids whose on_exit asked to be called again
        self._stopping = False
        self._status = 0
        self._pid = os.getpid()
        self._mask: set[int | signal.Signals] = set()  # the signal mask `run` was called with

    def run(self) -> int:
        """Start the workers and keep them running until a signal; the exit status."""
        # Blocked before the first fork: a signal is then taken by `sigtimedwait`, never lost.
        self._mask = signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
        try:
            for slot in self._slots:
                self._start(slot)
            return self._watch()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, self._mask)

    def _watch(self) -> int:
        while True:
            self._reap()
            if self._stopping and not self._alive():
                return self._status
            self._finish_exits()
            now = time.monotonic()
            waits = [_WAKE]
            for slot in self._slots:
                if slot.restart_at is not None:
                    if slot.restart_at <= now:
                        self._start(slot)
                    else:
                        waits.append(slot.restart_at - now)
            received = signal.sigtimedwait(_SIGNALS, min(waits))
            if received is not None and received.si_signo != signal.SIGCHLD and self._on_signal(received.si_signo):
                return 1

    # -- workers -------------------------------------------------------------------------

    def _start(self, slot: _Slot) -> None:
        for stream in (sys.stdout, sys.stderr):
            stream.flush()  # or the child would print the parent's buffered lines again
        try:
            pid = os.fork()
        except OSError as exc:  # EAGAIN (a process limit), ENOMEM: try again later, never die of it
            slot.delay = self._backoff.next(slot.delay, 0.0)
            slot.restart_at = time.monotonic() + slot.delay
            log.error(
                "worker could not be started; trying again",
                extra={
                    "worker": slot.index,
                    "errno": errno.errorcode.get(exc.errno or 0, str(exc.errno)),
                    "error": exc.strerror,
                    "restart_in": slot.delay,
                },
            )
            return
        if pid == 0:
            self._child(slot.index)
        slot.pid, slot.started, slot.restart_at = pid, time.monotonic(), None
        log.info("worker started", extra={"worker": slot.index, "pid": pid})

    def _child(self, index: int) -> NoReturn:
        status = 1
        try:
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            for signum in (signal.SIGTERM, signal.SIGCHLD):
                signal.signal(signum, signal.SIG_DFL)
            signal.pthread_sigmask(signal.SIG_SETMASK, self._mask)  # the caller's, as before `run`
            _die_with(self._pid)
            status = self._run_worker(index)
        except BaseException:
            log.critical("worker failed", exc_info=True, extra={"worker": index, "pid": os.getpid()})
        finally:
            for stream in (sys.stdout, sys.stderr):
                stream.flush()
            os._exit(status)  # never the parent's cleanup: it is the supervisor's

    def _alive(self) -> list[_Slot]:
        return [slot for slot in self._slots if slot.pid is not None]

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            for slot in self._slots:
                if slot.pid == pid:
                    self._exited(slot, os.waitstatus_to_exitcode(status))

    def _exited(self, slot: _Slot, code: int) -> None:
        pid, lived = slot.pid, time.monotonic() - slot.started
        assert pid is not None
        slot.pid = None
        if self._on_exit is not None and not self._on_exit(pid):
            self._unfinished.append(pid)
        fields: dict[str, object] = {
            "worker": slot.index,
            "pid": pid,
            "exit_code": code if code >= 0 else None,
            "signal": signal.Signals(-code).name if code < 0 else None,
            "lived_seconds": round(lived, 1),
        }
        if self._stopping:
            # Killed by our own SIGTERM before it could take it: it was not serving yet.
            clean = code in (0, -signal.SIGTERM)
            self._status = self._status if clean else 1
            log.log(logging.INFO if clean else logging.WARNING, "worker stopped", extra=fields)
            return
        slot.delay = self._backoff.next(slot.delay, lived)
        slot.restart_at = time.monotonic() + slot.delay
        log.warning("worker died; restarting it", extra={**fields, "restart_in": slot.delay})

    def _finish_exits(self) -> None:
        """Call ``on_exit`` again for the pids whose cleanup was left for later."""
        if self._on_exit is None or not self._unfinished:
            return
        live = {slot.pid for slot in self._slots}
        # A pid the kernel has already given to a new worker is that worker's now: its files are
        # its own (prometheus_client names them by pid), and cleaning them up would lose its counts.
        self._unfinished = [pid for pid in self._unfinished if pid not in live and not self._on_exit(pid)]

    # -- signals -------------------------------------------------------------------------

    def _on_signal(self, signum: int) -> bool:
        """The first SIGTERM/SIGINT drains the workers; a second kills them. True: exit now."""
        name = signal.Signals(signum).name
        if self._stopping:
            log.warning("second signal: killing the workers", extra={"signal": name})
            for slot in self._alive():
                assert slot.pid is not None
                os.kill(slot.pid, signal.SIGKILL)
            for slot in self._alive():
                assert slot.pid is not None
                _, status = os.waitpid(slot.pid, 0)  # SIGKILL cannot be caught: this returns at once
                self._exited(slot, os.waitstatus_to_exitcode(status))
            return True
        self._stopping = True
        for sock in self._sockets:
            sock.close()  # the workers' copies keep accepting until their drain closes them
        alive = self._alive()
        log.info("stopping: draining the workers", extra={"signal": name, "workers": len(alive)})
        for slot in self._slots:
            slot.restart_at = None
        for slot in alive:
            assert slot.pid is not None
            os.kill(slot.pid, signal.SIGTERM)
        return False


def _die_with(parent: int) -> None:
    """Linux: SIGTERM this process (so it drains) when the supervisor dies without saying so."""
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return  # not Linux: a worker outlives a killed supervisor
    prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # it died before the request was made
        os.kill(os.getpid(), signal.SIGTERM)
