"""Read-only answers about an account at a given instant: a seat, a subscription overview.

Evaluated lazily at ``at``: a month that has rolled over shows its fresh quota and packs
past their expiry count zero, whether or not the fold has noticed yet. The quota service
asks these at authorize time with its own clock.
"""

from dataclasses import dataclass
from datetime import datetime

from metering.core import seat_status
from metering.core.catalog import PACK_CREDITS_MICRO, TIER_QUOTA_MICRO
from metering.core.state import AccountState, Seat, Subscription, SubscriptionStatus
from schemas.base import Tier
from schemas.results import SeatStatus, SeatStatusReason


@dataclass(frozen=True, slots=True)
class SeatView:
    subscription_id: str
    seat_id: str
    member: str
    tier: Tier
    quota_micro: int
    used_micro: int
    seat_remaining_micro: int
    shared_remaining_micro: int
    status: SeatStatus
    reason: SeatStatusReason | None
    """Why the seat is suspended; None while active."""
    month_start: datetime
    month_end: datetime
    resets_at: datetime | None
    """When the seat quota refills (the month end); None if the seat or plan has ended."""

    @property
    def remaining_micro(self) -> int:
        return self.seat_remaining_micro + self.shared_remaining_micro


@dataclass(frozen=True, slots=True)
class PackView:
    pack_id: str
    purchased_at: datetime
    expires_at: datetime
    used_micro: int
    remaining_micro: int
    valid: bool
    """Whether the pack can be drawn on at the asked time (it may start later)."""


@dataclass(frozen=True, slots=True)
class SubscriptionView:
    subscription_id: str
    status: SubscriptionStatus
    started_at: datetime
    ends_at: datetime | None
    month_start: datetime
    month_end: datetime
    seats: tuple[SeatView, ...]
    """Seats not removed at the asked time, by seat id."""
    packs: tuple[PackView, ...]
    """Packs not yet expired at the asked time, in deduction order."""
    quota_micro: int
    used_micro: int
    remaining_micro: int
    utilization_basis_points: int
    """used / quota in hundredths of a percent, rounded down (0 when there is no quota)."""


def seat_view(state: AccountState, seat_id: str, at: datetime) -> SeatView | None:
    """The seat's balances and status at ``at``; None for a seat the account does not have."""
    found = state.find_seat(seat_id)
    if found is None:
        return None
    sub, seat = found
    return _seat_view(sub, seat, at, sub.shared_remaining_at(at))


def subscription_view(
    state: AccountState, subscription_id: str, at: datetime
) -> SubscriptionView | None:
    """The team overview at ``at``; None for a subscription the account does not have."""
    sub = state.subscriptions.get(subscription_id)
    if sub is None:
        return None
    shared = sub.shared_remaining_at(at)
    seats = tuple(
        _seat_view(sub, seat, at, shared)
        for _, seat in sorted(sub.seats.items())
        if seat.removed_at is None or at < seat.removed_at
    )
    packs = tuple(
        PackView(
            pack_id=p.pack_id,
            purchased_at=p.purchased_at,
            expires_at=p.expires_at,
            used_micro=p.used_micro,
            remaining_micro=p.remaining_micro,
            valid=p.valid_at(at),
        )
        for p in sub.packs
        if not p.expired and at < p.expires_at
    )
    valid_packs = [p for p in packs if p.valid]
    quota = sum(s.quota_micro for s in seats) + PACK_CREDITS_MICRO * len(valid_packs)
    used = sum(s.used_micro for s in seats) + sum(p.used_micro for p in valid_packs)
    remaining = sum(s.seat_remaining_micro for s in seats) + shared
    _, month_start, month_end = sub.month_at(at)
    return SubscriptionView(
        subscription_id=sub.subscription_id,
        status=sub.status_at(at),
        started_at=sub.started_at,
        ends_at=sub.ends_at,
        month_start=month_start,
        month_end=month_end,
        seats=seats,
        packs=packs,
        quota_micro=quota,
        used_micro=used,
        remaining_micro=remaining,
        utilization_basis_points=used * 10_000 // quota if quota else 0,
    )


def _seat_view(sub: Subscription, seat: Seat, at: datetime, shared: int) -> SeatView:
    month, start, end = sub.month_at(at)
    tier = seat.tier_in(month)
    status, reason, _ = seat_status.status_at(sub, seat, at)
    ended = reason in ("seat_removed", "subscription_cancelled", "subscription_expired")
    return SeatView(
        subscription_id=sub.subscription_id,
        seat_id=seat.seat_id,
        member=seat.member,
        tier=tier,
        quota_micro=TIER_QUOTA_MICRO[tier],
        used_micro=seat.used_micro.get(month, 0),
        seat_remaining_micro=seat.remaining_in(month),
        shared_remaining_micro=shared,
        status=status,
        reason=reason,
        month_start=start,
        month_end=end,
        resets_at=None if ended else end,
    )
