"""The cyclic garbage collector, set for a process that holds thousands of streams.

CPython's full collection walks every object it tracks, live or not. A stream gatehouse holds
is about a hundred of them (handler, request, headers, coroutines, futures, transports), so at
9,500 streams one full collection walks about a million objects and stops the event loop for
100-300 ms; with the default thresholds (700, 10, 10) it ran 11 times while 9,500 streams
opened at 1,000 a second, and set the relay's p99 (134-156 ms, at most 327 ms).

Gatehouse's requests leave no reference cycles behind (``tests/test_no_cycles.py``): a finished
request is freed by reference counting, and the collector has almost nothing to find. So it
can run far less often:

* `gc.freeze` once the process is built: its modules, settings and application are never
  garbage, and are never walked again;
* thresholds (7,000, 20, 100): a young collection per 7,000 new tracked objects instead of 700;
  a full one considered after 100 middle ones instead of 10 (and, as always in CPython, only
  when the objects that survived since the last exceed a quarter of those it walked then).

Measured on the same 9,500-stream run: 1 full collection (14 ms) instead of 11, the longest
pause 29 ms (a middle collection), relay p99 36 ms, at most 82 ms. RSS after eight waves of
2,000 streams stayed at its first wave's, with these thresholds and with the collector off.
(Those were one-off measurements with `gc.callbacks`; `bench/run.py`'s B at 9,500 streams and
``tests/test_no_cycles.py`` are what the repository keeps.)
"""

from __future__ import annotations

import gc

__all__ = ["THRESHOLDS", "tune_gc"]

THRESHOLDS = (7_000, 20, 100)


def tune_gc() -> None:
    """Call once the serving process is built, before it serves."""
    gc.collect()  # what start-up left over, before the survivors are frozen
    gc.freeze()
    gc.set_threshold(*THRESHOLDS)
