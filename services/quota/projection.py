"""Quota's live projection: the pure fold over metering.events.v1, per account, in memory.

The same `metering.core.fold.apply` as the ledger, so balances are bit-identical to the
ledger's, and one hop fresher than reading metering.ledger.v1. A `ProjectionConsumer` feeds
it batches; each batch writes the touched accounts' states, the seat statuses it publishes
(outbox rows for metering.seat-status.v1) and, by the consumer, the offsets they cover, in
one transaction. A restart loads the snapshots and the offsets, then catches up.

Memory is kept even when a batch fails or partitions move (authorize keeps answering); a
partition whose memory is not known to match the database is reloaded from its snapshots
before its next batch is applied.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Collection, Sequence
from datetime import UTC, datetime
from typing import TypeVar

import asyncpg
from pydantic import ValidationError

from metering.consumer import Record
from metering.core.ratecard import RateCard
from metering.core.state import AccountState
from metering.core.views import subscription_view
from metering.db import Connection
from metering.publishing import Outgoing
from metering.snapshots import snapshot_json
from quota import metrics
from quota.accounts import AccountIndex
from quota.policy import QuotaBatch, fold_event
from quota.seat_status import Published, next_status_change, status_changes, timer_envelope
from quota.store import AccountRow, PostgresQuotaStore, QuotaStore
from schemas.envelope import SeatStatusChangedEvent, parse_event
from schemas.results import SeatStatusChanged

log = logging.getLogger(__name__)

_DUE_NOW = datetime.min.replace(tzinfo=UTC)

SLICE = 64
"""Records folded, account states serialized or accounts looked at by the timer between two
turns of the event loop: the HTTP API shares the loop, and a batch of a thousand records
folded in one go (~30 ms) made authorize wait behind it (issue 17). A slice costs a few
milliseconds."""

T = TypeVar("T")


async def _slices(items: Sequence[T]) -> AsyncIterator[Sequence[T]]:
    """`items` in slices of `SLICE`, letting authorize answer between two slices."""
    for start in range(0, len(items), SLICE):
        if start:
            await asyncio.sleep(0)
        yield items[start : start + SLICE]


class QuotaProjection:
    """The `Projection` quota's consumer feeds, and the service `Worker` that loads it."""

    def __init__(
        self,
        card: RateCard,
        pool: Callable[[], asyncpg.Pool],
        *,
        group: str,
        events_topic: str,
        seat_status_topic: str,
        clock: Callable[[], datetime],
        on_commit: Callable[[], None],
        store: Callable[[Connection, str], QuotaStore] = PostgresQuotaStore,
    ) -> None:
        self.index = AccountIndex()
        self._store_of = store
        self._card = card
        self._pool = pool
        self._group = group
        self._events_topic = events_topic
        self._seat_status_topic = seat_status_topic
        self._clock = clock
        self._on_commit = on_commit
        self._lock = asyncio.Lock()
        """Held from a batch's `apply` to its commit or rollback, and by the timer's round,
        so that outbox rows are written in the order their statuses were decided."""
        self._partition_of: dict[str, int] = {}
        self._in_step: dict[int, int] = {}
        """Per partition: the next offset the memory covers, when it matches the database."""
        self._published: dict[str, Published] = {}
        self._suspended: Counter[str] = Counter()
        self._due: dict[str, datetime] = {}
        """Per account: when the timer must next look at it."""
        self._batch: QuotaBatch | None = None
        self._loaded = False
        self._last_commit = time.monotonic()

    # -- the worker: load the snapshots before the consumer starts ------------------------

    async def start(self) -> None:
        async with (
            self._pool().acquire() as conn,
            conn.transaction(isolation="repeatable_read", readonly=True),
        ):
            store = self._store_of(conn, self._group)
            self._in_step = await store.applied_offsets(self._events_topic)
            accounts = await store.accounts()
            statuses = await store.statuses()
        for account in accounts:
            self._hold(account.account_id, account.partition, account.state)
        for seat_id, (_, published) in statuses.items():
            self._set_published(seat_id, published)
        metrics.STALENESS_SECONDS.set_function(lambda: time.monotonic() - self._last_commit)
        self._loaded = True
        log.info("projection loaded", extra={"accounts": len(accounts), "group": self._group})

    async def stop(self) -> None:
        """Nothing to release: every batch is already stored."""

    def ready(self) -> bool:
        return self._loaded

    # -- the projection ------------------------------------------------------------------

    async def apply(self, conn: Connection, records: Sequence[Record]) -> None:
        await self._lock.acquire()
        self._batch = batch = QuotaBatch()
        store = self._store_of(conn, self._group)
        for record in records:
            first = record.partition not in batch.next_offsets
            if first and self._in_step.get(record.partition) != record.offset:
                await self._reload(store, record.partition)
            batch.next_offsets[record.partition] = record.offset + 1
        outgoing: list[list[Outgoing]] = []
        async for some in _slices(records):
            outgoing += [self._fold(record, batch) for record in some]
        await self._store_accounts(store, batch.touched, batch.deducted)
        await store.store_statuses(batch.published)
        await store.add_outgoing([m for messages in outgoing for m in messages])

    def committed(self) -> None:
        batch = self._end_batch()
        if batch is None:
            return
        self._in_step.update(batch.next_offsets)
        for seat_id, (_, published) in batch.published.items():
            self._set_published(seat_id, published)
        for account_id in batch.touched:
            self._due[account_id] = _DUE_NOW
        self._last_commit = time.monotonic()
        now = self._clock()  # utilization: the timer's round reports the touched accounts
        for recorded_at in batch.recorded:
            metrics.PROJECTION_LAG_SECONDS.observe(max(0.0, (now - recorded_at).total_seconds()))
        metrics.UNPARSEABLE_EVENTS.inc(batch.unparseable)
        metrics.SEAT_STATUSES_PUBLISHED.labels("fold").inc(len(batch.published))
        self._on_commit()

    def rolled_back(self) -> None:
        batch = self._end_batch()
        if batch is not None:  # memory ran ahead of the database: reload before the next batch
            for partition in batch.next_offsets:
                self._in_step.pop(partition, None)

    def forget(self, partitions: Collection[int]) -> None:
        """Partitions gained or lost: reload their accounts before applying to them again."""
        for partition in partitions:
            self._in_step.pop(partition, None)

    # -- the timer's round ---------------------------------------------------------------

    async def publish_time_changes(self) -> int:
        """Publish the seat statuses time changed since they were last published (month
        rollovers, pack expiries, subscription ends) for the accounts that are due."""
        async with self._lock:
            now = self._clock()
            notices: list[tuple[str, SeatStatusChanged]] = []
            async for some in _slices([a for a, due in self._due.items() if due <= now]):
                for account_id in some:
                    state = self.index.accounts.get(account_id)
                    following = None if state is None else next_status_change(state, now)
                    if following is None:
                        del self._due[account_id]
                    else:
                        self._due[account_id] = following
                    if state is not None:
                        changes = status_changes(state, self._published, now)
                        notices.extend((account_id, change) for change in changes)
                        self._report_utilization([account_id], now)
            if not notices:
                return 0
            published = {c.seat_id: (a, Published(c.status, c.reason)) for a, c in notices}
            messages = [self._message(timer_envelope(a, c)) for a, c in notices]
            try:
                async with self._pool().acquire() as conn, conn.transaction():
                    store = self._store_of(conn, self._group)
                    await store.store_statuses(published)
                    await store.add_outgoing(messages)
            except BaseException:
                for account_id, _ in notices:
                    self._due[account_id] = _DUE_NOW
                raise
            for seat_id, (_, status) in published.items():
                self._set_published(seat_id, status)
            metrics.SEAT_STATUSES_PUBLISHED.labels("timer").inc(len(notices))
            self._on_commit()
            return len(notices)

    # -- helpers -------------------------------------------------------------------------

    def _fold(self, record: Record, batch: QuotaBatch) -> list[Outgoing]:
        """Apply one record's fact; returns the seat statuses to publish."""
        try:
            event = parse_event(record.value or b"")
        except ValidationError:
            batch.unparseable += 1
            return []
        account_id = event.account_id
        state = self.index.accounts.get(account_id)
        if state is None:
            state = AccountState()
            self.index.put(account_id, state)
        self._partition_of[account_id] = record.partition
        changes = fold_event(state, event, self._card, self._published, batch)
        if event.event_type != "UsageRecorded":
            # a plan fact may add keys, seats or subscriptions: authorize knows them at once
            # (a usage changes balances in place, which the index points to already)
            self.index.put(account_id, state)
        return [self._message(change) for change in changes]

    def _message(self, envelope: SeatStatusChangedEvent) -> Outgoing:
        return Outgoing(
            self._seat_status_topic, envelope.payload.seat_id, envelope.model_dump_json().encode()
        )

    def _hold(self, account_id: str, partition: int, state: AccountState) -> None:
        self.index.put(account_id, state)
        self._partition_of[account_id] = partition
        self._due[account_id] = _DUE_NOW

    async def _reload(self, store: QuotaStore, partition: int) -> None:
        """Replace the partition's accounts and their seats' published statuses in memory
        with what is stored (another member may have moved them on)."""
        stored = {account.account_id: account.state for account in await store.accounts(partition)}
        statuses = await store.statuses(list(stored))
        for account_id in [a for a, p in self._partition_of.items() if p == partition]:
            if account_id not in stored:
                self.index.drop(account_id)
                del self._partition_of[account_id]
        for account_id, state in stored.items():
            self._hold(account_id, partition, state)
        for seat_id, (_, published) in statuses.items():
            self._set_published(seat_id, published)
        log.info("partition reloaded", extra={"partition": partition, "accounts": len(stored)})

    async def _store_accounts(
        self,
        store: QuotaStore,
        account_ids: Collection[str],
        deducted: list[tuple[str, str, datetime]],
    ) -> None:
        """Write the accounts' states, without their request ids: only the new ones are
        added, to `quota_request_ids` (they only grow, and are most of a busy state)."""
        ordered = sorted(account_ids)
        rows: list[AccountRow] = []
        async for some in _slices(ordered):
            rows += [
                AccountRow(a, self._partition_of[a], snapshot_json(self.index.accounts[a]))
                for a in some
            ]
        await store.store_accounts(rows, deducted)

    def _report_utilization(self, account_ids: Collection[str], now: datetime) -> None:
        """Each active subscription's utilization now; an ended one leaves the gauge.

        Nothing is computed while per-subscription metrics are off (the default): the view
        cost 4 % of quota's CPU under load for updates that were then dropped (issue 17)."""
        gauge = metrics.SUBSCRIPTION_UTILIZATION
        if not gauge.enabled:
            return
        for account_id in account_ids:
            state = self.index.accounts.get(account_id)
            if state is None:
                continue
            for subscription_id in state.subscriptions:
                view = subscription_view(state, subscription_id, now)
                if view is not None and view.status == "active":
                    gauge.labels(subscription_id).set(view.utilization_basis_points / 10_000)
                else:
                    with contextlib.suppress(KeyError):  # it was never reported
                        gauge.remove(subscription_id)

    def _set_published(self, seat_id: str, published: Published) -> None:
        """Record the seat's last published status and keep the suspended gauge in step."""
        previous = self._published.get(seat_id)
        if previous is not None and previous.status == "suspended":
            self._suspended[previous.reason] -= 1
            metrics.SEATS_SUSPENDED.labels(previous.reason).set(self._suspended[previous.reason])
        self._published[seat_id] = published
        if published.status == "suspended":
            self._suspended[published.reason] += 1
            metrics.SEATS_SUSPENDED.labels(published.reason).set(self._suspended[published.reason])

    def _end_batch(self) -> QuotaBatch | None:
        batch, self._batch = self._batch, None
        if batch is not None:
            self._lock.release()
        return batch

    async def forget_request_ids(self) -> int:
        """Delete the stored request ids no account remembers any more; returns how many."""
        async with self._pool().acquire() as conn:
            return await self._store_of(conn, self._group).forget_request_ids()
