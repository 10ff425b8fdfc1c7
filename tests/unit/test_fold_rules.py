"""Rules of the fold, the state and the views that the scenario table does not reach: result
ids, facts written in other time zones, persistence of every field, the team overview."""

import json
from dataclasses import fields, is_dataclass
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from event_builders import DEFAULT_CARD, Facts, at, payloads

from metering.core import seat_status
from metering.core.catalog import MAX_PRICE_MICRO, PACK_CREDITS_MICRO, REQUEST_ID_MEMORY
from metering.core.fold import apply, derived_event_id, fold, was_rejected
from metering.core.money import MICRO
from metering.core.state import AccountState
from metering.core.views import PackView, SeatView, subscription_view
from schemas.envelope import FACT_ADAPTER, FactEvent
from tests.unit.core_variant import patches_the_core

JAN31 = at("2026-01-31 10:00")


def busy_account() -> list[FactEvent]:
    """Facts touching every part of the state: an expiring plan cancelled early, tier
    changes, a removed seat, a revoked key, packs used, expired and forfeited, shortfall."""
    f = Facts()
    return [
        f.activate(JAN31, expires_at=at("2026-06-30 00:00")),
        f.add_seat(JAN31, "seat-1", "advanced"),
        f.issue_key(JAN31, "seat-1"),
        f.add_seat(JAN31, "seat-2"),
        f.issue_key(JAN31, "seat-2"),
        f.usage(at("2026-02-01 00:00"), "seat-2", request_id="r1", credits=25_000),
        f.buy_pack(at("2026-02-02 00:00"), "pack-a"),
        f.usage(at("2026-02-03 00:00"), "seat-2", request_id="r2", credits=700_000),
        f.change_tier(at("2026-02-04 00:00"), "seat-1", "premium"),
        f.change_tier(at("2026-02-05 00:00"), "seat-1", "standard"),
        f.buy_pack(at("2026-02-06 00:00"), "pack-b"),
        f.usage(at("2026-02-07 00:00"), "seat-2", request_id="r3", credits=1_000),
        f.revoke_key(at("2026-02-08 00:00"), "key-seat-2"),
        f.remove_seat(at("2026-02-09 00:00"), "seat-2"),
        f.usage(at("2026-03-01 00:00"), "seat-1", request_id="r4", credits=30_000),
        f.usage(at("2026-03-12 00:00"), "seat-1", request_id="r5", credits=1),
        f.buy_pack(at("2026-03-15 00:00"), "pack-c"),
        f.cancel(at("2026-03-20 00:00")),
    ]


# -- result ids --------------------------------------------------------------------------


def test_each_result_of_one_fact_has_its_own_derived_id() -> None:
    state = AccountState()
    every_id: list[str] = []
    most = 0
    for event in busy_account():
        ids = [r.event_id for r in apply(state, event, DEFAULT_CARD)]
        assert ids == [derived_event_id(event.event_id, index) for index in range(len(ids))]
        every_id += ids
        most = max(most, len(ids))
    assert most >= 3  # a deduction that drains a pack and suspends seats
    assert len(set(every_id)) == len(every_id)


# -- time zones --------------------------------------------------------------------------


def _in_zone(value: Any, zone: timezone) -> Any:
    if isinstance(value, datetime):
        return value.astimezone(zone).isoformat()
    if isinstance(value, dict):
        return {k: _in_zone(v, zone) for k, v in value.items()}
    return value


def _as_parsed_from_json(event: FactEvent, zone: timezone) -> FactEvent:
    """The fact as ingest would have read it from JSON with every time in ``zone``."""
    return FACT_ADAPTER.validate_json(json.dumps(_in_zone(event.model_dump(), zone)))


def _times(value: Any) -> list[datetime]:
    """Every datetime in a dump, a list or a dataclass (the state), however deep."""
    if isinstance(value, datetime):
        return [value]
    if is_dataclass(value):
        return [t for f in fields(value) for t in _times(getattr(value, f.name))]
    if isinstance(value, tuple):
        return [t for v in value for t in _times(v)]
    if isinstance(value, dict):
        return [t for v in value.values() for t in _times(v)]
    if isinstance(value, list):
        return [t for v in value for t in _times(v)]
    return []


@pytest.mark.usefixtures("local_zone")
@pytest.mark.parametrize("offset", [timedelta(0), timedelta(hours=5, minutes=30)])
def test_facts_in_any_zone_fold_to_the_same_utc_results(offset: timedelta) -> None:
    """Facts parsed from JSON carry pydantic's zones, not ``datetime.UTC``: the fold states
    everything it derives in UTC, whatever the fact's zone and the machine's."""
    events = busy_account()
    state, results = fold(events, DEFAULT_CARD)
    parsed = [_as_parsed_from_json(e, timezone(offset)) for e in events]
    assert all(e.recorded_at.tzinfo is not UTC for e in parsed)
    parsed_state, parsed_results = fold(parsed, DEFAULT_CARD)
    assert parsed_results == results
    assert parsed_state.to_dict() == state.to_dict()
    kept = _times(parsed_state)
    assert len(kept) > 15
    assert all(t.utcoffset() == timedelta(0) for t in kept)  # the state keeps UTC times
    derived = [t for r in parsed_results for t in _times(r.payload.model_dump())]
    derived += [r.occurred_at for r in parsed_results if r.event_type != "FactRejected"]
    assert derived
    assert all(t.utcoffset() == timedelta(0) for t in derived)


# -- persistence -------------------------------------------------------------------------


def test_every_field_of_the_state_survives_json() -> None:
    state, _ = fold(busy_account(), DEFAULT_CARD)
    sub = state.subscriptions["sub-1"]
    assert sub.expires_at == at("2026-06-30 00:00")
    assert sub.cancelled_at == at("2026-03-20 00:00")
    assert [p.expired for p in sub.packs] == [True, True, False]
    assert sub.seats["seat-2"].removed_at == at("2026-02-09 00:00")
    assert state.keys["key-seat-2"].revoked_at == at("2026-02-08 00:00")

    restored = AccountState.from_dict(json.loads(json.dumps(state.to_dict())))
    assert restored == state
    restored_sub = restored.subscriptions["sub-1"]
    assert restored_sub.expires_at == at("2026-06-30 00:00")
    assert restored_sub.ends_at == at("2026-03-20 00:00")
    assert restored.request_ids == state.request_ids
    assert restored.next_review == state.next_review is not None


def test_a_request_id_is_forgotten_once_its_memory_has_passed() -> None:
    f = Facts()
    events = [
        *f.team(JAN31, ("seat-1", "standard")),
        f.usage(at("2026-02-01 00:00"), request_id="old", credits=1),
        f.usage(at("2026-02-02 00:00"), request_id="new", credits=1),
    ]
    state, _ = fold(events, DEFAULT_CARD)
    assert state.request_ids == {
        "old": at("2026-02-01 00:00") + REQUEST_ID_MEMORY,
        "new": at("2026-02-02 00:00") + REQUEST_ID_MEMORY,
    }
    stored = state.to_dict(with_request_ids=False)
    assert "request_ids" not in stored
    # stored as the projections do: the ids come back from their own table
    until_old = at("2026-02-01 00:00") + REQUEST_ID_MEMORY
    stored["clock"] = until_old.isoformat()
    restored = AccountState.from_dict(stored, sorted(state.request_ids.items()))
    assert restored.request_ids == {"new": at("2026-02-02 00:00") + REQUEST_ID_MEMORY}
    assert restored.forgetting == [(at("2026-02-02 00:00") + REQUEST_ID_MEMORY, "new")]
    # the same id again: a duplicate while remembered, a new charge once forgotten
    later = [
        f.usage(at("2026-02-04 00:00"), request_id="old", credits=1, recorded=until_old),
        f.usage(at("2026-02-05 00:00"), request_id="new", credits=1),
    ]
    _, results = fold(later, DEFAULT_CARD, restored)
    assert [r.event_type for r in results] == ["CreditsDeducted", "FactRejected"]
    assert payloads(results, "FactRejected")[0].reason == "duplicate_request_id"


def test_was_rejected_reads_the_last_result_only() -> None:
    """A rejection is its fact's last result; what time brought may come before it and what
    an accepted fact brings (a suspension) after its deduction (quota and ledger ask this)."""
    f = Facts()
    state = AccountState()
    outcomes = [
        [r.event_type for r in results] if not was_rejected(results) else "rejected"
        for results in (
            apply(state, event, DEFAULT_CARD)
            for event in [
                *f.team(JAN31, ("seat-1", "standard")),
                f.usage(at("2026-02-01 00:00"), request_id="r1", credits=10**9),
                f.usage(at("2026-03-05 00:00"), "seat-9", request_id="r2", credits=1),
            ]
        )
    ]
    assert outcomes == [
        [],  # the activation
        ["SeatStatusChanged"],
        [],  # the key
        ["CreditsDeducted", "SeatStatusChanged"],  # the seat is suspended, exhausted
        "rejected",  # after the month's rollover resumed the seat: unknown seat
    ]


def test_a_state_of_another_format_is_refused() -> None:
    data = AccountState().to_dict()
    data["format"] = 2
    with pytest.raises(ValueError, match="unsupported account state format 2"):
        AccountState.from_dict(data)


# -- the team overview -------------------------------------------------------------------


def test_overview_of_a_running_month_with_two_valid_packs() -> None:
    f = Facts()
    events = [
        *f.team(JAN31, ("seat-1", "standard"), ("seat-2", "advanced")),
        f.buy_pack(at("2026-02-01 00:00"), "pack-a"),
        f.buy_pack(at("2026-02-02 00:00"), "pack-b"),
        f.buy_pack(at("2026-02-20 00:00"), "pack-c"),  # bought later than the asked time
        f.usage(at("2026-02-03 00:00"), "seat-1", credits=30_000),
        f.usage(at("2026-02-04 00:00"), "seat-1", credits=625_000),
        f.usage(at("2026-02-05 00:00"), "seat-2", credits=1_000),
    ]
    state, _ = fold(events, DEFAULT_CARD)
    month_end = at("2026-02-28 10:00")
    view = subscription_view(state, "sub-1", at("2026-02-10 00:00"))
    assert view is not None
    assert view.subscription_id == "sub-1"
    assert (view.status, view.started_at, view.ends_at) == ("active", JAN31, None)
    assert (view.month_start, view.month_end) == (JAN31, month_end)
    shared = 2 * PACK_CREDITS_MICRO - 630_000 * MICRO
    assert view.seats == (
        SeatView(
            subscription_id="sub-1",
            seat_id="seat-1",
            member="seat-1@team",
            tier="standard",
            quota_micro=25_000 * MICRO,
            used_micro=25_000 * MICRO,
            seat_remaining_micro=0,
            shared_remaining_micro=shared,
            status="active",
            reason=None,
            month_start=JAN31,
            month_end=month_end,
            resets_at=month_end,
        ),
        SeatView(
            subscription_id="sub-1",
            seat_id="seat-2",
            member="seat-2@team",
            tier="advanced",
            quota_micro=100_000 * MICRO,
            used_micro=1_000 * MICRO,
            seat_remaining_micro=99_000 * MICRO,
            shared_remaining_micro=shared,
            status="active",
            reason=None,
            month_start=JAN31,
            month_end=month_end,
            resets_at=month_end,
        ),
    )
    assert view.seats[1].remaining_micro == 99_000 * MICRO + shared
    assert view.packs == (
        PackView(
            pack_id="pack-a",
            purchased_at=at("2026-02-01 00:00"),
            expires_at=at("2026-03-01 00:00"),
            used_micro=PACK_CREDITS_MICRO,
            remaining_micro=0,
            valid=True,
        ),
        PackView(
            pack_id="pack-b",
            purchased_at=at("2026-02-02 00:00"),
            expires_at=at("2026-03-02 00:00"),
            used_micro=5_000 * MICRO,
            remaining_micro=620_000 * MICRO,
            valid=True,
        ),
        PackView(
            pack_id="pack-c",
            purchased_at=at("2026-02-20 00:00"),
            expires_at=at("2026-03-20 00:00"),
            used_micro=0,
            remaining_micro=PACK_CREDITS_MICRO,
            valid=False,
        ),
    )
    assert view.quota_micro == (125_000 + 2 * 625_000) * MICRO
    assert view.used_micro == (26_000 + 630_000) * MICRO
    assert view.remaining_micro == 99_000 * MICRO + shared
    assert view.utilization_basis_points == 656_000 * 10_000 // 1_375_000  # 47.70 %

    # pack-a has expired (its forfeiture not yet final): it is left out
    later = subscription_view(state, "sub-1", at("2026-03-01 00:00"))
    assert later is not None
    assert [p.pack_id for p in later.packs] == ["pack-b", "pack-c"]
    assert [p.valid for p in later.packs] == [True, True]


def test_overview_of_a_fully_used_seat_and_of_no_quota_at_all() -> None:
    f = Facts()
    events = [
        *f.team(JAN31, ("seat-1", "standard")),
        f.usage(at("2026-02-01 00:00"), credits=25_000),
    ]
    state, _ = fold(events, DEFAULT_CARD)
    used_up = subscription_view(state, "sub-1", at("2026-02-02 00:00"))
    assert used_up is not None
    assert used_up.utilization_basis_points == 10_000
    assert (used_up.remaining_micro, used_up.seats[0].reason) == (0, "quota_exhausted")
    assert used_up.seats[0].resets_at == at("2026-02-28 10:00")

    next_month = subscription_view(state, "sub-1", at("2026-02-28 10:00"))
    assert next_month is not None
    fresh = next_month.seats[0]
    assert (fresh.used_micro, fresh.seat_remaining_micro) == (0, 25_000 * MICRO)
    assert (fresh.month_start, fresh.month_end) == (at("2026-02-28 10:00"), at("2026-03-31 10:00"))
    assert next_month.utilization_basis_points == 0

    state, _ = fold([f.remove_seat(at("2026-02-03 00:00"), "seat-1")], DEFAULT_CARD, state)
    before = subscription_view(state, "sub-1", at("2026-02-02 23:59"))
    assert before is not None
    assert [s.seat_id for s in before.seats] == ["seat-1"]
    empty = subscription_view(state, "sub-1", at("2026-02-03 00:00"))  # the removal instant
    assert empty is not None
    assert (empty.seats, empty.packs) == ((), ())
    assert (empty.quota_micro, empty.used_micro, empty.utilization_basis_points) == (0, 0, 0)


@pytest.mark.parametrize(
    ("ending", "status"),
    [("cancel", "cancelled"), ("expire", "expired")],
)
def test_overview_of_an_ended_plan_promises_no_reset(ending: str, status: str) -> None:
    f = Facts()
    end = at("2026-02-10 00:00")
    events = [
        f.activate(JAN31, expires_at=end if ending == "expire" else None),
        f.add_seat(JAN31, "seat-1"),
        f.issue_key(JAN31, "seat-1"),
        f.usage(at("2026-02-01 00:00"), credits=1),
    ]
    if ending == "cancel":
        events.append(f.cancel(end))
    state, _ = fold(events, DEFAULT_CARD)
    view = subscription_view(state, "sub-1", at("2026-02-11 00:00"))
    assert view is not None
    assert (view.status, view.ends_at) == (status, end)
    seat = view.seats[0]
    assert (seat.status, seat.reason) == ("suspended", f"subscription_{status}")
    assert seat.resets_at is None
    assert (seat.used_micro, seat.seat_remaining_micro) == (1 * MICRO, 24_999 * MICRO)


# -- the guard ---------------------------------------------------------------------------


@patches_the_core
def test_a_fact_that_fails_unexpectedly_is_rejected_and_the_fold_goes_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What time brought before the fact stands; what the fact itself emitted is dropped and
    replaced by a rejection naming the error (at most 500 characters of it)."""
    f = Facts()
    state, _ = fold(
        [*f.team(JAN31, ("seat-1", "standard")), f.usage(at("2026-02-01 00:00"), credits=25_000)],
        DEFAULT_CARD,
    )
    assert state.subscriptions["sub-1"].seats["seat-1"].status == "suspended"
    changes = seat_status.changes

    def failing(*args: Any, **kwargs: Any) -> Any:
        if kwargs.get("seats", args[4] if len(args) > 4 else None) is not None:
            raise RuntimeError("boom " + "x" * 600)  # the usage's own status check
        return changes(*args, **kwargs)

    monkeypatch.setattr(seat_status, "changes", failing)
    # next month: the review resumes the seat, then the usage fails after its deduction
    usage = f.usage(at("2026-03-01 00:00"), credits=25_000)
    lean = state.snapshot()
    results = apply(state, usage, DEFAULT_CARD)
    assert [r.event_type for r in results] == ["SeatStatusChanged", "FactRejected"]
    # quota's fold, which leaves the deduction out, drops and rejects alike, under the same ids
    assert apply(lean, usage, DEFAULT_CARD, deductions=False) == results
    assert [r.event_id for r in results] == [derived_event_id(usage.event_id, i) for i in (0, 1)]
    assert payloads(results, "SeatStatusChanged")[0].reason == "month_rolled_over"
    rejected = payloads(results, "FactRejected")[0]
    assert rejected.reason == "apply_failed"
    assert rejected.detail == ("RuntimeError: boom " + "x" * 600)[:500]
    assert rejected.rejected_event_id == usage.event_id

    monkeypatch.setattr(seat_status, "changes", changes)
    later = apply(state, f.usage(at("2026-03-02 00:00"), credits=1), DEFAULT_CARD)
    assert later[0].event_type == "CreditsDeducted"


# -- rejections: reason and detail -------------------------------------------------------


def _rejection(events: list[FactEvent]) -> tuple[str, str]:
    _, results = fold(events, DEFAULT_CARD)
    rejected = payloads(results, "FactRejected")
    assert len(rejected) == 1
    return rejected[0].reason, rejected[0].detail


def test_each_rejection_says_why() -> None:
    f = Facts()
    team = f.team(JAN31, ("seat-1", "standard"))
    t = at("2026-02-01 00:00")
    assert _rejection([*team, f.buy_pack(t, "pack-a"), f.buy_pack(t, "pack-a")]) == (
        "duplicate_pack",
        "pack 'pack-a' was already purchased",
    )
    assert _rejection([*team, f.usage(t, request_id="r1", images=1)]) == (
        "unpriceable_usage",
        "qwen3.6-plus is a text model and cannot price images",
    )
    # 5e12 input tokens cost exactly the most a request may (a billion credits); 50 more do not
    most = [*team, f.usage(t, request_id="most", input_tokens=5 * 10**12)]
    _, results = fold(most, DEFAULT_CARD)
    assert payloads(results, "CreditsDeducted")[0].price_micro == MAX_PRICE_MICRO
    assert _rejection([*team, f.usage(t, request_id="r2", input_tokens=5 * 10**12 + 50)]) == (
        "unpriceable_usage",
        "the usage would cost more than any request may",
    )
    ends = at("2026-02-28 10:00")
    expiring = [f.activate(JAN31, expires_at=ends), f.cancel(ends + timedelta(hours=1))]
    assert _rejection(expiring) == (
        "subscription_inactive",
        "subscription 'sub-1' had already expired",
    )
    g = Facts()
    old = at("2024-12-31 00:00")  # before the shipped card's first version (2025-01-01)
    assert _rejection([*g.team(old, ("seat-1", "standard")), g.usage(old, credits=1)]) == (
        "no_rate_card_in_force",
        "no rate card version is in force at 2024-12-31T00:00:00+00:00 "
        "(the first starts 2025-01-01T00:00:00+00:00)",
    )
    assert _rejection([*team, f.revoke_key(t, "key-9")]) == (
        "unknown_key",
        "API key 'key-9' is not known",
    )
    assert _rejection([*team, f.usage(t, key="key-seat-1", seat="seat-1", sub="sub-9")]) == (
        "unknown_subscription",
        "subscription 'sub-9' is not known",
    )
    two = [*f.team(JAN31, ("seat-1", "standard"), ("seat-2", "standard"))]
    assert _rejection([*two, f.usage(t, "seat-2", key="key-seat-1")]) == (
        "key_not_for_seat",
        "API key 'key-seat-1' belongs to seat 'seat-1'",
    )
    revoked = [*team, f.revoke_key(t, "key-seat-1")]
    assert _rejection([*revoked, f.revoke_key(t, "key-seat-1")]) == (
        "key_revoked",
        "API key 'key-seat-1' was already revoked",
    )
    # a call made at the very instant of the revocation is not paid for
    assert _rejection([*revoked, f.usage(t, request_id="r3", recorded=t + timedelta(hours=1))]) == (
        "key_revoked",
        "API key 'key-seat-1' was revoked at 2026-02-01T00:00:00+00:00",
    )
    removed = [*team, f.remove_seat(t, "seat-1")]
    assert _rejection([*removed, f.remove_seat(t, "seat-1")]) == (
        "seat_inactive",
        "seat 'seat-1' was already removed",
    )
    assert _rejection([*team, f.activate(t, sub="sub-2")]) == (
        "account_has_active_subscription",
        "the account already has subscription 'sub-1' active then",
    )
    scheduled = f.event(
        "SubscriptionActivated",
        t,
        subscription_id="sub-3",
        started_at=at("2026-03-01 00:00"),
        expires_at=None,
    )
    assert _rejection([scheduled, f.buy_pack(t, "pack-z", sub="sub-3")]) == (
        "subscription_inactive",
        "subscription 'sub-3' is not started at 2026-02-01T00:00:00+00:00",
    )


# -- request ids -------------------------------------------------------------------------


def test_request_ids_are_kept_exactly_while_a_duplicate_may_arrive() -> None:
    f = Facts()
    t0 = at("2026-02-01 00:00")
    state, _ = fold(
        [*f.team(JAN31, ("seat-1", "standard")), f.usage(t0, request_id="a")], DEFAULT_CARD
    )
    assert state.request_ids == {"a": t0 + REQUEST_ID_MEMORY}
    # a usage reported exactly REQUEST_ID_MEMORY late is charged but not remembered
    late = f.usage(t0, request_id="b", recorded=t0 + REQUEST_ID_MEMORY - timedelta(seconds=1))
    fold([late], DEFAULT_CARD, state)
    assert set(state.request_ids) == {"a", "b"}
    exact = f.usage(t0, request_id="c", recorded=t0 + REQUEST_ID_MEMORY)
    _, results = fold([exact], DEFAULT_CARD, state)
    assert [r.event_type for r in results][:1] == ["CreditsDeducted"]
    assert "c" not in state.request_ids
    # and at that instant the ids of t0 are forgotten
    assert state.request_ids == {}
    assert state.forgetting == []


def test_reloaded_request_ids_are_forgotten_in_time_order() -> None:
    data = AccountState().to_dict(with_request_ids=False)
    data["clock"] = at("2026-02-01 00:00").isoformat()
    early, late = at("2026-02-02 00:00"), at("2026-02-05 00:00")
    state = AccountState.from_dict(data, [("a-late", late), ("b-early", early)])
    state.clock = at("2026-02-03 00:00")
    state.forget_requests()
    assert state.request_ids == {"a-late": late}


@pytest.mark.usefixtures("local_zone")
def test_stored_times_are_written_in_utc() -> None:
    state, _ = fold(busy_account(), DEFAULT_CARD)
    stored = json.dumps(state.to_dict())
    assert "+00:00" in stored
    assert "+09:00" not in stored
    assert "-05:00" not in stored
    assert "-04:00" not in stored


@pytest.mark.usefixtures("local_zone")
def test_the_snapshot_form_keeps_times_as_utc_datetimes() -> None:
    """`to_dict(times_as_text=False)` (what the projections hand orjson) gives the same times
    as the text form, as UTC datetimes, even for a state loaded with times in another zone."""
    text = fold(busy_account(), DEFAULT_CARD)[0].to_dict()
    zoned = json.loads(
        json.dumps(text).replace("+00:00", "+09:00")  # the same clock readings, 9 hours off
    )
    state = AccountState.from_dict(zoned)
    objects = state.to_dict(times_as_text=False)
    assert isinstance(objects["clock"], datetime)
    assert objects["clock"].tzinfo is UTC
    assert objects["clock"] == datetime.fromisoformat(zoned["clock"])
    key = next(iter(objects["keys"].values()))
    assert key["issued_at"].tzinfo is UTC
    assert json.loads(json.dumps(objects, default=datetime.isoformat)) == state.to_dict()


def test_a_cancelled_downgrade_leaves_the_tiers_as_they_were() -> None:
    f = Facts()
    events = [
        *f.team(JAN31, ("seat-1", "advanced")),
        f.change_tier(at("2026-02-01 00:00"), "seat-1", "standard"),
        f.change_tier(at("2026-02-02 00:00"), "seat-1", "premium"),
        f.change_tier(at("2026-02-03 00:00"), "seat-1", "premium"),
        f.change_tier(at("2026-03-01 00:00"), "seat-1", "standard"),
        f.change_tier(at("2026-03-02 00:00"), "seat-1", "premium"),
    ]
    state, results = fold(events, DEFAULT_CARD)
    assert state.subscriptions["sub-1"].seats["seat-1"].tiers == [(0, "premium")]
    assert payloads(results, "FactRejected") == []


def test_a_fact_recorded_exactly_when_a_month_ends_sees_the_new_month() -> None:
    f = Facts()
    month_end = at("2026-02-28 10:00")
    state, _ = fold(
        [*f.team(JAN31, ("seat-1", "standard")), f.usage(at("2026-02-01 00:00"), credits=25_000)],
        DEFAULT_CARD,
    )
    assert state.next_review == month_end
    results = apply(state, f.revoke_key(month_end - timedelta(seconds=1), "key-9"), DEFAULT_CARD)
    assert [(r.event_type, r.occurred_at) for r in results] == [
        ("SeatStatusChanged", month_end),
        ("FactRejected", month_end - timedelta(seconds=1)),
    ]
    assert payloads(results, "SeatStatusChanged")[0].reason == "month_rolled_over"
