"""Quota's projection policy: what one fact changes and publishes. No I/O.

`fold_event` applies a fact to its account's state with the core (the same
`metering.core.fold.apply` as the ledger, so balances are bit-identical) and decides what
the batch must store and publish: the request ids deducted (kept apart from the state,
each until it is forgotten) and the seat statuses whose status differs from the one last
published, or pending earlier in the batch. services/quota/projection.py keeps the states
in memory and writes a batch's `QuotaBatch` through a `QuotaStore`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

from metering.core.fold import apply, was_rejected
from metering.core.ratecard import RateCard
from metering.core.state import AccountState
from quota.seat_status import Published
from quota.store import Deducted, SeatStatuses
from schemas.envelope import FactEvent, SeatStatusChangedEvent
from schemas.facts import UsageRecorded


@dataclass
class QuotaBatch:
    """What one batch changed, made permanent in memory only once it is committed."""

    next_offsets: dict[int, int] = field(default_factory=dict)
    touched: set[str] = field(default_factory=set)
    published: SeatStatuses = field(default_factory=dict)
    """seat id → (account id, status): the last status this batch publishes for the seat."""
    recorded: list[datetime] = field(default_factory=list)
    deducted: list[Deducted] = field(default_factory=list)
    """(account id, request id, remembered until) of each usage deducted: the ids to store."""
    unparseable: int = 0


def fold_event(
    state: AccountState,
    event: FactEvent,
    card: RateCard,
    published: Mapping[str, Published],
    batch: QuotaBatch,
) -> list[SeatStatusChangedEvent]:
    """Apply `event` to its account's `state` (in place), note it in `batch`, and return the
    seat statuses to publish: those differing from the last published (`published`, or
    earlier in the batch)."""
    account_id = event.account_id
    batch.touched.add(account_id)
    batch.recorded.append(event.recorded_at)
    to_publish = []
    results = apply(state, event, card, deductions=False)  # quota keeps no deduction
    payload = event.payload
    if isinstance(payload, UsageRecorded) and not was_rejected(results):
        # deducted: the fold remembers its request id until a repeat can no longer come
        until = state.request_ids.get(payload.request_id)
        if until is not None:
            batch.deducted.append((account_id, payload.request_id, until))
    for result in results:
        if result.event_type == "SeatStatusChanged":
            change = result.payload
            pending = batch.published.get(change.seat_id)
            last = pending[1] if pending else published.get(change.seat_id)
            if last is None or last.status != change.status:
                batch.published[change.seat_id] = (
                    account_id,
                    Published(change.status, change.reason),
                )
                to_publish.append(result)
    return to_publish
