"""ingest's pure rules for usage reports: the time window and the rate card, as a table."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ingest.directory import KeyRecord
from ingest.rules import UsageWindow, envelope, usage_envelope, usage_problems
from metering.core.ratecard import load_rate_card
from metering.settings import DEFAULT_RATE_CARD
from schemas.api import UsageReport
from schemas.envelope import parse_event
from schemas.facts import UsageRecorded

CARD = load_rate_card(DEFAULT_RATE_CARD)
NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
WINDOW = UsageWindow(max_future_skew=timedelta(minutes=5), max_lateness=timedelta(hours=72))
KEY = KeyRecord(
    key_id="key-1",
    account_id="acme",
    subscription_id="sub-1",
    seat_id="seat-1",
    issued_at=NOW - timedelta(days=10),
    revoked_at=None,
    seat_added_at=NOW - timedelta(days=10),
    seat_removed_at=None,
    started_at=NOW - timedelta(days=20),
    ends_at=None,
)


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
        ({"images": 1}, ["unpriceable_usage"]),
        ({"input_tokens": 1_000_000 - 40794}, []),
        ({"input_tokens": 1_000_000 - 40793}, ["tokens_beyond_context"]),
        ({"output_tokens": 1_000_001}, ["tokens_beyond_context"]),
        ({"key_id": "key-2"}, ["unknown_key"]),
        ({"account_id": "other"}, ["unknown_key"]),
        ({"seat_id": "seat-2"}, ["key_not_for_seat"]),
        ({"subscription_id": "sub-2"}, ["key_not_for_seat"]),
    ],
)
def test_usage_problems(changes: dict[str, object], reasons: list[str]) -> None:
    problems = usage_problems(report(**changes), CARD, WINDOW, NOW, KEY)
    assert [p.reason for p in problems] == reasons


MINUTE = timedelta(minutes=1)
SECOND = timedelta(seconds=1)


@pytest.mark.parametrize(
    ("key_changes", "occurred_at", "reasons"),
    [
        ({"revoked_at": NOW - MINUTE}, NOW - MINUTE, ["key_revoked"]),
        ({"revoked_at": NOW - MINUTE}, NOW - 2 * MINUTE, []),  # the call started before
        ({"issued_at": NOW - MINUTE}, NOW - 6 * MINUTE - SECOND, ["key_not_yet_issued"]),
        ({"issued_at": NOW - MINUTE}, NOW - 5 * MINUTE, []),  # a clock behind, within skew
        ({"ends_at": NOW - MINUTE}, NOW - MINUTE, ["subscription_not_active"]),
        ({"ends_at": NOW - MINUTE}, NOW - 2 * MINUTE, []),
        ({"started_at": NOW + MINUTE}, NOW, ["subscription_not_active"]),
        ({"seat_removed_at": NOW - MINUTE}, NOW - MINUTE, ["seat_not_active"]),
        (
            {"seat_added_at": NOW - MINUTE, "issued_at": NOW - 9 * MINUTE},
            NOW - 2 * MINUTE,
            ["seat_not_active"],
        ),
        # a gateway clock ahead (within the skew) is judged at ingest's clock
        ({"ends_at": NOW + MINUTE}, NOW + 2 * MINUTE, []),
    ],
)
def test_key_seat_and_plan_at_the_usage_time(
    key_changes: dict[str, object], occurred_at: datetime, reasons: list[str]
) -> None:
    key = _key(**key_changes)
    problems = usage_problems(report(occurred_at=occurred_at), CARD, WINDOW, NOW, key)
    assert [p.reason for p in problems] == reasons


def _key(**changes: object) -> KeyRecord:
    fields = {name: getattr(KEY, name) for name in KeyRecord.__slots__}
    fields.update(changes)
    return KeyRecord(**fields)


def test_a_window_in_round_units_is_said_in_them() -> None:
    [problem] = usage_problems(report(occurred_at=NOW - timedelta(days=4)), CARD, WINDOW, NOW, KEY)
    assert problem.field == "occurred_at"
    assert "older than the lateness bound of 72 hours" in problem.message


def test_the_envelope_parses_as_the_contract_says() -> None:
    usage = report(tool_calls={"web_search": 2}, client="cline")
    raw = usage_envelope(
        usage, usage.model_dump(mode="json"), event_id=uuid.UUID(int=7), recorded_at=NOW
    )
    event = parse_event(raw)
    assert event.event_type == "UsageRecorded"
    assert event.account_id == "acme"
    assert event.occurred_at == NOW
    assert orjson.loads(raw)["payload"]["tool_calls"] == {"web_search": 2}
    assert event.payload.model_dump(exclude={"request_id"}) == usage.model_dump(
        exclude={"request_id", "account_id", "occurred_at"}
    )


@given(
    input_tokens=st.integers(0, 10**9),
    cached_tokens=st.integers(0, 10**9),
    thinking=st.booleans(),
    tool_calls=st.dictionaries(st.sampled_from(["web_search", "code", "x-y.z"]), st.integers(0, 9)),
    images=st.integers(0, 4),
    client=st.one_of(st.none(), st.sampled_from(["cline", "cursor"])),
    occurred_at=st.datetimes(
        min_value=datetime(2001, 1, 1),
        max_value=datetime(2098, 1, 1),
        timezones=st.sampled_from([UTC, timezone(timedelta(hours=-7, minutes=-30))]),
    ),
)
def test_the_usage_envelope_is_the_contracts_own_json_of_the_report(**fields: Any) -> None:
    """`usage_envelope` takes its payload from the report's dump: it is exactly what
    validating the report as a `UsageRecorded` and dumping that would give."""
    if fields["client"] is None:
        del fields["client"]
    usage = report(**fields)
    raw = usage_envelope(
        usage, usage.model_dump(mode="json"), event_id=uuid.UUID(int=7), recorded_at=NOW
    )
    recorded = UsageRecorded.model_validate(usage.model_dump(exclude={"account_id", "occurred_at"}))
    reference = envelope(
        "UsageRecorded",
        recorded,
        event_id=uuid.UUID(int=7),
        account_id=usage.account_id,
        occurred_at=usage.occurred_at,
        recorded_at=NOW,
    )
    assert orjson.loads(raw) == orjson.loads(reference)
    assert parse_event(raw) == parse_event(reference)


def _as_sent(usage: UsageReport, offset_minutes: int) -> UsageReport:
    """`usage` as a gateway would send it with its time written at another offset, parsed
    from JSON as ingest parses it (pydantic then gives the time its own zone object)."""
    zone = timezone(timedelta(minutes=offset_minutes))
    fields = usage.model_dump(mode="json")
    fields["occurred_at"] = usage.occurred_at.astimezone(zone).isoformat()
    return UsageReport.model_validate_json(orjson.dumps(fields))


_OFFSETS = st.integers(min_value=-23 * 60 - 59, max_value=23 * 60 + 59)


@given(
    late=st.integers(min_value=-4 * 86400, max_value=3600).map(lambda s: timedelta(seconds=s)),
    offset=_OFFSETS,
    key_changes=st.sampled_from(
        [
            {},
            {"revoked_at": NOW - MINUTE},
            {"issued_at": NOW - MINUTE},
            {"ends_at": NOW - 3 * MINUTE},
            {"seat_added_at": NOW - 2 * MINUTE, "issued_at": NOW - 9 * MINUTE},
        ]
    ),
)
def test_a_report_is_judged_the_same_at_whatever_offset_its_time_is_written(
    late: timedelta, offset: int, key_changes: dict[str, object]
) -> None:
    """The rules compare the report's instant, in UTC (issue 17: a comparison between two
    zones costs 15 times one within a zone), so the offset a gateway writes its time in
    changes neither the reasons nor their messages."""
    usage = report(occurred_at=NOW - late)
    key = _key(**key_changes)
    expected = usage_problems(usage, CARD, WINDOW, NOW, key)
    assert usage_problems(_as_sent(usage, offset), CARD, WINDOW, NOW, key) == expected


@given(
    occurred_at=st.datetimes(min_value=datetime(2001, 1, 1), max_value=datetime(2098, 1, 1)),
    offset=_OFFSETS,
    recorded_at=st.datetimes(
        min_value=datetime(2001, 1, 1), max_value=datetime(2098, 1, 1), timezones=st.just(UTC)
    ),
)
def test_the_envelope_writes_each_time_as_its_isoformat(
    occurred_at: datetime, offset: int, recorded_at: datetime
) -> None:
    """orjson writes the envelope's times; the text is `isoformat()`'s, for a time parsed by
    pydantic (its own zone object) as for one in a `datetime.timezone`."""
    usage = _as_sent(report(occurred_at=occurred_at.replace(tzinfo=UTC)), offset)
    raw = usage_envelope(
        usage, usage.model_dump(mode="json"), event_id=uuid.UUID(int=7), recorded_at=recorded_at
    )
    written = orjson.loads(raw)
    assert written["occurred_at"] == usage.occurred_at.isoformat()
    assert written["recorded_at"] == recorded_at.isoformat()
    zoned = usage.occurred_at.astimezone(timezone(timedelta(minutes=offset)))
    fact = envelope(
        "UsageRecorded",
        UsageRecorded.model_validate(usage.model_dump(exclude={"account_id", "occurred_at"})),
        event_id=uuid.UUID(int=7),
        account_id="acme",
        occurred_at=zoned,
        recorded_at=recorded_at,
    )
    assert orjson.loads(fact)["occurred_at"] == zoned.isoformat()
