"""A seat's status over time (metering/core/seat_status.py): the instants at which time alone
changes it, a subscription not yet started, and the exact instants of a removal or an end."""

from datetime import timedelta

from event_builders import DEFAULT_CARD, Facts, at, payloads

from metering.core import seat_status
from metering.core.fold import fold
from metering.core.views import seat_view

JAN31 = at("2026-01-31 10:00")
FEB28 = at("2026-02-28 10:00")


def test_the_next_change_is_strictly_after_the_asked_instant() -> None:
    f = Facts()
    ends = at("2026-03-15 00:00")
    state, _ = fold(
        [
            f.activate(JAN31, expires_at=ends),
            f.add_seat(JAN31, "seat-1"),
            f.buy_pack(at("2026-02-10 00:00"), "pack-a"),  # expires Mar 10
            f.remove_seat(at("2026-02-20 00:00"), "seat-1"),
        ],
        DEFAULT_CARD,
    )
    next_change = seat_status.next_change
    assert next_change(state, JAN31 - timedelta(seconds=1)) == JAN31  # the start
    assert next_change(state, JAN31) == at("2026-02-10 00:00")  # from the start: the pack
    assert next_change(state, at("2026-02-10 00:00")) == at("2026-02-20 00:00")  # the removal
    assert next_change(state, at("2026-02-20 00:00")) == FEB28  # the month end
    assert next_change(state, FEB28) == at("2026-03-10 00:00")  # the pack's expiry
    assert next_change(state, at("2026-03-10 00:00")) == ends
    assert next_change(state, ends) is None  # ended: no month end after it

    plain, _ = fold(Facts().team(JAN31, ("seat-1", "standard")), DEFAULT_CARD)
    assert next_change(plain, JAN31) == FEB28  # active from its first instant


def test_seats_of_a_plan_not_yet_started_are_suspended_until_it_starts() -> None:
    f = Facts()
    start = at("2026-03-01 00:00")
    events = [
        f.event(
            "SubscriptionActivated",
            at("2026-02-01 00:00"),
            subscription_id="sub-1",
            started_at=start,
            expires_at=None,
        ),
        f.add_seat(at("2026-02-02 00:00"), "seat-1"),
        f.issue_key(at("2026-02-02 00:00"), "seat-1"),
        f.usage(start + timedelta(hours=1), credits=1),
    ]
    state, results = fold(events, DEFAULT_CARD)
    statuses = [
        (s.seat_id, s.status, s.reason, s.at) for s in payloads(results, "SeatStatusChanged")
    ]
    assert statuses == [
        ("seat-1", "suspended", "subscription_not_started", at("2026-02-02 00:00:01")),
        # the first fact after the start: active, as a new seat (nothing was restored)
        ("seat-1", "active", "seat_added", start + timedelta(hours=1, seconds=1)),
    ]
    before = seat_view(state, "seat-1", start - timedelta(seconds=1))
    assert before is not None
    assert (before.status, before.reason) == ("suspended", "subscription_not_started")
    assert before.tier == "standard"  # the tier it will have, asked before it was added
    assert [d.receipt for d in payloads(results, "CreditsDeducted")] == [
        [{"bucket": "seat", "bucket_id": "seat-1:2026-03", "amount_micro": 1_000_000}]
    ]


def test_a_removed_seat_is_suspended_from_the_instant_of_its_removal() -> None:
    f = Facts()
    removed = at("2026-02-10 00:00")
    state, _ = fold(
        [*f.team(JAN31, ("seat-1", "standard")), f.remove_seat(removed, "seat-1")], DEFAULT_CARD
    )
    just_before = seat_view(state, "seat-1", removed - timedelta(microseconds=1))
    at_removal = seat_view(state, "seat-1", removed)
    assert just_before is not None
    assert at_removal is not None
    assert (just_before.status, just_before.resets_at) == ("active", FEB28)
    assert (at_removal.status, at_removal.reason) == ("suspended", "seat_removed")
