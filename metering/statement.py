"""A subscription month's statement, from the account state and the month's ledger sums.

Pure arithmetic; the read API fetches the inputs. Every bucket obeys
``closing = opening + added - used - expired``: a seat's quota for the month (its tier for
that month) is opening if the seat was there at the start and added if it came later, and
what a seat removed during the month had left is forfeited; a pack's credits are opening if
it was bought before the start and added if bought during the month, and what it had left
when it expired during the month is expired. Closing is what remained just before the end.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from metering.core.calendar import month_bounds
from metering.core.catalog import PACK_CREDITS_MICRO, TIER_QUOTA_MICRO
from metering.core.money import to_decimal_string as credits
from metering.core.state import Seat, Subscription
from schemas.api import Balances, Statement, StatementModel, StatementPack, StatementSeat


class MonthOutsideSubscription(ValueError):
    """The asked month is not a month of the subscription."""


@dataclass(frozen=True)
class SeatModelUsage:
    """The month's deductions of one seat for one model (a `GROUP BY` row)."""

    seat_id: str
    model: str
    requests: int
    price_micro: int
    seat_paid_micro: int
    packs_paid_micro: int
    shortfall_micro: int


@dataclass(frozen=True)
class PackPaid:
    """What a pack had paid before the period's start and before its end."""

    before_start_micro: int
    before_end_micro: int


def subscription_month(sub: Subscription, month: str) -> tuple[int, datetime, datetime]:
    """Index, start and end of the subscription month that starts in calendar `month`."""
    year, number = (int(part) for part in month.split("-"))
    start = sub.started_at
    index = (year - start.year) * 12 + number - start.month
    if index < 0 or not 1 <= number <= 12:
        raise MonthOutsideSubscription(
            f"month {month} is before subscription '{sub.subscription_id}' started "
            f"({start.date().isoformat()})"
            if index < 0
            else f"{month} is not a month"
        )
    return (index, *month_bounds(start, index))


def build_statement(
    sub: Subscription,
    month: str,
    usage: Sequence[SeatModelUsage],
    pack_paid: Mapping[str, PackPaid],
) -> Statement:
    index, start, end = subscription_month(sub, month)
    by_seat: dict[str, list[SeatModelUsage]] = {}
    for row in usage:
        by_seat.setdefault(row.seat_id, []).append(row)
    seats = [
        _seat_line(seat, index, start, end, by_seat.get(seat_id, []))
        for seat_id, seat in sorted(sub.seats.items())
        if seat.added_at < end and (seat.removed_at is None or seat.removed_at > start)
    ]
    packs = [
        _pack_line(pack.pack_id, pack.purchased_at, pack.expires_at, start, end, paid)
        for pack in sub.packs
        if pack.purchased_at < end and pack.expires_at > start
        for paid in [pack_paid.get(pack.pack_id, PackPaid(0, 0))]
    ]
    models: dict[str, list[SeatModelUsage]] = {}
    for row in usage:
        models.setdefault(row.model, []).append(row)

    def total(lines: Sequence[_Line], name: str) -> int:
        return sum(getattr(line, name) for line in lines)

    def balances(name: str) -> Balances:
        seat, shared = total(seats, name), total(packs, name)
        return Balances(seat=credits(seat), shared=credits(shared), total=credits(seat + shared))

    return Statement(
        subscription_id=sub.subscription_id,
        month=month,
        period_start=start,
        period_end=end,
        opening=balances("opening"),
        added=balances("added"),
        deducted=balances("used"),
        expired=balances("expired"),
        closing=balances("closing"),
        shortfall=credits(sum(row.shortfall_micro for row in usage)),
        requests=sum(row.requests for row in usage),
        seats=[line.body for line in seats],
        models=[
            StatementModel(
                model=model,
                requests=sum(r.requests for r in rows),
                credits=credits(sum(r.price_micro for r in rows)),
                shortfall=credits(sum(r.shortfall_micro for r in rows)),
            )
            for model, rows in sorted(models.items())
        ],
        packs=[line.body for line in packs],
    )


@dataclass(frozen=True)
class _Line:
    """One bucket's movements in micro-credits, and its response body."""

    opening: int
    added: int
    used: int
    expired: int
    closing: int
    body: StatementSeat | StatementPack


def _seat_line(
    seat: Seat, index: int, start: datetime, end: datetime, rows: list[SeatModelUsage]
) -> _Line:
    tier = seat.tier_in(index)
    quota = TIER_QUOTA_MICRO[tier]
    used = sum(r.seat_paid_micro for r in rows)
    opening = quota if seat.added_at <= start else 0
    removed = seat.removed_at is not None and seat.removed_at < end
    forfeited = quota - used if removed else 0
    closing = 0 if removed else quota - used
    body = StatementSeat(
        seat_id=seat.seat_id,
        member=seat.member,
        tier=tier,
        quota=credits(quota),
        opening=credits(opening),
        added=credits(quota - opening),
        used=credits(used),
        forfeited=credits(forfeited),
        closing=credits(closing),
        shared_used=credits(sum(r.packs_paid_micro for r in rows)),
        shortfall=credits(sum(r.shortfall_micro for r in rows)),
        requests=sum(r.requests for r in rows),
    )
    return _Line(opening, quota - opening, used, forfeited, closing, body)


def _pack_line(
    pack_id: str,
    purchased_at: datetime,
    expires_at: datetime,
    start: datetime,
    end: datetime,
    paid: PackPaid,
) -> _Line:
    opening = PACK_CREDITS_MICRO - paid.before_start_micro if purchased_at <= start else 0
    added = 0 if purchased_at <= start else PACK_CREDITS_MICRO
    used = paid.before_end_micro - paid.before_start_micro
    left = opening + added - used
    expired = left if expires_at < end else 0
    body = StatementPack(
        pack_id=pack_id,
        purchased_at=purchased_at,
        expires_at=expires_at,
        opening=credits(opening),
        added=credits(added),
        used=credits(used),
        expired=credits(expired),
        closing=credits(left - expired),
    )
    return _Line(opening, added, used, expired, left - expired, body)
