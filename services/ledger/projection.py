"""The ledger's projection of metering.events.v1 into PostgreSQL, one transaction per batch.

For each batch: parse (unparseable messages become dead letters), skip events already
archived, fold the rest with the pure core on each account's state, then write the archive,
the ledger entries and the accounts' new states, and publish what the batch produced (results
for metering.ledger.v1, dead letters for metering.dlq.v1) with the broker's acknowledgement
before the transaction commits. The consumer adds the offsets to the same transaction.

Publishing before the commit is at least once, like an outbox, without writing and deleting a
row per result (issue 17): a batch that published and then did not commit is applied again
from the same state and publishes the same results under the same ids (they are derived from
the event's id), which consumers of the topic skip. Without a `publish` (unit tests, or an
operator's choice) the messages go to the `ledger_outbox` table in the transaction instead,
and the `OutboxRelay` publishes them; it also drains any rows left there.

What a batch writes is decided by the pure policy (services/ledger/policy.py); every read
and write goes through a `LedgerStore` (services/ledger/store.py). This class holds what
lives between batches: the cached account states, the archive months known to exist, and
the tally to publish once committed.

Account states stay cached between batches; a batch that does not commit drops every state
it touched, so memory never runs ahead of the database.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from ledger import metrics
from ledger.policy import (
    BatchWrites,
    Parsed,
    Tally,
    archive_months,
    fold_batch,
    not_yet_archived,
    parse,
)
from ledger.store import (
    AccountWrite,
    LedgerStore,
    PostgresLedgerStore,
    StaleAccountState,
)
from metering.consumer import Record
from metering.core.ratecard import RateCard
from metering.core.state import AccountState
from metering.db import Connection
from metering.deadletters import dead_letter
from metering.publishing import Outgoing
from metering.snapshots import snapshot_json

__all__ = ["LedgerProjection", "LedgerTopics", "StaleAccountState"]

log = logging.getLogger(__name__)


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


def publish(tally: Tally) -> None:
    """Add a committed batch's tally to the ledger's metrics."""
    for event_type, n in tally.applied.items():
        metrics.EVENTS_APPLIED.labels(event_type).inc(n)
    for (model, tier, bucket), micro in tally.credits.items():
        metrics.CREDITS_DEDUCTED.labels(model, tier, bucket).inc(micro)
    for (subscription_id, tier), micro in tally.subscription_credits.items():
        metrics.SUBSCRIPTION_CREDITS_DEDUCTED.labels(subscription_id, tier).inc(micro)
    for model, micro in tally.shortfall.items():
        metrics.SHORTFALL.labels(model).inc(micro)
    for reason, n in tally.rejected.items():
        metrics.FACTS_REJECTED.labels(reason).inc(n)
    metrics.DUPLICATES_SKIPPED.inc(tally.duplicates)
    metrics.DEAD_LETTERS.inc(tally.dead_letters)


class LedgerProjection:
    """The `Projection` the ledger's consumer feeds."""

    def __init__(
        self,
        card: RateCard,
        topics: LedgerTopics,
        on_commit: Callable[[], None],
        store: Callable[[Connection], LedgerStore] = PostgresLedgerStore,
        on_tally: Callable[[Tally], None] = publish,
        publish_now: Callable[[Sequence[Outgoing]], Awaitable[None]] | None = None,
    ) -> None:
        self._card = card
        self._topics = topics
        self._on_commit = on_commit
        self._store = store
        self._on_tally = on_tally
        self._publish_now = publish_now
        self._accounts: dict[str, _Account] = {}
        self._touched: set[str] = set()
        self._archive_months: set[datetime] = set()
        self._new_months: set[datetime] = set()
        self._tally = Tally()

    async def apply(self, conn: Connection, records: Sequence[Record]) -> None:
        store = self._store(conn)
        self._touched = set()
        self._new_months = set()
        writes = BatchWrites()
        self._tally = writes.tally
        parsed, dead = parse(records)
        for record, reason in dead:
            writes.outgoing.append(self._dead_letter(record, reason))
        writes.tally.dead_letters = len(dead)
        fresh = not_yet_archived(parsed, await store.archived({e.event_id for _, e in parsed}))
        writes.tally.duplicates = len(parsed) - len(fresh)
        await self._load_accounts(store, fresh)
        self._new_months = archive_months(fresh) - self._archive_months
        for month in sorted(self._new_months):
            await store.ensure_archive_month(month)

        self._touched = {event.account_id for _, event in fresh}
        states = {account_id: self._accounts[account_id].state for account_id in self._touched}
        fold_batch(fresh, states, self._card, self._topics.ledger, writes)

        await store.append(writes.archive, writes.entries)
        await self._store_accounts(store)
        await store.add_subscriptions(writes.subscriptions)
        if self._publish_now is None:
            await store.add_outgoing(writes.outgoing)
        else:  # last: a broker that does not acknowledge rolls the batch back
            await self._publish_now(writes.outgoing)

    def committed(self) -> None:
        self._archive_months |= self._new_months
        self._on_tally(self._tally)
        self._on_commit()

    def rolled_back(self) -> None:
        for account_id in self._touched:
            self._accounts.pop(account_id, None)
        self._touched = set()

    def forget(self, partitions: Collection[int]) -> None:
        lost = set(partitions)
        for account_id in [a for a, cached in self._accounts.items() if cached.partition in lost]:
            del self._accounts[account_id]

    async def _load_accounts(self, store: LedgerStore, fresh: list[Parsed]) -> None:
        """Bring every account of the batch into the cache (stored state, or a new one)."""
        partitions = {event.account_id: record.partition for record, event in fresh}
        missing = [a for a in partitions if a not in self._accounts]
        if not missing:
            return
        stored = await store.accounts(missing)
        for account_id in missing:
            found = stored.get(account_id)
            self._accounts[account_id] = (
                _Account(AccountState(), 0, partitions[account_id])
                if found is None
                else _Account(found.state, found.version, partitions[account_id])
            )

    async def _store_accounts(self, store: LedgerStore) -> None:
        """Write each touched account's state as the next version of what we read (its
        request ids are those of its `CreditsDeducted` entries: they are not written again)."""
        touched = sorted(self._touched)
        for account_id in touched:
            self._accounts[account_id].version += 1
        await store.store_accounts(
            [
                AccountWrite(
                    account_id,
                    snapshot_json(self._accounts[account_id].state),
                    self._accounts[account_id].version,
                )
                for account_id in touched
            ]
        )

    def _dead_letter(self, record: Record, reason: str) -> Outgoing:
        log.warning(
            "dead letter",
            extra={"partition": record.partition, "offset": record.offset, "reason": reason[:200]},
        )
        return dead_letter(record, reason, datetime.now(UTC), self._topics.dlq)
