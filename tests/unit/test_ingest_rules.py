"""ingest's pure rules for usage reports: the time window and the rate card, as a table."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import orjson
import pytest

from ingest.facts import UsageWindow, envelope, usage_problems, usage_recorded
from metering.core.ratecard import load_rate_card
from metering.settings import DEFAULT_RATE_CARD
from schemas.api import UsageReport
from schemas.envelope import parse_event

CARD = load_rate_card(DEFAULT_RATE_CARD)
NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
WINDOW = UsageWindow(max_future_skew=timedelta(minutes=5), max_lateness=timedelta(hours=72))


def report(**changes: object) -> UsageReport:
    fields: dict[str, object] = {
        "request_id": "r-1",
        "account_id": "acme",
        "subscription_id": "sub-1",
        "seat_id": "seat-1",
        "key_id": "key-1",
        "model": "qwen3.6-plus",
        "occurred_at": NOW,
        "input_tokens": 8349,
        "cached_tokens": 40794,
        "output_tokens": 573,
    }
    return UsageReport.model_validate({**fields, **changes})


@pytest.mark.parametrize(
    ("changes", "reasons"),
    [
        ({}, []),
        ({"occurred_at": NOW + timedelta(minutes=5)}, []),
        ({"occurred_at": NOW + timedelta(minutes=5, seconds=1)}, ["occurred_in_future"]),
        ({"occurred_at": NOW - timedelta(hours=72)}, []),
        ({"occurred_at": NOW - timedelta(hours=72, seconds=1)}, ["occurred_too_late"]),
        ({"model": "gpt-9"}, ["unknown_model"]),
        ({"model": "wan2.7-image", "images": 1}, []),
        (
            {"model": "gpt-9", "occurred_at": NOW + timedelta(days=1)},
            ["occurred_in_future", "unknown_model"],
        ),
    ],
)
def test_usage_problems(changes: dict[str, object], reasons: list[str]) -> None:
    problems = usage_problems(report(**changes), CARD, WINDOW, NOW)
    assert [p.reason for p in problems] == reasons


def test_a_window_in_round_units_is_said_in_them() -> None:
    [problem] = usage_problems(report(occurred_at=NOW - timedelta(days=4)), CARD, WINDOW, NOW)
    assert problem.field == "occurred_at"
    assert "older than the lateness bound of 72 hours" in problem.message


def test_the_envelope_parses_as_the_contract_says() -> None:
    usage = report(tool_calls={"web_search": 2}, client="cline")
    raw = envelope(
        "UsageRecorded",
        usage_recorded(usage),
        event_id=uuid.UUID(int=7),
        account_id="acme",
        occurred_at=usage.occurred_at,
        recorded_at=NOW,
    )
    event = parse_event(raw)
    assert event.event_type == "UsageRecorded"
    assert event.account_id == "acme"
    assert event.occurred_at == NOW
    assert orjson.loads(raw)["payload"]["tool_calls"] == {"web_search": 2}
    assert event.payload.model_dump(exclude={"request_id"}) == usage.model_dump(
        exclude={"request_id", "account_id", "occurred_at"}
    )
