"""The ledger's pure parts: cursors, usage rows and CSV, ledger entry rows, statements."""

from __future__ import annotations

import base64
import csv
import io
from datetime import timedelta

import orjson
import pytest

from ledger.policy import entry_row
from ledger.store import ENTRY_COLUMNS
from ledger.usage import BadCursor, csv_header, csv_rows, decode_cursor, encode_cursor, usage_row
from metering.core.fold import fold
from metering.core.money import MICRO as M
from metering.core.money import parse_credits
from metering.core.state import Subscription
from metering.statement import (
    MonthOutsideSubscription,
    PackPaid,
    SeatModelUsage,
    build_statement,
    subscription_month,
)
from schemas.api import Balances, Statement
from schemas.envelope import FactEvent, ResultEvent
from tests.unit.event_builders import DEFAULT_CARD, Facts, at


def test_a_cursor_round_trips_and_foreign_ones_are_refused() -> None:
    when = at("2026-03-01 10:00")
    cursor = encode_cursor(when, "9665ef28-0b88-5638-9260-b3adfb1fccd1")
    assert decode_cursor(cursor) == (when, "9665ef28-0b88-5638-9260-b3adfb1fccd1")
    for foreign in ("x", "bm90IGpzb24", encode_cursor(when, "id")[:-3], "WzEsMl0"):
        with pytest.raises(BadCursor):
            decode_cursor(foreign)


def _deduction_results() -> tuple[list[FactEvent], list[ResultEvent]]:
    facts = Facts("acct-u")
    t = at("2026-01-10 09:00")
    events = [
        *facts.team(t, ("s1", "standard")),
        facts.buy_pack(t, "p1"),
        facts.usage(t + timedelta(days=1), "s1", credits=25_001, tool_calls={"b": 1, "a": 2}),
    ]
    return events, fold(events, DEFAULT_CARD)[1]


def test_a_usage_row_shows_each_bucket_paid_and_renders_as_csv() -> None:
    _, results = _deduction_results()
    deduction = next(r for r in results if r.event_type == "CreditsDeducted")
    row = usage_row(deduction.model_dump(mode="json"))
    assert row.credits == "25001"
    assert [(p.product, p.bucket_id, p.credits) for p in row.paid_from] == [
        ("seat_quota", "s1:2026-01", "25000"),
        ("shared_pack", "p1", "1"),
    ]
    lines = list(csv.DictReader(io.StringIO(csv_header() + csv_rows([row, row]))))
    assert len(lines) == 2
    assert lines[0]["deducted_product"] == "seat_quota:s1:2026-01=25000; shared_pack:p1=1"
    assert lines[0]["tool_calls"] == "a=2; b=1"
    assert lines[0]["credits"] == "25001"
    assert lines[0]["deducted_at"] == "2026-01-11T09:00:00+00:00"


@pytest.mark.parametrize("start", ["=", "+", "-", "@", "\t", "\r"])
def test_csv_cells_a_spreadsheet_would_run_start_with_a_quote(start: str) -> None:
    """OWASP CSV injection: read back with the csv module, every such cell is text."""
    _, results = _deduction_results()
    deduction = next(r for r in results if r.event_type == "CreditsDeducted")
    row = usage_row(deduction.model_dump(mode="json")).model_copy(
        update={
            "request_id": f'{start}HYPERLINK("http://evil","x")',
            "seat_id": f"{start}1+2",
            "model": f"{start}cmd|' /C calc'!A0",
            "tool_calls": {f"{start}x": 1},
        }
    )
    [line] = list(csv.DictReader(io.StringIO(csv_header() + csv_rows([row]))))
    assert line["request_id"] == f'\'{start}HYPERLINK("http://evil","x")'
    assert line["seat_id"] == f"'{start}1+2"
    assert line["model"] == f"'{start}cmd|' /C calc'!A0"
    assert line["tool_calls"] == f"'{start}x=1"
    assert line["credits"] == "25001"  # numbers and safe text as they were


def test_a_cursor_must_name_an_event_id_and_a_time_in_range() -> None:
    for event_id, when in [
        ("not-a-uuid", "2026-03-01T10:00:00+00:00"),
        ("9665ef28-0b88-5638-9260-b3adfb1fccd1", "0001-01-01T00:00:00+01:00"),
        ("9665ef28-0b88-5638-9260-b3adfb1fccd1", "9999-12-31T23:59:59-14:00"),
    ]:
        cursor = base64.urlsafe_b64encode(orjson.dumps([when, event_id])).decode()
        with pytest.raises(BadCursor):
            decode_cursor(cursor)


def test_ledger_entry_rows_carry_the_results_fields() -> None:
    events, results = _deduction_results()
    usage = events[-1]
    rows = [
        dict(zip(ENTRY_COLUMNS, entry_row(usage, r, "{}"), strict=True))
        for r in results
        if r.event_type != "SeatStatusChanged"
    ]
    (deducted,) = rows
    assert deducted["seat_paid_micro"] == 25_000_000_000
    assert deducted["packs_paid_micro"] == 1_000_000
    assert deducted["source_event_id"] == usage.event_id
    assert deducted["occurred_at"] == usage.occurred_at


def _team_with_changes() -> Subscription:
    """From Jan 31 10:00: s1 standard, s2 premium, pack "old"; s3 (advanced) added Feb 3,
    s2 removed Feb 10, pack "new" bought Feb 12."""
    facts = Facts("acct-s")
    t = at("2026-01-31 10:00")
    events = [
        *facts.team(t, ("s1", "standard"), ("s2", "premium")),
        facts.buy_pack(t, "old"),
        facts.add_seat(t + timedelta(days=3), "s3", "advanced"),
        facts.remove_seat(t + timedelta(days=10), "s2"),
        facts.buy_pack(t + timedelta(days=12), "new"),
    ]
    state, _ = fold(events, DEFAULT_CARD)
    return state.subscriptions["sub-1"]


def _micro(balances: Balances) -> tuple[int, int, int]:
    return (
        parse_credits(balances.seat),
        parse_credits(balances.shared),
        parse_credits(balances.total),
    )


def _assert_balanced(statement: Statement) -> None:
    """closing = opening + added - deducted - expired, bucket by bucket."""
    opening, added, deducted, expired, closing = (
        _micro(b)
        for b in (
            statement.opening,
            statement.added,
            statement.deducted,
            statement.expired,
            statement.closing,
        )
    )
    for i in range(3):
        assert closing[i] == opening[i] + added[i] - deducted[i] - expired[i]


def test_a_statement_shows_seats_added_removed_and_packs_bought() -> None:
    usage = [
        SeatModelUsage("s1", "qwen3.6-plus", 3, 26_000 * M, 25_000 * M, 500 * M, 500 * M),
        SeatModelUsage("s2", "glm-5", 1, 2 * M, 2 * M, 0, 0),
    ]
    statement = build_statement(
        _team_with_changes(), "2026-01", usage, {"new": PackPaid(0, 500 * M)}
    )
    assert (statement.period_start, statement.period_end) == (
        at("2026-01-31 10:00"),
        at("2026-02-28 10:00"),
    )
    assert _micro(statement.opening) == (275_000 * M, 625_000 * M, 900_000 * M)
    assert _micro(statement.added) == (100_000 * M, 625_000 * M, 725_000 * M)
    assert _micro(statement.deducted) == (25_002 * M, 500 * M, 25_502 * M)
    assert _micro(statement.expired) == (249_998 * M, 0, 249_998 * M)
    assert _micro(statement.closing) == (100_000 * M, 1_249_500 * M, 1_349_500 * M)
    seats = {s.seat_id: s for s in statement.seats}
    assert (seats["s2"].forfeited, seats["s2"].closing) == ("249998", "0")
    assert (seats["s3"].added, seats["s3"].opening) == ("100000", "0")
    assert seats["s1"].shared_used == "500"
    assert (statement.shortfall, statement.requests) == ("500", 4)
    assert [(m.model, m.credits) for m in statement.models] == [
        ("glm-5", "2"),
        ("qwen3.6-plus", "26000"),
    ]
    _assert_balanced(statement)


def test_a_pack_expiring_within_the_month_shows_what_it_lost() -> None:
    statement = build_statement(
        _team_with_changes(), "2026-02", [], {"new": PackPaid(500 * M, 700 * M)}
    )
    (new,) = statement.packs  # "old" expired at the period start: not in this month
    assert (new.opening, new.used, new.expired, new.closing) == ("624500", "200", "624300", "0")
    assert [s.seat_id for s in statement.seats] == ["s1", "s3"]
    _assert_balanced(statement)


def test_a_statement_month_is_the_subscription_month_starting_in_it() -> None:
    sub = _team_with_changes()
    assert subscription_month(sub, "2026-02")[1:] == (
        at("2026-02-28 10:00"),
        at("2026-03-31 10:00"),
    )
    with pytest.raises(MonthOutsideSubscription, match="before subscription 'sub-1' started"):
        subscription_month(sub, "2025-12")
