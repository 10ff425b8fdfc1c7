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
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import asyncpg
from pydantic import ValidationError

from metering.core.catalog import REQUEST_ID_MEMORY
from metering.core.fold import apply
from metering.core.ratecard import RateCard
from metering.core.state import AccountState
from metering.core.views import subscription_view
from metering.db import Connection
from metering.outbox import Outbox
from metering.projection import Record
from metering.publishing import Outgoing
from metering.snapshots import (
    RememberedIds,
    load_snapshot,
    request_ids_by_account,
    snapshot_json,
)
from quota import metrics
from quota.directory import Directory
from quota.seat_status import Published, next_status_change, status_changes, timer_envelope
from schemas.envelope import SeatStatusChangedEvent, parse_event
from schemas.results import SeatStatusChanged

log = logging.getLogger(__name__)

OUTBOX = Outbox("quota_outbox")
_DUE_NOW = datetime.min.replace(tzinfo=UTC)


@dataclass
class _Batch:
    """What one batch changed, made permanent in memory only once it is committed."""

    next_offsets: dict[int, int] = field(default_factory=dict)
    touched: set[str] = field(default_factory=set)
    published: dict[str, tuple[str, Published]] = field(default_factory=dict)
    """seat id → (account id, status): the last status this batch publishes for the seat."""
    recorded: list[datetime] = field(default_factory=list)
    deducted: list[tuple[str, str, datetime]] = field(default_factory=list)
    """(account id, request id, remembered until) of each usage deducted: the ids to store."""
    unparseable: int = 0


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
    ) -> None:
        self.directory = Directory()
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
        self._batch: _Batch | None = None
        self._loaded = False
        self._last_commit = time.monotonic()

    # -- the worker: load the snapshots before the consumer starts ------------------------

    async def start(self) -> None:
        async with (
            self._pool().acquire() as conn,
            conn.transaction(isolation="repeatable_read", readonly=True),
        ):
            offsets = await conn.fetch(
                "SELECT partition, next_offset FROM consumer_offsets "
                "WHERE consumer_group = $1 AND topic = $2",
                self._group,
                self._events_topic,
            )
            accounts = await conn.fetch(
                "SELECT account_id, partition, state::text AS state FROM quota_accounts "
                "WHERE consumer_group = $1",
                self._group,
            )
            statuses = await conn.fetch(
                "SELECT seat_id, status, reason FROM quota_seat_status WHERE consumer_group = $1",
                self._group,
            )
            request_ids = await self._request_ids(conn, None)
        self._in_step = {row["partition"]: row["next_offset"] for row in offsets}
        for row in accounts:
            account_id = row["account_id"]
            state = load_snapshot(row["state"], request_ids.get(account_id, ()))
            self._hold(account_id, row["partition"], state)
        for row in statuses:
            self._set_published(row["seat_id"], Published(row["status"], row["reason"]))
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
        self._batch = batch = _Batch()
        for record in records:
            first = record.partition not in batch.next_offsets
            if first and self._in_step.get(record.partition) != record.offset:
                await self._reload(conn, record.partition)
            batch.next_offsets[record.partition] = record.offset + 1
        outgoing = [self._fold(record, batch) for record in records]
        for account_id in batch.touched:
            self.directory.put(account_id, self.directory.accounts[account_id])
        await self._store_accounts(conn, batch.touched, batch.deducted)
        await self._store_statuses(conn, batch.published)
        await OUTBOX.add(conn, [m for messages in outgoing for m in messages])

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
        now = self._clock()
        self._report_utilization(batch.touched, now)
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
            for account_id in [a for a, due in self._due.items() if due <= now]:
                state = self.directory.accounts.get(account_id)
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
                    await self._store_statuses(conn, published)
                    await OUTBOX.add(conn, messages)
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

    def _fold(self, record: Record, batch: _Batch) -> list[Outgoing]:
        """Apply one record's fact; returns the seat statuses to publish."""
        try:
            event = parse_event(record.value or b"")
        except ValidationError:
            batch.unparseable += 1
            return []
        account_id = event.account_id
        state = self.directory.accounts.get(account_id)
        if state is None:
            state = AccountState()
            self.directory.put(account_id, state)
        self._partition_of[account_id] = record.partition
        batch.touched.add(account_id)
        batch.recorded.append(event.recorded_at)
        outgoing = []
        for result in apply(state, event, self._card):
            if result.event_type == "CreditsDeducted":
                until = result.occurred_at + REQUEST_ID_MEMORY
                batch.deducted.append((account_id, result.payload.request_id, until))
            elif result.event_type == "SeatStatusChanged":
                change = result.payload
                pending = batch.published.get(change.seat_id)
                last = pending[1] if pending else self._published.get(change.seat_id)
                if last is None or last.status != change.status:
                    batch.published[change.seat_id] = (
                        account_id,
                        Published(change.status, change.reason),
                    )
                    outgoing.append(self._message(result))
        return outgoing

    def _message(self, envelope: SeatStatusChangedEvent) -> Outgoing:
        return Outgoing(
            self._seat_status_topic, envelope.payload.seat_id, envelope.model_dump_json().encode()
        )

    def _hold(self, account_id: str, partition: int, state: AccountState) -> None:
        self.directory.put(account_id, state)
        self._partition_of[account_id] = partition
        self._due[account_id] = _DUE_NOW

    async def _reload(self, conn: Connection, partition: int) -> None:
        """Replace the partition's accounts and their seats' published statuses in memory
        with what is stored (another member may have moved them on)."""
        rows = await conn.fetch(
            "SELECT account_id, state::text AS state FROM quota_accounts "
            "WHERE consumer_group = $1 AND partition = $2",
            self._group,
            partition,
        )
        request_ids = await self._request_ids(conn, [row["account_id"] for row in rows])
        stored = {
            row["account_id"]: load_snapshot(row["state"], request_ids.get(row["account_id"], ()))
            for row in rows
        }
        statuses = await conn.fetch(
            "SELECT seat_id, status, reason FROM quota_seat_status "
            "WHERE consumer_group = $1 AND account_id = ANY($2::text[])",
            self._group,
            list(stored),
        )
        for account_id in [a for a, p in self._partition_of.items() if p == partition]:
            if account_id not in stored:
                self.directory.drop(account_id)
                del self._partition_of[account_id]
        for account_id, state in stored.items():
            self._hold(account_id, partition, state)
        for row in statuses:
            self._set_published(row["seat_id"], Published(row["status"], row["reason"]))
        log.info("partition reloaded", extra={"partition": partition, "accounts": len(stored)})

    async def _store_accounts(
        self,
        conn: Connection,
        account_ids: Collection[str],
        deducted: list[tuple[str, str, datetime]],
    ) -> None:
        """Write the accounts' states, without their request ids: only the new ones are
        added, to `quota_request_ids` (they only grow, and are most of a busy state)."""
        if deducted:  # an id forgotten in memory but not yet pruned here may come back
            latest = {(a, r): until for a, r, until in deducted}
            await conn.execute(
                "INSERT INTO quota_request_ids AS r "
                "(consumer_group, account_id, request_id, remember_until) "
                "SELECT $1, * FROM unnest($2::text[], $3::text[], $4::timestamptz[]) "
                "ON CONFLICT (consumer_group, account_id, request_id) "
                "DO UPDATE SET remember_until = EXCLUDED.remember_until",
                self._group,
                [a for a, _ in latest],
                [r for _, r in latest],
                list(latest.values()),
            )
        if not account_ids:
            return
        ordered = sorted(account_ids)
        await conn.execute(
            """
            INSERT INTO quota_accounts AS a (consumer_group, account_id, partition, state)
            SELECT $1, account_id, partition, state::jsonb
            FROM unnest($2::text[], $3::int[], $4::text[]) AS s(account_id, partition, state)
            ON CONFLICT (consumer_group, account_id) DO UPDATE
                SET partition = EXCLUDED.partition, state = EXCLUDED.state, updated_at = now()
            """,
            self._group,
            ordered,
            [self._partition_of[a] for a in ordered],
            [snapshot_json(self.directory.accounts[a]) for a in ordered],
        )

    async def _store_statuses(
        self, conn: Connection, published: dict[str, tuple[str, Published]]
    ) -> None:
        if not published:
            return
        seats = sorted(published)
        await conn.execute(
            """
            INSERT INTO quota_seat_status AS s (consumer_group, seat_id, account_id, status, reason)
            SELECT $1, * FROM unnest($2::text[], $3::text[], $4::text[], $5::text[])
            ON CONFLICT (consumer_group, seat_id) DO UPDATE
                SET account_id = EXCLUDED.account_id, status = EXCLUDED.status,
                    reason = EXCLUDED.reason, published_at = now()
            """,
            self._group,
            seats,
            [published[s][0] for s in seats],
            [published[s][1].status for s in seats],
            [published[s][1].reason for s in seats],
        )

    def _report_utilization(self, account_ids: Collection[str], now: datetime) -> None:
        """Each active subscription's utilization now; an ended one leaves the gauge."""
        gauge = metrics.SUBSCRIPTION_UTILIZATION
        for account_id in account_ids:
            state = self.directory.accounts.get(account_id)
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

    def _end_batch(self) -> _Batch | None:
        batch, self._batch = self._batch, None
        if batch is not None:
            self._lock.release()
        return batch

    async def _request_ids(self, conn: Connection, account_ids: list[str] | None) -> RememberedIds:
        """The request ids each of `account_ids` (None: every account) still remembers."""
        query = (
            "SELECT r.account_id, r.request_id, r.remember_until FROM quota_request_ids r "
            "JOIN quota_accounts a USING (consumer_group, account_id) "
            "WHERE r.consumer_group = $1 "
            "AND r.remember_until > (a.state->>'clock')::timestamptz"
        )
        if account_ids is None:
            rows = await conn.fetch(query, self._group)
        else:
            rows = await conn.fetch(
                query + " AND r.account_id = ANY($2::text[])", self._group, account_ids
            )
        return request_ids_by_account(rows)

    async def forget_request_ids(self) -> int:
        """Delete the stored request ids no account remembers any more; returns how many."""
        async with self._pool().acquire() as conn:
            status = await conn.execute(
                "DELETE FROM quota_request_ids r USING quota_accounts a "
                "WHERE r.consumer_group = $1 AND a.consumer_group = r.consumer_group "
                "AND a.account_id = r.account_id "
                "AND r.remember_until <= (a.state->>'clock')::timestamptz",
                self._group,
            )
        return int(status.split()[-1])
