"""The metrics directory that worker processes share (``WORKERS > 1``), managed by gatehouse.

``prometheus_client``'s multiprocess mode: each process writes its figures to its own files
(``counter_<pid>.db``, ``histogram_<pid>.db``, ``gauge_livesum_<pid>.db``), in the directory
named by ``PROMETHEUS_MULTIPROC_DIR``, and a scrape adds up every file it finds there
(``ops/metrics_exposition.py``). Gatehouse owns that directory; the contract:

* `prepare` (``server.main``, in the supervisor, before any fork and before anything imports
  ``prometheus_client``, which reads the variable once, at import): a fresh private directory
  (``mkdtemp``: mode 0700, empty), named in ``PROMETHEUS_MULTIPROC_DIR``; whatever that
  variable said before is replaced. `remove` deletes it when the supervisor exits.
  `in_memory` clears the variable for a single process, whose metrics stay in memory.
* `retire` (the supervisor's ``on_exit``, after each worker's exit, before its replacement
  starts): the dead worker's live gauges are dropped (``mark_process_dead``), and its counters
  and histograms are added into one archive file per kind (``counter_archive.db``,
  ``histogram_archive.db``) and its files removed. Counters never go down when a worker dies,
  and the directory holds the files of the live workers plus one archive per kind, however
  many workers have died (client_python #367: files of dead processes pile up and slow every
  scrape). The files are read and written with ``prometheus_client``'s own ``MmapedDict``.
* `reading`: a scrape reads the files under a shared lock, `retire` folds them under an
  exclusive one, so no scrape sees a dead worker's figures twice (archive and own file) or not
  at all (neither): what a scraper sees never goes down.
* The supervisor never waits on a scrape: `retire` tries for the exclusive lock without
  blocking, for `LOCK_WAIT` seconds at most. Past that (a worker stopped, by SIGSTOP or a cgroup
  freezer, while its scrape held the shared lock) it changes nothing, logs it once, and says
  so: the supervisor tries again on its next turns, serving and restarting meanwhile. Until
  then the dead worker's files stay and are read as before: its counts are still counted, once;
  only its live gauges linger.

A worker killed in the middle of writing one value loses at most that value's update. A
supervisor killed with SIGKILL leaves its directory behind (``/tmp/gatehouse-metrics-*``, the
files of that run's workers; nothing else reads or removes it): each run makes a fresh one, so
it is never read again, and it can be deleted at any time.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from typing import Any

__all__ = ["ENV", "LOCK_WAIT", "in_memory", "prepare", "reading", "remove", "retire"]

log = logging.getLogger("gatehouse")
ENV = "PROMETHEUS_MULTIPROC_DIR"
_LEGACY_ENV = "prometheus_multiproc_dir"  # the lower-case spelling prometheus_client also reads
_ARCHIVED_KINDS = ("counter", "histogram", "summary")  # what a dead process's counts live in
_LOCK = "scrape.lock"  # not ``*.db``: the collector never reads it
LOCK_WAIT = 0.5  # seconds `retire` tries for the exclusive lock before leaving the fold for later
_LOCK_POLL = 0.005  # between two tries
_deferred: set[int] = set()  # the dead workers whose fold was left for later (logged once each)


def prepare() -> str:
    """A fresh private directory for the workers' metrics, named in ``PROMETHEUS_MULTIPROC_DIR``."""
    if "prometheus_client" in sys.modules:
        # It has already chosen where values live: the workers would keep theirs in memory.
        raise RuntimeError("prometheus_client was imported before its multiprocess directory was set")
    directory = tempfile.mkdtemp(prefix="gatehouse-metrics-")
    os.environ[ENV] = directory
    os.environ.pop(_LEGACY_ENV, None)
    return directory


def in_memory() -> None:
    """One process: its metrics stay in memory, whatever the environment said."""
    os.environ.pop(ENV, None)
    os.environ.pop(_LEGACY_ENV, None)


def remove(directory: str) -> None:
    shutil.rmtree(directory, ignore_errors=True)


@contextlib.contextmanager
def reading(directory: str) -> Iterator[None]:
    """Hold while reading the files: `retire` does not change them meanwhile."""
    with _locked(directory, fcntl.LOCK_SH):
        yield


def retire(directory: str, pid: int, within: float = LOCK_WAIT) -> bool:
    """After worker ``pid`` has exited: drop its live gauges, fold its counts into the archives.

    True when that is done; False when the exclusive lock could not be had within ``within``
    seconds (a scrape holds it): nothing was changed, and the caller calls again later. Never
    raises (it runs in the supervisor's loop): another failure is logged and counts as done,
    the worst left being a file that stays, its counts still read."""
    from prometheus_client import multiprocess

    mark_process_dead: Any = multiprocess.mark_process_dead  # untyped in prometheus_client
    try:
        with _locked(directory, fcntl.LOCK_EX, within) as locked:
            if not locked:
                if pid not in _deferred:
                    _deferred.add(pid)
                    log.warning(
                        "the metrics of a dead worker are folded later: a scrape holds the lock",
                        extra={"pid": pid, "waited_seconds": within},
                    )
                return False
            mark_process_dead(pid, directory)
            for kind in _ARCHIVED_KINDS:
                dead = os.path.join(directory, f"{kind}_{pid}.db")
                if os.path.exists(dead):
                    _add_into(os.path.join(directory, f"{kind}_archive.db"), dead)
                    os.remove(dead)
        if pid in _deferred:
            _deferred.discard(pid)
            log.info("the metrics of a dead worker are folded", extra={"pid": pid})
    except Exception:
        _deferred.discard(pid)
        log.error("the metrics of a dead worker could not be archived", exc_info=True, extra={"pid": pid})
    return True


def _add_into(archive: str, dead: str) -> None:
    """Add each value of file ``dead`` to the same key's value in file ``archive``. Histogram
    files hold each bucket's own count (not cumulative), so adding key by key is right for
    every kind."""
    from prometheus_client import mmap_dict

    MmapedDict: Any = mmap_dict.MmapedDict  # untyped in prometheus_client
    values = list(MmapedDict.read_all_values_from_file(dead))
    target = MmapedDict(archive)
    try:
        for key, value, _timestamp, _position in values:
            previous, _ = target.read_value(key)
            target.write_value(key, previous + value, 0.0)
    finally:
        target.close()


@contextlib.contextmanager
def _locked(directory: str, operation: int, within: float | None = None) -> Iterator[bool]:
    """The directory's lock (``operation``: shared or exclusive), held for the ``with``: waited
    for, or with ``within``, tried without blocking for that many seconds. Yields whether it is
    held."""
    fd = _open_lock(directory)
    try:
        if within is None:
            fcntl.flock(fd, operation)
            yield True
        else:
            yield _lock_within(fd, operation, within)
    finally:
        os.close(fd)  # releases the lock


def _lock_within(fd: int, operation: int, within: float) -> bool:
    deadline = time.monotonic() + within
    while True:
        try:
            fcntl.flock(fd, operation | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
        time.sleep(_LOCK_POLL)  # the supervisor has no event loop: it waits here, bounded


def _open_lock(directory: str) -> int:
    return os.open(os.path.join(directory, _LOCK), os.O_RDWR | os.O_CREAT, 0o600)
