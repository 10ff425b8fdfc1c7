from datetime import UTC, datetime, timedelta, timezone

import pytest

from metering.core.calendar import add_months, month_bounds, month_index_containing

pytestmark = pytest.mark.usefixtures("local_zone")
"""Every calendar test runs under several local time zones (the month arithmetic is UTC's)."""


def utc(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0
) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC)


@pytest.mark.parametrize(
    ("anchor", "n", "expected"),
    [
        (utc(2026, 1, 31, 10), 1, utc(2026, 2, 28, 10)),
        (utc(2026, 1, 31, 10), 2, utc(2026, 3, 31, 10)),
        (utc(2026, 1, 31, 10), 3, utc(2026, 4, 30, 10)),
        (utc(2026, 1, 31, 10), 13, utc(2027, 2, 28, 10)),
        (utc(2026, 1, 31, 10), 25, utc(2028, 2, 29, 10)),
        (utc(2028, 1, 31, 10), 1, utc(2028, 2, 29, 10)),
        (utc(2026, 1, 31, 10), -1, utc(2025, 12, 31, 10)),
        (utc(2026, 1, 15), 12, utc(2027, 1, 15)),
        (utc(2026, 12, 31), 2, utc(2027, 2, 28)),
        # Feb 28 21:00 in New York, Mar 1 in UTC: the UTC month moves, to Apr 1
        (utc(2026, 3, 1, 2), 1, utc(2026, 4, 1, 2)),
        # Feb 1 05:00 in Tokyo, Jan 31 in UTC: clamped to Feb 28, not moved to Mar 1
        (utc(2026, 1, 31, 20), 1, utc(2026, 2, 28, 20)),
    ],
)
def test_add_months_clamps_without_drift(anchor: datetime, n: int, expected: datetime) -> None:
    moved = add_months(anchor, n)
    assert moved == expected
    assert moved.utcoffset() == timedelta(0)


@pytest.mark.parametrize(
    ("t", "index"),
    [
        (utc(2026, 1, 31, 10), 0),
        (utc(2026, 2, 28, 9, 59, 59), 0),
        (utc(2026, 2, 28, 10), 1),
        (utc(2026, 3, 31, 9), 1),
        (utc(2026, 3, 31, 10), 2),
        (utc(2026, 1, 31, 9), -1),
        (utc(2028, 2, 29, 10), 25),
    ],
)
def test_month_index_containing(t: datetime, index: int) -> None:
    anchor = utc(2026, 1, 31, 10)
    assert month_index_containing(anchor, t) == index
    start, end = month_bounds(anchor, index)
    assert start <= t < end


@pytest.mark.parametrize(
    ("anchor", "t", "index"),
    [
        # t is Feb 28 21:00 in New York but Mar 1 02:00 UTC: month 2 of a Jan 1 start
        (utc(2026, 1, 1), utc(2026, 3, 1, 2), 2),
        # the anchor is Feb 1 05:00 in Tokyo but Jan 31 20:00 UTC: t is in month 1
        (utc(2026, 1, 31, 20), utc(2026, 2, 28, 21), 1),
        (utc(2026, 1, 31, 20), utc(2026, 2, 28, 19), 0),
    ],
)
def test_month_index_is_the_utc_one(anchor: datetime, t: datetime, index: int) -> None:
    assert month_index_containing(anchor, t) == index


def test_months_are_computed_in_utc() -> None:
    tokyo = timezone(timedelta(hours=9))
    anchor = datetime(2026, 2, 1, 5, tzinfo=tokyo)  # 2026-01-31 20:00 UTC
    assert add_months(anchor, 1) == utc(2026, 2, 28, 20)
    assert month_index_containing(anchor, datetime(2026, 3, 1, 4, tzinfo=tokyo)) == 0
