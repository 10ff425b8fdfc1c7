"""A seat's status over time: the one place that decides it (design.md §4).

A seat is suspended when it was removed, when its subscription has not started or has
ended, or when its seat quota for the month and every valid shared pack are at zero; it is
active otherwise. The fold (at each fact) and quota's timer (between facts) both ask this
module: what the status is at an instant, why a seat became active again, and when time
alone may next change it. Pure functions of the state and the instants they are given.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import datetime

from metering.core.state import AccountState, Seat, Subscription, SubscriptionStatus
from schemas.results import SeatStatus, SeatStatusChanged, SeatStatusReason

Status = tuple[SeatStatus, SeatStatusReason | None, datetime | None]
"""A status, why the seat is suspended (None while active), and when its quota resets
(only for a seat suspended because its credits ran out)."""

_SUSPENDED_BECAUSE: dict[SubscriptionStatus, SeatStatusReason] = {
    "not_started": "subscription_not_started",
    "cancelled": "subscription_cancelled",
    "expired": "subscription_expired",
}


def status_at(sub: Subscription, seat: Seat, at: datetime) -> Status:
    """The seat's status at ``at``."""
    if seat.removed_at is not None and seat.removed_at <= at:
        return "suspended", "seat_removed", None
    status = sub.status_at(at)
    if status != "active":
        return "suspended", _SUSPENDED_BECAUSE[status], None
    month, _, end = sub.month_at(at)
    if seat.remaining_in(month) == 0 and sub.shared_remaining_at(at) == 0:
        return "suspended", "quota_exhausted", end
    return "active", None, None


def resumed_because(
    last: SeatStatusReason | None, hint: SeatStatusReason | None
) -> SeatStatusReason:
    """Why a seat is active now, given why it was last published (None: never published)
    and what the fact at hand did (a pack purchase, an upgrade), if anything."""
    if last is None or last == "subscription_not_started":
        return "seat_added"
    return hint or "month_rolled_over"


Published = Callable[[Seat], tuple[SeatStatus, SeatStatusReason] | None]
"""The status and reason last published for a seat, or None."""


def changes(
    state: AccountState,
    last_published: Published,
    at: datetime,
    hint: Callable[[str], SeatStatusReason | None] = lambda _seat_id: None,
    seats: Iterator[tuple[Subscription, Seat]] | None = None,
) -> list[SeatStatusChanged]:
    """The seats (all of the account's, in order, unless ``seats``) whose status at ``at``
    differs from the one last published, as the changes to publish."""
    found = []
    for sub, seat in _every_seat(state) if seats is None else seats:
        status, reason, resets_at = status_at(sub, seat, at)
        last = last_published(seat)
        if last is not None and last[0] == status:
            continue
        if reason is None:
            reason = resumed_because(None if last is None else last[1], hint(seat.seat_id))
        found.append(
            SeatStatusChanged.trusted(
                {
                    "subscription_id": sub.subscription_id,
                    "seat_id": seat.seat_id,
                    "status": status,
                    "reason": reason,
                    "resets_at": resets_at,
                    "at": at,
                }
            )
        )
    return found


def next_change(state: AccountState, after: datetime) -> datetime | None:
    """The earliest instant after ``after`` at which time alone may change a seat's status:
    a month end, a pack's start or expiry, a subscription's start or end, a seat's removal."""
    due: list[datetime] = []
    for sub in state.subscriptions.values():
        if sub.active_at(after):
            due.append(sub.month_at(after)[2])
        due.extend(t for t in (sub.started_at, sub.ends_at) if t is not None)
        for pack in sub.packs:
            due.extend((pack.purchased_at, pack.expires_at))
        due.extend(s.removed_at for s in sub.seats.values() if s.removed_at is not None)
    return min((t for t in due if t > after), default=None)


def _every_seat(state: AccountState) -> Iterator[tuple[Subscription, Seat]]:
    for _, sub in sorted(state.subscriptions.items()):
        for _, seat in sorted(sub.seats.items()):
            yield sub, seat
