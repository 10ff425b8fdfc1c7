"""Properties of the fold over random streams of one account's facts (design.md §4).

Plan facts arrive in time order; usage may arrive late (reported after later facts), as a
gateway's reports do.
"""

import json
from datetime import datetime, timedelta

from event_builders import DEFAULT_CARD, TOKENS_PER_CREDIT, Facts, at
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from metering.core.catalog import PACK_CREDITS_MICRO, REQUEST_ID_MEMORY, TIER_QUOTA_MICRO
from metering.core.fold import apply, fold
from metering.core.state import AccountState
from metering.core.views import seat_view
from metering.snapshots import load_snapshot, snapshot_json
from schemas.envelope import (
    LEDGER_ADAPTER,
    SEAT_STATUS_ADAPTER,
    FactEvent,
    ResultEvent,
    result_json,
)
from schemas.results import CreditsDeducted

START = at("2026-01-31 10:00")
TIERS = ["standard", "advanced", "premium"]
PACKS = [f"pack-{n}" for n in range(5)]
MINUTES = 150 * 24 * 60

PROPERTIES = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def times(draw: st.DrawFn) -> list[datetime]:
    minutes = draw(st.lists(st.integers(0, MINUTES), min_size=3, max_size=45))
    return [START + timedelta(minutes=m) for m in sorted(minutes)]


@st.composite
def streams(draw: st.DrawFn) -> list[FactEvent]:
    f = Facts()
    events: list[FactEvent] = f.team(START, ("s1", "standard"), ("s2", "advanced"))
    for t in times(draw):
        kind = draw(st.sampled_from(["usage"] * 10 + ["plan"] * 3 + ["pack"] * 2 + ["time"]))
        sub = draw(st.sampled_from(["sub-1"] * 8 + ["sub-2"]))
        seat = draw(st.sampled_from(["s1"] * 3 + ["s2"] * 2 + ["s3"]))
        if kind == "usage":
            late = draw(
                st.sampled_from([timedelta(0)] * 4 + [timedelta(days=20), timedelta(hours=3)])
            )
            events.append(
                f.usage(
                    t - late,
                    seat,
                    sub=sub,
                    credits=draw(st.sampled_from([0, 1, 900, 20_000, 90_000, 400_000])),
                    cached_tokens=draw(st.integers(0, 99_999)),
                    output_tokens=draw(st.integers(0, 9_999)),
                    thinking=draw(st.booleans()),
                    request_id=draw(st.sampled_from([None, None, None, "dup"])),
                    key=draw(st.sampled_from([None, None, None, "key-s3"])),
                    model=draw(st.sampled_from(["qwen3.6-plus"] * 3 + ["glm-5", "nope"])),
                )
            )
        elif kind == "pack":
            shift = draw(st.sampled_from([timedelta(0), timedelta(hours=-5), timedelta(hours=5)]))
            events.append(f.buy_pack(t, draw(st.sampled_from(PACKS)), sub, t + shift))
        elif kind == "time":
            expires = draw(st.sampled_from([None, t + timedelta(days=30)]))
            events.append(draw(st.sampled_from([f.activate(t, sub, expires), f.cancel(t, sub)])))
        else:
            tier = draw(st.sampled_from(TIERS))
            plan_facts: list[FactEvent] = draw(
                st.sampled_from(
                    [
                        [f.add_seat(t, seat, tier, sub), f.issue_key(t, seat, sub=sub)],
                        [f.change_tier(t, seat, tier, sub)],
                        [f.change_tier(t, seat, tier, sub)],
                        [f.remove_seat(t, seat, sub)],
                        [f.revoke_key(t, f"key-{seat}")],
                    ]
                )
            )
            events += plan_facts
    return events


def check_result(result: ResultEvent) -> None:
    """Every result survives JSON and validation unchanged, and deductions conserve credits."""
    adapter = SEAT_STATUS_ADAPTER if result.event_type == "SeatStatusChanged" else LEDGER_ADAPTER
    assert adapter.validate_json(result.model_dump_json()) == result
    assert result_json(result) == result.model_dump_json().encode()
    payload = result.payload
    for model in (result, payload):  # the fold gives `trusted` every field, in order
        assert list(model.__dict__) == list(type(model).model_fields)
        assert model.model_fields_set == set(type(model).model_fields)
    if isinstance(payload, CreditsDeducted):
        paid = [line["amount_micro"] for line in payload.receipt]
        assert all(amount > 0 for amount in paid)
        assert sum(paid) + payload.shortfall_micro == payload.price_micro
        assert sum(c["credits_micro"] for c in payload.components) == payload.price_micro


def check_state(state: AccountState) -> None:
    """No bucket below zero, and a seat is suspended iff nothing is left for it."""
    clock = state.clock
    assert clock is not None
    for sub in state.subscriptions.values():
        for pack in sub.packs:
            assert 0 <= pack.used_micro <= PACK_CREDITS_MICRO
        for seat in sub.seats.values():
            for month, used in seat.used_micro.items():
                assert 0 <= used <= TIER_QUOTA_MICRO[seat.tier_in(month)]
            view = seat_view(state, seat.seat_id, clock)
            assert view is not None
            assert seat.status == view.status  # what was published is the status now
            ended = not sub.active_at(clock) or not seat.active_at(clock)
            nothing_left = view.seat_remaining_micro == 0 and view.shared_remaining_micro == 0
            assert (view.status == "suspended") == (ended or nothing_left)


@PROPERTIES
@given(streams())
def test_credits_conserved_and_suspension_iff_nothing_left(events: list[FactEvent]) -> None:
    state = AccountState()
    for event in events:
        for result in apply(state, event, DEFAULT_CARD):
            check_result(result)
        check_state(state)


@PROPERTIES
@given(streams(), st.data())
def test_replay_and_persistence_give_identical_state_and_results(
    events: list[FactEvent], data: st.DataObject
) -> None:
    state, results = fold(events, DEFAULT_CARD)
    assert fold(events, DEFAULT_CARD) == (state, results)
    assert AccountState.from_dict(json.loads(json.dumps(state.to_dict()))) == state

    cut = data.draw(st.integers(0, len(events)))
    head_state, head_results = fold(events[:cut], DEFAULT_CARD)
    saved = head_state.snapshot()
    # As the projections store it (`snapshot_json`, times written by orjson): the state
    # without its request ids, the same as `to_dict` writes it, and the request ids of the
    # deductions (the ledger's CreditsDeducted entries, quota's own table).
    stored = snapshot_json(head_state)
    assert json.loads(stored) == json.loads(json.dumps(head_state.to_dict(with_request_ids=False)))
    deducted = [
        (r.payload.request_id, r.occurred_at + REQUEST_ID_MEMORY)
        for r in head_results
        if r.event_type == "CreditsDeducted"
    ]
    restored = load_snapshot(stored, deducted)
    tail_state, tail_results = fold(events[cut:], DEFAULT_CARD, restored)
    assert (tail_state, head_results + tail_results) == (state, results)
    assert saved == head_state
    fold(events[cut:], DEFAULT_CARD, head_state)
    assert saved.to_dict() == fold(events[:cut], DEFAULT_CARD)[0].to_dict()


@PROPERTIES
@given(streams())
def test_without_deductions_the_fold_leaves_out_only_the_deductions(
    events: list[FactEvent],
) -> None:
    """Quota folds with `deductions=False`: the same state after every fact, and every other
    result the same, under the same id; its request ids remembered are the deductions'."""
    full, lean = AccountState(), AccountState()
    for event in events:
        results = apply(full, event, DEFAULT_CARD)
        assert apply(lean, event, DEFAULT_CARD, deductions=False) == [
            r for r in results if r.event_type != "CreditsDeducted"
        ]
        assert lean == full
        assert lean.request_ids == full.request_ids


def test_results_carry_deterministic_ids_and_the_fact_recorded_at() -> None:
    f = Facts()
    events = [*f.team(START, ("s1", "standard")), f.usage(START, "s1", credits=TOKENS_PER_CREDIT)]
    _, results = fold(events, DEFAULT_CARD)
    _, again = fold(events, DEFAULT_CARD)
    assert [r.event_id for r in results] == [r.event_id for r in again]
    assert len({r.event_id for r in results}) == len(results)
    deducted = results[-1]
    assert deducted.recorded_at == events[-1].recorded_at
    assert deducted.account_id == "acct-1"
