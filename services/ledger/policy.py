"""The ledger's projection policy: what one batch of metering.events.v1 writes. No I/O.

A batch goes through three steps, each a pure function here:

1. `parse`: each record becomes a fact event, or a dead letter with its reason;
2. `not_yet_archived`: events whose id the archive holds, or that came earlier in the batch,
   are duplicates and skipped;
3. `fold_batch`: the rest are folded with the core (`metering.core.fold.apply`) onto their
   accounts' states, which it changes in place, and turned into what the store writes:
   archive rows, ledger entries, the subscriptions activated, the results to publish on
   metering.ledger.v1 (seat statuses are left to quota, which also sees those time brings),
   and a `Tally` of what to count once the batch is committed.

services/ledger/projection.py runs these steps against a `LedgerStore`
(services/ledger/store.py) inside the consumer's transaction.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from ledger.store import month_start
from metering.consumer import Record
from metering.core.fold import apply, was_rejected
from metering.core.ratecard import RateCard
from metering.core.receipts import Paid, paid_by_bucket
from metering.core.state import AccountState
from metering.publishing import Outgoing
from schemas.envelope import FactEvent, ResultEvent, parse_event, result_json

Parsed = tuple[Record, FactEvent]


@dataclass
class Tally:
    """What a batch counts, added to the metrics only once it is committed."""

    applied: Counter[str] = field(default_factory=Counter)
    credits: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    """(model, tier, bucket) → micro-credits paid by that kind of bucket."""
    subscription_credits: Counter[tuple[str, str]] = field(default_factory=Counter)
    shortfall: Counter[str] = field(default_factory=Counter)
    rejected: Counter[str] = field(default_factory=Counter)
    duplicates: int = 0
    dead_letters: int = 0

    def count(self, result: ResultEvent, paid: Paid | None) -> None:
        """Count one ledger result; `paid` is a `CreditsDeducted`'s `paid_by_bucket`."""
        payload: Any = result.payload
        if paid is not None:
            for bucket, micro in (("seat", paid.seat_micro), ("pack", paid.packs_micro)):
                if micro:
                    self.credits[payload.model, payload.tier, bucket] += micro
            if paid.total_micro:
                key = payload.subscription_id, payload.tier
                self.subscription_credits[key] += paid.total_micro
            self.shortfall[payload.model] += payload.shortfall_micro
        elif result.event_type == "FactRejected":
            self.rejected[payload.reason] += 1


def parse(records: Sequence[Record]) -> tuple[list[Parsed], list[tuple[Record, str]]]:
    """The records that are fact events, and the others with why they are dead letters."""
    parsed: list[Parsed] = []
    dead: list[tuple[Record, str]] = []
    for record in records:
        try:
            parsed.append((record, parse_event(record.value or b"")))
        except ValidationError as error:
            dead.append((record, f"not a valid event: {error}"))
    return parsed, dead


def not_yet_archived(parsed: Sequence[Parsed], archived: Collection[str]) -> list[Parsed]:
    """The events whose id is neither in `archived` nor earlier in the batch, in order."""
    seen = set(archived)
    fresh = []
    for record, event in parsed:
        if event.event_id not in seen:
            seen.add(event.event_id)
            fresh.append((record, event))
    return fresh


def archive_months(fresh: Iterable[Parsed]) -> set[datetime]:
    """The archive months (partitions) the events are recorded in."""
    return {month_start(event.recorded_at) for _, event in fresh}


@dataclass
class BatchWrites:
    """What one batch writes, in the order it is applied."""

    archive: list[tuple[object, ...]] = field(default_factory=list)
    entries: list[tuple[object, ...]] = field(default_factory=list)
    subscriptions: list[tuple[str, str]] = field(default_factory=list)
    """(subscription id, account id) of each subscription activated."""
    outgoing: list[Outgoing] = field(default_factory=list)
    tally: Tally = field(default_factory=Tally)


def fold_batch(
    fresh: Sequence[Parsed],
    states: Mapping[str, AccountState],
    card: RateCard,
    ledger_topic: str,
    writes: BatchWrites,
) -> None:
    """Fold `fresh` onto `states` (every account of the batch is there; changed in place)
    and add what that writes to `writes`."""
    tally = writes.tally
    for record, event in fresh:
        results = apply(states[event.account_id], event, card)
        tally.applied[event.event_type] += 1
        writes.archive.append(archive_row(record, event))
        for result in results:
            if result.event_type == "SeatStatusChanged":
                continue  # quota publishes seat statuses: it also sees those time brings
            paid = (
                paid_by_bucket(result.payload.receipt)
                if result.event_type == "CreditsDeducted"
                else None
            )
            tally.count(result, paid)
            body = result_json(result)
            writes.entries.append(entry_row(event, result, body.decode(), paid))
            writes.outgoing.append(Outgoing(ledger_topic, event.account_id, body))
        if event.event_type == "SubscriptionActivated" and not was_rejected(results):
            writes.subscriptions.append((event.payload.subscription_id, event.account_id))


def archive_row(record: Record, event: FactEvent) -> tuple[object, ...]:
    """The `ledger_events_archive` row of one event (in `store.ARCHIVE_COLUMNS` order)."""
    return (
        event.event_id,
        event.recorded_at,
        event.account_id,
        event.event_type,
        record.topic,
        record.partition,
        record.offset,
        record.key,
        record.value,
    )


def entry_row(
    source: FactEvent, result: ResultEvent, body: str, paid: Paid | None = None
) -> tuple[object, ...]:
    """The `ledger_entries` row of one ledger result (in `store.ENTRY_COLUMNS` order);
    `paid`: a `CreditsDeducted`'s `paid_by_bucket`, if the caller has it already."""
    p: Any = result.payload
    common = (result.event_id, result.event_type, source.event_id, result.account_id)
    if result.event_type == "CreditsDeducted":
        paid = paid if paid is not None else paid_by_bucket(p.receipt)
        usage = p.usage
        fields = (
            p.subscription_id,
            p.seat_id,
            p.key_id,
            p.request_id,
            p.model,
            p.tier,
            p.price_micro,
            paid.seat_micro,
            paid.packs_micro,
            p.shortfall_micro,
            p.seat_remaining_micro,
            p.shared_remaining_micro,
            p.rate_card_version,
            p.coefficient,
            None,
            None,
            None,
            usage["input_tokens"],
            usage["cached_tokens"],
            usage["output_tokens"],
            usage["images"],
        )
    elif result.event_type == "PackExpired":
        fields = (p.subscription_id, *[None] * 13, p.pack_id, p.unused_micro, *[None] * 5)
    else:
        fields = (*[None] * 16, p.reason, *[None] * 4)
    return (*common, result.occurred_at, *fields, body)
