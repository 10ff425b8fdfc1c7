"""The seat statuses quota's timer publishes between facts, by the core's one rule.

The fold notices a status change at the next fact of the account; between facts, a
suspended seat's month rolls over, a pack expires, a subscription starts or ends. Quota's
timer asks the core's `metering.core.seat_status` which seats' status at `at` differs from
the one last published, and when to look at an account again; this module only names the
messages it publishes.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from metering.core import seat_status
from metering.core.state import AccountState, Seat
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

    def last(seat: Seat) -> tuple[SeatStatus, SeatStatusReason] | None:
        found = published.get(seat.seat_id)
        return None if found is None else (found.status, found.reason)

    return seat_status.changes(state, last, at)


def next_status_change(state: AccountState, after: datetime) -> datetime | None:
    """The earliest instant after `after` at which time alone may change a seat's status."""
    return seat_status.next_change(state, after)


def timer_envelope(account_id: str, change: SeatStatusChanged) -> SeatStatusChangedEvent:
    """The message of a change the timer noticed; its id depends only on what changed when."""
    name = f"{change.seat_id}/{change.status}/{change.reason}/{change.at.isoformat()}"
    return SeatStatusChangedEvent.trusted(
        {
            "event_id": str(uuid.uuid5(TIMER_NAMESPACE, name)),
            "event_type": "SeatStatusChanged",
            "schema_version": SCHEMA_VERSION,
            "occurred_at": change.at,
            "recorded_at": change.at,
            "account_id": account_id,
            "payload": change,
        }
    )
