"""Time in the fold (design.md §4a): the server's clock is "now", client times never move it.

Each test is a finding of an adversarial run of round one, reduced to facts: it failed on
the fold that took the latest `occurred_at` as the account's clock.
"""

from __future__ import annotations

import sys
from datetime import datetime, timedelta

import pytest

import metering.core.fold as fold_module
from metering.core import seat_status
from metering.core.catalog import REQUEST_ID_MEMORY
from metering.core.fold import apply, fold
from metering.core.state import AccountState
from metering.core.views import seat_view, subscription_view
from tests.unit.core_variant import patches_the_core
from tests.unit.event_builders import DEFAULT_CARD, Facts, at, payloads

MINUTE = timedelta(minutes=1)


def test_a_cancellation_dated_ahead_is_scheduled_not_applied_now() -> None:
    f = Facts()
    start = at("2026-03-01 00:00")
    state, results = fold(
        [
            *f.team(start, ("seat-1", "standard")),
            f.buy_pack(start + timedelta(days=1), "pack-1"),
            f.usage(start + timedelta(days=2), credits=25_000),
            f.event(
                "SubscriptionCancelled",
                start + timedelta(days=3),
                subscription_id="sub-1",
                at=start + timedelta(days=48),
            ),
            f.usage(start + timedelta(days=4), credits=100, request_id="after-cancel"),
        ],
        DEFAULT_CARD,
    )
    assert payloads(results, "PackExpired") == []
    [*_, last] = payloads(results, "CreditsDeducted")
    assert (last.shortfall_micro, last.receipt[0]["bucket_id"]) == (0, "pack-1")
    view = seat_view(state, "seat-1", start + timedelta(days=4))
    assert view is not None
    assert view.status == "active"
    later = seat_view(state, "seat-1", start + timedelta(days=48))
    assert later is not None
    assert later.reason == "subscription_cancelled"


def test_usage_dated_ahead_is_charged_at_its_recording_and_expires_nothing() -> None:
    """A report a minute ahead (inside the skew allowance) of a pack with 85 s left."""
    f = Facts()
    start = at("2026-03-01 00:00")
    bought = start + timedelta(days=1)
    expiry = at("2026-04-02 00:00")
    recorded = expiry - timedelta(seconds=85)
    _, results = fold(
        [
            *f.team(start, ("seat-1", "standard")),
            f.buy_pack(bought, "pack-1"),
            f.usage(at("2026-04-01 01:00"), credits=25_000, request_id="seat-used"),
            f.usage(recorded + MINUTE, credits=10, recorded=recorded, request_id="ahead"),
            f.usage(recorded + timedelta(seconds=1), credits=10, request_id="next"),
        ],
        DEFAULT_CARD,
    )
    deducted = {d.request_id: d for d in payloads(results, "CreditsDeducted")}
    for request_id in ("ahead", "next"):
        assert deducted[request_id].receipt == [
            {"bucket": "pack", "bucket_id": "pack-1", "amount_micro": 10_000_000}
        ]
        assert deducted[request_id].shortfall_micro == 0
    assert payloads(results, "PackExpired") == []
    ahead = next(r for r in results if r.event_type == "CreditsDeducted")
    assert ahead.occurred_at <= recorded


def test_a_seat_added_before_a_scheduled_start_is_active_from_it() -> None:
    f = Facts()
    now = at("2026-03-01 00:00")
    start = now + timedelta(seconds=5)
    state, results = fold(
        [
            f.event(
                "SubscriptionActivated",
                now,
                recorded=now,
                subscription_id="sub-1",
                started_at=start,
                expires_at=None,
            ),
            f.add_seat(now + timedelta(seconds=1)),
            f.issue_key(now + timedelta(seconds=2)),
            f.usage(start + timedelta(seconds=1), credits=5),
        ],
        DEFAULT_CARD,
    )
    assert payloads(results, "FactRejected") == []
    assert [d.price_micro for d in payloads(results, "CreditsDeducted")] == [5_000_000]
    view = subscription_view(state, "sub-1", start + timedelta(seconds=2))
    assert view is not None
    assert [s.seat_id for s in view.seats] == ["seat-1"]


def test_usage_a_moment_before_its_key_is_charged_from_the_key() -> None:
    """A gateway whose clock is behind: the call cannot have come before its key existed."""
    f = Facts()
    t = at("2026-03-01 10:00:00.600000")
    _, results = fold(
        [
            *f.team(t, ("seat-1", "standard")),
            f.usage(at("2026-03-01 10:00:00"), credits=3, recorded=t + timedelta(seconds=2)),
        ],
        DEFAULT_CARD,
    )
    assert payloads(results, "FactRejected") == []
    [deducted] = payloads(results, "CreditsDeducted")
    assert deducted.price_micro == 3_000_000


def test_renewal_after_the_previous_plan_ended() -> None:
    f = Facts()
    start = at("2026-01-01 00:00")
    ended = at("2026-02-01 00:00")
    _, results = fold(
        [
            f.activate(start, expires_at=ended),
            f.event(
                "SubscriptionActivated",
                ended + timedelta(days=10),
                subscription_id="sub-2",
                started_at=ended + timedelta(days=10),
                expires_at=None,
            ),
            f.event(
                "SubscriptionActivated",
                ended + timedelta(days=11),
                subscription_id="sub-3",
                started_at=ended + timedelta(days=40),
                expires_at=None,
            ),
        ],
        DEFAULT_CARD,
    )
    assert [r.reason for r in payloads(results, "FactRejected")] == [
        "account_has_active_subscription"  # sub-3 overlaps sub-2, which has no end
    ]


def test_a_purchase_dated_ahead_takes_effect_when_recorded() -> None:
    """A pack "bought" in year 9999 (ingest refuses it; the fold clamps it all the same)."""
    f = Facts()
    start = at("2026-03-01 00:00")
    far = datetime.fromisoformat("9999-12-31T00:00:00+00:00")
    bought = start + MINUTE
    state, results = fold(
        [
            *f.team(start, ("seat-1", "standard")),
            f.event(
                "SharedPackPurchased",
                far,
                recorded=bought,
                subscription_id="sub-1",
                pack_id="p",
                purchased_at=far,
            ),
            f.usage(start + timedelta(days=1), credits=30_000),
        ],
        DEFAULT_CARD,
    )
    assert payloads(results, "FactRejected") == []
    [pack] = state.subscriptions["sub-1"].packs
    assert (pack.purchased_at, pack.expires_at) == (bought, at("2026-04-01 00:01"))
    [deducted] = payloads(results, "CreditsDeducted")
    assert deducted.shortfall_micro == 0


def test_a_usage_dearer_than_any_request_may_be_is_refused() -> None:
    f = Facts()
    start = at("2026-03-01 00:00")
    _, results = fold(
        [*f.team(start, ("seat-1", "standard")), f.usage(start + MINUTE, output_tokens=10**16)],
        DEFAULT_CARD,
    )
    assert [r.reason for r in payloads(results, "FactRejected")] == ["unpriceable_usage"]


@patches_the_core
def test_an_exception_in_a_rule_becomes_apply_failed(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*_args: object) -> None:
        raise OverflowError("value out of int64 range")

    f = Facts()
    start = at("2026-03-01 00:00")
    state, _ = fold(f.team(start, ("seat-1", "standard")), DEFAULT_CARD)
    before = state.snapshot()
    monkeypatch.setattr(fold_module, "_buy_pack", broken)
    results = apply(state, f.buy_pack(start + MINUTE, "p"), DEFAULT_CARD)
    [rejected] = payloads(results, "FactRejected")
    assert rejected.reason == "apply_failed"
    assert "OverflowError: value out of int64 range" in rejected.detail
    assert state.subscriptions == before.subscriptions
    monkeypatch.undo()
    [usage] = payloads(
        apply(state, f.usage(start + 2 * MINUTE, credits=1), DEFAULT_CARD), "CreditsDeducted"
    )
    assert usage.price_micro == 1_000_000


def test_request_ids_are_remembered_only_while_a_duplicate_can_arrive() -> None:
    """200,000 reports over 20 days: the remembered ids stay those of the last ~73 hours,
    and the memory they take stays flat once that window has passed."""
    f = Facts()
    start = at("2026-03-01 00:00")
    state, _ = fold(f.team(start, ("seat-1", "premium")), DEFAULT_CARD)
    step = timedelta(days=20) / 200_000
    per_window = REQUEST_ID_MEMORY / step
    sizes: dict[int, int] = {}
    t = start
    for n in range(200_000):
        t = start + MINUTE + n * step
        apply(state, f.usage(t, input_tokens=10, request_id=f"r-{n}"), DEFAULT_CARD)
        assert len(state.request_ids) <= per_window + 1
        if n % 25_000 == 0:
            sizes[n] = _dedup_bytes(state)
    # the window is ~36,500 reports: from 50,000 on, the memory no longer grows
    assert max(sizes[n] for n in sizes if n >= 50_000) <= sizes[50_000] * 1.25
    # a duplicate inside the window is still caught; one past it is no longer remembered
    again = apply(state, f.usage(t, input_tokens=10, request_id="r-199999"), DEFAULT_CARD)
    assert [r.reason for r in payloads(again, "FactRejected")] == ["duplicate_request_id"]
    assert "r-0" not in state.request_ids


def _dedup_bytes(state: AccountState) -> int:
    """What the remembered request ids take: the dict, the heap, the ids and their times."""
    ids = state.request_ids
    items = sum(sys.getsizeof(r) + sys.getsizeof(u) for r, u in ids.items())
    heap = sum(sys.getsizeof(entry) for entry in state.forgetting)
    return sys.getsizeof(ids) + sys.getsizeof(state.forgetting) + items + heap


def test_request_ids_survive_a_reload_within_the_window() -> None:
    f = Facts()
    start = at("2026-03-01 00:00")
    state, results = fold(
        [*f.team(start, ("seat-1", "standard")), f.usage(start + MINUTE, request_id="r")],
        DEFAULT_CARD,
    )
    stored = state.to_dict(with_request_ids=False)
    [deducted] = [r for r in results if r.event_type == "CreditsDeducted"]
    restored = AccountState.from_dict(stored, [("r", deducted.occurred_at + REQUEST_ID_MEMORY)])
    again = apply(restored, f.usage(start + 2 * MINUTE, request_id="r"), DEFAULT_CARD)
    assert [r.reason for r in payloads(again, "FactRejected")] == ["duplicate_request_id"]


@patches_the_core
def test_a_review_that_fails_midway_keeps_what_it_reported(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The review before a fact finalises a pack's forfeiture, then fails: the forfeiture it
    recorded in the state is reported all the same (else the statement would not add up)."""
    f = Facts()
    start = at("2026-03-01 00:00")
    state, _ = fold(
        [*f.team(start, ("seat-1", "standard")), f.buy_pack(start + MINUTE, "p")],
        DEFAULT_CARD,
    )

    def broken(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError("status rule failed")

    monkeypatch.setattr(seat_status, "changes", broken)
    late = apply(state, f.usage(at("2026-04-10 00:00"), credits=1), DEFAULT_CARD)
    assert [r.event_type for r in late] == ["PackExpired", "FactRejected"]
    assert payloads(late, "FactRejected")[0].reason == "apply_failed"
    assert state.subscriptions["sub-1"].packs[0].expired
