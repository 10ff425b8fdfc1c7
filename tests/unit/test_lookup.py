"""`ledger.lookup.fact_status`: what ingest's and the ledger's rows say became of a fact.

The rows are built as the tables hold them: the archived value is the event's JSON as
produced, the entries are the fold's results as the ledger stores them.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from ledger.lookup import fact_status, parse_event_id
from metering.core.fold import fold
from metering.core.ratecard import load_rate_card
from metering.settings import DEFAULT_RATE_CARD
from schemas.envelope import FactEvent, ResultEvent
from tests.unit.event_builders import Facts

CARD = load_rate_card(DEFAULT_RATE_CARD)
T0 = datetime(2026, 1, 10, 9, 0, tzinfo=UTC)


def archived(event: FactEvent) -> dict[str, Any]:
    return {
        "event_id": event.event_id,
        "account_id": event.account_id,
        "event_type": event.event_type,
        "recorded_at": event.recorded_at,
        "value": event.model_dump_json().encode(),
    }


def accepted(event: FactEvent, scope: str, key: str, *, kept: bool) -> dict[str, Any]:
    """An `ingest_accepted` row; `kept`: the envelope is still there (not yet acknowledged)."""
    return {
        "scope": scope,
        "key": key,
        "event_id": event.event_id,
        "account_id": event.account_id,
        "envelope": event.model_dump_json().encode() if kept else None,
        "stored_at": event.recorded_at + timedelta(milliseconds=3),
    }


def entries(results: list[ResultEvent], source: FactEvent) -> list[dict[str, Any]]:
    """The stored bodies of the results the fold derived from `source`."""
    return [orjson.loads(r.model_dump_json()) for r in results if _derived_from(r, source)]


def _derived_from(result: ResultEvent, source: FactEvent) -> bool:
    payload: Any = result.payload
    if result.event_type == "FactRejected":
        return bool(payload.rejected_event_id == source.event_id)
    return result.event_type == "CreditsDeducted" and payload.request_id == (
        source.payload.request_id  # type: ignore[union-attr]
    )


def team_and_usage() -> tuple[Facts, list[FactEvent], list[ResultEvent]]:
    facts = Facts("acct-1")
    events = [
        *facts.team(T0, ("seat-1", "standard")),
        facts.usage(T0 + timedelta(days=1), credits=3, request_id="req-ok"),
        facts.usage(T0 + timedelta(days=1), key="key-nope", request_id="req-bad"),
    ]
    return facts, events, fold(events, CARD)[1]


def test_an_applied_usage_shows_its_deduction_in_credits() -> None:
    _, events, results = team_and_usage()
    usage = events[-2]
    status = fact_status(
        accepted(usage, "usage:acct-1", "req-ok", kept=False),
        archived(usage),
        entries(results, usage),
    )
    assert status is not None
    assert (status.status, status.event_type, status.request_id) == (
        "applied",
        "UsageRecorded",
        "req-ok",
    )
    assert status.recorded_at == usage.recorded_at
    assert status.rejection is None
    [entry] = status.entries
    assert (entry.event_type, entry.price, entry.shortfall) == ("CreditsDeducted", "3", "0")
    assert [(p.product, p.bucket_id, p.credits) for p in entry.receipt or []] == [
        ("seat_quota", "seat-1:2026-01", "3")
    ]


def test_a_usage_the_fold_rejects_says_why() -> None:
    _, events, results = team_and_usage()
    usage = events[-1]
    status = fact_status(None, archived(usage), entries(results, usage))
    assert status is not None
    assert (status.status, status.request_id) == ("rejected", "req-bad")
    assert status.rejection is not None
    assert status.rejection.reason == "unknown_key"
    assert "key-nope" in status.rejection.detail
    [entry] = status.entries
    assert (entry.event_type, entry.price, entry.receipt) == ("FactRejected", None, None)


def test_a_fact_only_ingest_knows_is_accepted() -> None:
    _, events, _ = team_and_usage()
    usage = events[-2]
    kept = fact_status(accepted(usage, "usage:acct-1", "req-ok", kept=True), None, [])
    assert kept is not None
    assert (kept.status, kept.event_type, kept.request_id, kept.entries) == (
        "accepted",
        "UsageRecorded",
        "req-ok",
        [],
    )
    assert kept.recorded_at == usage.recorded_at
    activation = events[0]
    published = fact_status(accepted(activation, "subscription", "sub-1", kept=False), None, [])
    assert published is not None
    assert (published.status, published.event_type, published.request_id) == (
        "accepted",
        "SubscriptionActivated",
        None,
    )
    assert published.recorded_at == activation.recorded_at + timedelta(milliseconds=3)


def test_a_plan_fact_applied_without_entries() -> None:
    _, events, _ = team_and_usage()
    seat = events[1]
    status = fact_status(accepted(seat, "seat", "seat-1", kept=False), archived(seat), [])
    assert status is not None
    assert (status.status, status.event_type, status.entries, status.request_id) == (
        "applied",
        "SeatAdded",
        [],
        None,
    )


def test_nothing_knows_it() -> None:
    assert fact_status(None, None, []) is None
    assert parse_event_id("not-a-uuid") is None
    assert parse_event_id("5b0c3a4e-0000-4000-8000-000000000001") is not None
