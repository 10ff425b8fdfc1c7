"""The ledger's projection of metering.events.v1 into PostgreSQL, one transaction per batch.

For each batch: parse (unparseable messages become dead letters), skip events already
archived, fold the rest with the pure core on each account's state, then write the archive,
the ledger entries, the accounts' new states and the outbox rows (results for
metering.ledger.v1 and metering.seat-status.v1, dead letters for metering.dlq.v1). The
consumer adds the offsets to the same transaction.

Account states stay cached between batches; a batch that does not commit drops every state
it touched, so memory never runs ahead of the database.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from ledger import metrics
from metering.core.catalog import REQUEST_ID_MEMORY
from metering.core.fold import apply
from metering.core.ratecard import RateCard
from metering.core.state import AccountState
from metering.db import Connection
from metering.deadletters import dead_letter
from metering.outbox import Outbox
from metering.projection import Record
from metering.publishing import Outgoing
from metering.snapshots import (
    RememberedIds,
    load_snapshot,
    request_ids_by_account,
    snapshot_json,
)
from schemas.envelope import FactEvent, ResultEvent, parse_event

log = logging.getLogger(__name__)

OUTBOX = Outbox("ledger_outbox")


@dataclass(frozen=True)
class LedgerTopics:
    """Where the ledger's results go."""

    ledger: str
    dlq: str


@dataclass(slots=True)
class _Account:
    state: AccountState
    version: int
    """The version stored in `ledger_accounts` (0: no row yet)."""
    partition: int


class StaleAccountState(RuntimeError):
    """An account's stored state changed under us (another writer): reload and retry."""


@dataclass
class _Tally:
    """What a batch counts, added to the metrics only once it is committed."""

    applied: Counter[str] = field(default_factory=Counter)
    credits: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    subscription_credits: Counter[tuple[str, str]] = field(default_factory=Counter)
    shortfall: Counter[str] = field(default_factory=Counter)
    rejected: Counter[str] = field(default_factory=Counter)
    duplicates: int = 0
    dead_letters: int = 0

    def count(self, event: FactEvent, results: list[ResultEvent]) -> None:
        self.applied[event.event_type] += 1
        for result in results:
            payload: Any = result.payload
            if result.event_type == "CreditsDeducted":
                for line in payload.receipt:
                    self.credits[payload.model, payload.tier, line["bucket"]] += line[
                        "amount_micro"
                    ]
                    self.subscription_credits[payload.subscription_id, payload.tier] += line[
                        "amount_micro"
                    ]
                self.shortfall[payload.model] += payload.shortfall_micro
            elif result.event_type == "FactRejected":
                self.rejected[payload.reason] += 1

    def publish(self) -> None:
        for event_type, n in self.applied.items():
            metrics.EVENTS_APPLIED.labels(event_type).inc(n)
        for (model, tier, bucket), micro in self.credits.items():
            metrics.CREDITS_DEDUCTED.labels(model, tier, bucket).inc(micro)
        for (subscription_id, tier), micro in self.subscription_credits.items():
            metrics.SUBSCRIPTION_CREDITS_DEDUCTED.labels(subscription_id, tier).inc(micro)
        for model, micro in self.shortfall.items():
            metrics.SHORTFALL.labels(model).inc(micro)
        for reason, n in self.rejected.items():
            metrics.FACTS_REJECTED.labels(reason).inc(n)
        metrics.DUPLICATES_SKIPPED.inc(self.duplicates)
        metrics.DEAD_LETTERS.inc(self.dead_letters)


class LedgerProjection:
    """The `Projection` the ledger's consumer feeds."""

    def __init__(self, card: RateCard, topics: LedgerTopics, on_commit: Callable[[], None]) -> None:
        self._card = card
        self._topics = topics
        self._on_commit = on_commit
        self._accounts: dict[str, _Account] = {}
        self._touched: set[str] = set()
        self._archive_months: set[datetime] = set()
        self._new_months: set[datetime] = set()
        self._tally = _Tally()

    async def apply(self, conn: Connection, records: Sequence[Record]) -> None:
        self._touched = set()
        self._new_months = set()
        self._tally = tally = _Tally()
        outgoing: list[Outgoing] = []
        parsed: list[tuple[Record, FactEvent]] = []
        for record in records:
            try:
                parsed.append((record, parse_event(record.value or b"")))
            except ValidationError as error:
                outgoing.append(self._dead_letter(record, f"not a valid event: {error}"))
                tally.dead_letters += 1
        fresh = await _not_yet_archived(conn, parsed)
        tally.duplicates = len(parsed) - len(fresh)
        await self._load_accounts(conn, fresh)
        await self._ensure_archive_months(conn, fresh)

        archived, entries, subscriptions = [], [], []
        for record, event in fresh:
            account = self._accounts[event.account_id]
            self._touched.add(event.account_id)
            results = apply(account.state, event, self._card)
            tally.count(event, results)
            archived.append(_archive_row(record, event))
            for result in results:
                if result.event_type == "SeatStatusChanged":
                    continue  # quota publishes seat statuses: it also sees those time brings
                body = result.model_dump_json()
                entries.append(entry_row(event, result, body))
                outgoing.append(Outgoing(self._topics.ledger, event.account_id, body.encode()))
            if event.event_type == "SubscriptionActivated" and not any(
                r.event_type == "FactRejected" for r in results
            ):
                subscriptions.append((event.payload.subscription_id, event.account_id))

        await conn.copy_records_to_table(
            "ledger_events_archive", records=archived, columns=ARCHIVE_COLUMNS
        )
        await conn.copy_records_to_table("ledger_entries", records=entries, columns=ENTRY_COLUMNS)
        await self._store_accounts(conn)
        if subscriptions:
            await conn.execute(
                "INSERT INTO ledger_subscriptions (subscription_id, account_id) "
                "SELECT * FROM unnest($1::text[], $2::text[]) ON CONFLICT DO NOTHING",
                [s for s, _ in subscriptions],
                [a for _, a in subscriptions],
            )
        await OUTBOX.add(conn, outgoing)

    def committed(self) -> None:
        self._archive_months |= self._new_months
        self._tally.publish()
        self._on_commit()

    def rolled_back(self) -> None:
        for account_id in self._touched:
            self._accounts.pop(account_id, None)
        self._touched = set()

    def forget(self, partitions: Collection[int]) -> None:
        lost = set(partitions)
        for account_id in [a for a, cached in self._accounts.items() if cached.partition in lost]:
            del self._accounts[account_id]

    async def _load_accounts(self, conn: Connection, fresh: list[tuple[Record, FactEvent]]) -> None:
        """Bring every account of the batch into the cache (stored state, or a new one)."""
        partitions = {event.account_id: record.partition for record, event in fresh}
        missing = [a for a in partitions if a not in self._accounts]
        if not missing:
            return
        rows = await conn.fetch(
            "SELECT account_id, state::text AS state, version FROM ledger_accounts "
            "WHERE account_id = ANY($1::text[])",
            missing,
        )
        stored = {row["account_id"]: row for row in rows}
        request_ids = await _deducted_request_ids(conn, list(stored))
        for account_id in missing:
            row = stored.get(account_id)
            self._accounts[account_id] = (
                _Account(AccountState(), 0, partitions[account_id])
                if row is None
                else _Account(
                    load_snapshot(row["state"], request_ids.get(account_id, ())),
                    row["version"],
                    partitions[account_id],
                )
            )

    async def _store_accounts(self, conn: Connection) -> None:
        """Write each touched account's state as the next version of what we read (its
        request ids are those of its `CreditsDeducted` entries: they are not written again)."""
        touched = sorted(self._touched)
        if not touched:
            return
        for account_id in touched:
            self._accounts[account_id].version += 1
        written = await conn.fetchval(
            """
            WITH written AS (
                INSERT INTO ledger_accounts AS a (account_id, state, version)
                SELECT account_id, state::jsonb, version
                FROM unnest($1::text[], $2::text[], $3::bigint[]) AS s(account_id, state, version)
                ON CONFLICT (account_id) DO UPDATE
                    SET state = EXCLUDED.state, version = EXCLUDED.version, updated_at = now()
                    WHERE a.version = EXCLUDED.version - 1
                RETURNING 1
            )
            SELECT count(*) FROM written
            """,
            touched,
            [snapshot_json(self._accounts[a].state) for a in touched],
            [self._accounts[a].version for a in touched],
        )
        if written != len(touched):
            raise StaleAccountState("an account's stored state changed under this batch")

    async def _ensure_archive_months(
        self, conn: Connection, fresh: list[tuple[Record, FactEvent]]
    ) -> None:
        months = {_month_start(event.recorded_at) for _, event in fresh}
        self._new_months = months - self._archive_months
        for month in sorted(self._new_months):
            await conn.execute("SELECT ledger_archive_ensure_month($1)", month)

    def _dead_letter(self, record: Record, reason: str) -> Outgoing:
        log.warning(
            "dead letter",
            extra={"partition": record.partition, "offset": record.offset, "reason": reason[:200]},
        )
        return dead_letter(record, reason, datetime.now(UTC), self._topics.dlq)


async def _deducted_request_ids(conn: Connection, account_ids: list[str]) -> RememberedIds:
    """The request ids each account still remembers (their usage's time plus
    `REQUEST_ID_MEMORY` is past its clock): what its stored state leaves out."""
    if not account_ids:
        return {}
    rows = await conn.fetch(
        "SELECT e.account_id, e.request_id, e.occurred_at + $2::interval AS remember_until "
        "FROM ledger_entries e JOIN ledger_accounts a USING (account_id) "
        "WHERE e.account_id = ANY($1::text[]) AND e.event_type = 'CreditsDeducted' "
        "AND e.occurred_at > (a.state->>'clock')::timestamptz - $2::interval",
        account_ids,
        REQUEST_ID_MEMORY,
    )
    return request_ids_by_account(rows)


async def _not_yet_archived(
    conn: Connection, parsed: list[tuple[Record, FactEvent]]
) -> list[tuple[Record, FactEvent]]:
    """The events whose id is neither archived nor earlier in the batch, in order."""
    if not parsed:
        return []
    archived = {
        row["event_id"]
        for row in await conn.fetch(
            "SELECT event_id::text AS event_id FROM ledger_events_archive "
            "WHERE event_id = ANY($1::uuid[])",
            list({event.event_id for _, event in parsed}),
        )
    }
    fresh = []
    for record, event in parsed:
        if event.event_id not in archived:
            archived.add(event.event_id)
            fresh.append((record, event))
    return fresh


def _month_start(t: datetime) -> datetime:
    t = t.astimezone(UTC)
    return datetime(t.year, t.month, 1, tzinfo=UTC)


ARCHIVE_COLUMNS = [
    "event_id",
    "recorded_at",
    "account_id",
    "event_type",
    "topic",
    "partition",
    "offset",
    "key",
    "value",
]


def _archive_row(record: Record, event: FactEvent) -> tuple[object, ...]:
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


ENTRY_COLUMNS = [
    "event_id",
    "event_type",
    "source_event_id",
    "account_id",
    "occurred_at",
    "subscription_id",
    "seat_id",
    "key_id",
    "request_id",
    "model",
    "tier",
    "price_micro",
    "seat_paid_micro",
    "packs_paid_micro",
    "shortfall_micro",
    "seat_remaining_micro",
    "shared_remaining_micro",
    "rate_card_version",
    "coefficient",
    "pack_id",
    "unused_micro",
    "reason",
    "body",
]


def entry_row(source: FactEvent, result: ResultEvent, body: str) -> tuple[object, ...]:
    """The `ledger_entries` row of one ledger result (in `ENTRY_COLUMNS` order)."""
    p: Any = result.payload
    common = (result.event_id, result.event_type, source.event_id, result.account_id)
    if result.event_type == "CreditsDeducted":
        paid = Counter[str]()
        for line in p.receipt:
            paid[line["bucket"]] += line["amount_micro"]
        fields = (
            p.subscription_id,
            p.seat_id,
            p.key_id,
            p.request_id,
            p.model,
            p.tier,
            p.price_micro,
            paid["seat"],
            paid["pack"],
            p.shortfall_micro,
            p.seat_remaining_micro,
            p.shared_remaining_micro,
            p.rate_card_version,
            p.coefficient,
            None,
            None,
            None,
        )
    elif result.event_type == "PackExpired":
        fields = (p.subscription_id, *[None] * 13, p.pack_id, p.unused_micro, None)
    else:
        fields = (*[None] * 16, p.reason)
    return (*common, result.occurred_at, *fields, body)
