"""(e) The pure fold's events/s on one core, and (f) `metering replay`'s events/s.

(e) parses a realistic event log with the contract's parser first (not timed), tunes the
garbage collector as the services do once loaded (metering/gc_tuning.py), then runs
`metering.core.fold.fold` over every account again and again, from a fresh state each pass,
in this one thread. (f) calls `metering.replay.replay` (what `metering replay` runs) on the
ledger's archive after the end-to-end phases filled it, and records whether the replay found
the ledger identical.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from metering.bench.monitor import Rate, Timeline, ticking
from metering.core.fold import fold
from metering.core.ratecard import RateCard
from metering.gc_tuning import tune_for_long_lived_state
from metering.replay import default_jobs, replay
from schemas.envelope import FactEvent, parse_event


@dataclass(frozen=True)
class FoldResult:
    events: int
    accounts: int
    passes: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.events * self.passes / self.seconds if self.seconds else 0.0


def fold_rate(
    log: dict[str, list[bytes]], card: RateCard, seconds: float, timeline: Timeline
) -> FoldResult:
    """Fold every account of `log` from scratch, pass after pass, for about `seconds`."""
    accounts: list[list[FactEvent]] = [[parse_event(raw) for raw in raws] for raws in log.values()]
    tune_for_long_lived_state()  # as a service does once it has loaded
    events = sum(len(a) for a in accounts)
    passes = 0
    spent = 0.0
    while passes == 0 or spent < seconds:
        started = time.perf_counter()
        for account in accounts:
            fold(account, card)
        elapsed = time.perf_counter() - started
        spent += elapsed
        passes += 1
        timeline.add("pure fold (events/s)", events / elapsed)
    return FoldResult(events, len(accounts), passes, spent)


@dataclass(frozen=True)
class ReplayResult:
    events: int
    accounts: int
    seconds: float
    identical: bool
    differences: int
    jobs: int
    """Processes the replay ran in."""

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds else 0.0


async def replay_rate(
    database_url: str, card: RateCard, timeline: Timeline, accounts: Sequence[str] = ()
) -> ReplayResult:
    """`metering replay` of the archive in `database_url` (of `accounts`; all if empty), in
    as many processes as it takes by default."""
    rate = Rate(timeline, "replay (events/s)")
    jobs = default_jobs()

    def progress(events: int, _accounts: int) -> None:
        rate.total = events

    async with ticking(timeline, rate):
        started = time.perf_counter()
        report = await replay(database_url, card, accounts, None, progress, jobs=jobs)
        elapsed = time.perf_counter() - started
        rate.total = report.events
    return ReplayResult(
        report.events, report.accounts, elapsed, report.identical, len(report.differences), jobs
    )
