"""The garbage collector, tuned for processes that hold much long-lived state, and timed.

CPython's default thresholds (700, 10, 10) run a young collection every 700 container
allocations and a full one every 100 young ones, and a full collection walks every object the
process holds: the account states, the rate card, the loaded modules. The fold allocates about
25 containers per event, so with thousands of accounts in memory the collector took 35-45 % of
the fold's time (issue 17). Nearly all of the hot path's garbage is acyclic and freed by
reference counting at once; the collector is only there for the rare cycle.

So: what exists once a service has started (or a replay has loaded) is frozen out of every
later collection, and collections run 70 times less often. The memory this holds back is the
cyclic garbage of at most `YOUNG_THRESHOLD` allocations.

Every collection stops the process's one thread: `metering_gc_pause_seconds` says how long,
by generation, so a latency tail can be told apart from one the collector causes.
"""

from __future__ import annotations

import gc
import time
from typing import Any

from prometheus_client import Histogram

YOUNG_THRESHOLD = 50_000
OLDER_THRESHOLDS = (20, 100)

GC_PAUSE_SECONDS = Histogram(
    "metering_gc_pause_seconds",
    "Time the process stood still in one garbage collection, by generation (2: full).",
    ["generation"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)


class _PauseTimer:
    """A `gc.callbacks` entry observing each collection's duration."""

    def __init__(self) -> None:
        self.started = 0.0
        self.observe = [GC_PAUSE_SECONDS.labels(str(g)).observe for g in range(3)]

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self.started = time.perf_counter()
        else:
            self.observe[info["generation"]](time.perf_counter() - self.started)


_TIMER = _PauseTimer()


def tune_for_long_lived_state() -> None:
    """Freeze what exists now and collect less often (idempotent; call after loading), and
    time every collection from now on."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG_THRESHOLD, *OLDER_THRESHOLDS)
    if _TIMER not in gc.callbacks:
        gc.callbacks.append(_TIMER)
