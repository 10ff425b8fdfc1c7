"""How a replay of the archive shares its accounts among processes (`replay.account_ranges`),
and how many it starts by default."""

from __future__ import annotations

import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from metering.replay import MAX_JOBS, account_ranges, default_jobs

per_accounts = st.lists(st.integers(1, 1_000), max_size=60).map(
    lambda counts: [(f"acct-{i:03}", events) for i, events in enumerate(counts)]
)


@given(per_accounts, st.integers(1, 12))
def test_the_runs_cover_every_account_once_in_order_each_near_its_share(
    per_account: list[tuple[str, int]], parts: int
) -> None:
    ranges = account_ranges(per_account, parts)
    ids = [account_id for account_id, _ in per_account]
    assert len(ranges) <= parts
    covered = [i for first, last in ranges for i in ids[ids.index(first) : ids.index(last) + 1]]
    assert covered == ids  # every account in exactly one run, the runs in order
    total = sum(events for _, events in per_account)
    busiest = max((events for _, events in per_account), default=0)
    for first, last in ranges:
        events = sum(n for i, n in per_account if first <= i <= last)
        assert events * parts <= total + busiest * parts  # its share, plus one account at most


def test_equal_accounts_are_shared_evenly_and_a_busy_one_stands_alone() -> None:
    even = [(f"a{i}", 10) for i in range(6)]
    assert account_ranges(even, 3) == [("a0", "a1"), ("a2", "a3"), ("a4", "a5")]
    assert account_ranges(even, 1) == [("a0", "a5")]
    assert account_ranges(even[:2], 5) == [("a0", "a0"), ("a1", "a1")]
    skewed = [("a", 1), ("b", 100), ("c", 1), ("d", 1)]
    assert account_ranges(skewed, 2) == [("a", "b"), ("c", "d")]
    assert account_ranges([], 4) == []


def test_a_replay_takes_a_process_per_cpu_it_may_use_at_most_four(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: {0, 1, 2}, raising=False)
    assert default_jobs() == 3
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: set(range(64)), raising=False)
    assert default_jobs() == MAX_JOBS == 4
    monkeypatch.delattr(os, "sched_getaffinity", raising=False)  # not Linux
    monkeypatch.setattr(os, "cpu_count", lambda: None)
    assert default_jobs() == 1
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    assert default_jobs() == 2
