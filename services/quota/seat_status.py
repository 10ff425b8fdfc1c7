"""Seat statuses that time alone changes, found as a pure function of a state and two times.

The fold notices a status change at the next fact of the account; between facts, a
suspended seat's month rolls over, a pack expires, a subscription ends. Quota's timer asks
`status_changes` for the seats whose status at `at` differs from the one last published,
and `next_status_change` for when to look at an account again.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from metering.core.state import AccountState
from schemas.base import SCHEMA_VERSION
from schemas.envelope import SeatStatusChangedEvent
from schemas.results import SeatStatus, SeatStatusChanged, SeatStatusReason

TIMER_NAMESPACE = uuid.UUID("9b4e1d2a-3c5f-4a6b-8d7e-0f1a2b3c4d5e")
"""Namespace of the uuid5 ids of the statuses the timer publishes."""


@dataclass(frozen=True, slots=True)
class Published:
    """The status last published for a seat."""

    status: SeatStatus
    reason: SeatStatusReason


def status_changes(
    state: AccountState, published: Mapping[str, Published], at: datetime
) -> list[SeatStatusChanged]:
    """The account's seats whose status at `at` is not the one last published, in seat order."""
    changes = []
    for _, sub in sorted(state.subscriptions.items()):
        for seat_id, seat in sorted(sub.seats.items()):
            status, reason, resets_at = sub.seat_status(seat, at)
            last = published.get(seat_id)
            if last is not None and last.status == status:
                continue
            if reason is None:
                reason = _why_active(last)
            changes.append(
                SeatStatusChanged.trusted(
                    subscription_id=sub.subscription_id,
                    seat_id=seat_id,
                    status=status,
                    reason=reason,
                    resets_at=resets_at,
                    at=at,
                )
            )
    return changes


def _why_active(last: Published | None) -> SeatStatusReason:
    """Why a seat is active when only time passed since its last published status."""
    if last is None or last.reason == "subscription_not_started":
        return "seat_added"
    return "month_rolled_over" if last.reason == "quota_exhausted" else "pack_purchased"


def next_status_change(state: AccountState, after: datetime) -> datetime | None:
    """The earliest instant after `after` at which time alone may change a seat's status: a
    month end, a pack's start or expiry, a subscription's start or end, a seat's removal."""
    due: list[datetime] = []
    for sub in state.subscriptions.values():
        if sub.active_at(after):
            due.append(sub.month_at(after)[2])
        due.extend(t for t in (sub.started_at, sub.ends_at) if t is not None)
        for pack in sub.packs:
            due.extend((pack.purchased_at, pack.expires_at))
        due.extend(s.removed_at for s in sub.seats.values() if s.removed_at is not None)
    return min((t for t in due if t > after), default=None)


def timer_envelope(account_id: str, change: SeatStatusChanged) -> SeatStatusChangedEvent:
    """The message of a change the timer noticed; its id depends only on what changed when."""
    name = f"{change.seat_id}/{change.status}/{change.reason}/{change.at.isoformat()}"
    return SeatStatusChangedEvent.trusted(
        event_id=str(uuid.uuid5(TIMER_NAMESPACE, name)),
        event_type="SeatStatusChanged",
        schema_version=SCHEMA_VERSION,
        occurred_at=change.at,
        recorded_at=change.at,
        account_id=account_id,
        payload=change,
    )
