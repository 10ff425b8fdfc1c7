"""Subscription months: anchored on the start, clamped to short months, never drifting.

A subscription started Jan 31 10:00 has months [Jan 31, Feb 28), [Feb 28, Mar 31),
[Mar 31, Apr 30), ...: every bound is computed from the anchor, not from the previous
bound. Month arithmetic is done in UTC.
"""

from calendar import monthrange
from datetime import UTC, datetime
from functools import lru_cache


def add_months(anchor: datetime, n: int) -> datetime:
    """The anchor moved by ``n`` calendar months, its day clamped to the target month's end."""
    anchor = anchor.astimezone(UTC)
    year, month0 = divmod(anchor.year * 12 + anchor.month - 1 + n, 12)
    day = min(anchor.day, monthrange(year, month0 + 1)[1])
    return anchor.replace(year=year, month=month0 + 1, day=day)


def month_index_containing(anchor: datetime, t: datetime) -> int:
    """The ``k`` with ``add_months(anchor, k) <= t < add_months(anchor, k + 1)``."""
    anchor, t = anchor.astimezone(UTC), t.astimezone(UTC)
    k = (t.year - anchor.year) * 12 + t.month - anchor.month
    # add_months(anchor, k) falls in t's calendar month, so at most one step back is needed.
    return k - 1 if add_months(anchor, k) > t else k


@lru_cache(maxsize=4096)
def month_bounds(anchor: datetime, k: int) -> tuple[datetime, datetime]:
    """Start (inclusive) and end (exclusive) of month ``k`` of a subscription."""
    return add_months(anchor, k), add_months(anchor, k + 1)
