"""A transactional outbox: messages written with a projection, published afterwards.

A consumer adds the messages its batch produced to an outbox table in the batch's own
transaction, so they exist exactly when the batch's effects do. The relay then publishes the
rows in insertion order, with the broker's acknowledgement, and deletes them: at least once,
never out of order (one relay at a time holds the table's lock). The table holds only what
is still to publish, so it stays small; what was published is in the topic (and, for the
ledger, in `ledger_entries`).

The table needs the columns `id` (identity, the order), `topic`, `key`, `value` (bytea).
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable, Sequence

import asyncpg
from faststream.kafka import KafkaBroker
from prometheus_client import Gauge

from metering.db import Connection
from metering.loops import BackgroundLoop, Backoff, wait_for_event
from metering.publishing import BrokerUnavailable, Outgoing, publish_all

log = logging.getLogger(__name__)

_TABLE_NAME = re.compile(r"^[a-z_][a-z0-9_]*$")


class Outbox:
    """One outbox table."""

    def __init__(self, table: str) -> None:
        if not _TABLE_NAME.match(table):
            raise ValueError(f"{table!r} is not a plain table name")
        self.table = table

    async def add(self, conn: Connection, messages: Sequence[Outgoing]) -> None:
        """Append `messages` in order, within the caller's transaction."""
        if messages:
            await conn.copy_records_to_table(
                self.table,
                records=[(m.topic, m.key, m.value) for m in messages],
                columns=["topic", "key", "value"],
            )


class OutboxRelay(BackgroundLoop):
    """Publishes an outbox's rows in order and deletes them (a service `Worker`).

    Polls every `idle_seconds`, or at once after `wake()`; backs off while the broker does
    not acknowledge. Replicas take turns through a transaction-scoped advisory lock.
    """

    def __init__(
        self,
        outbox: Outbox,
        pool: Callable[[], asyncpg.Pool],
        broker: KafkaBroker,
        backlog: Gauge,
        *,
        batch_size: int = 1000,
        idle_seconds: float = 1.0,
    ) -> None:
        super().__init__()
        self.name = f"relay {outbox.table}"
        self._outbox = outbox
        self._pool = pool
        self._broker = broker
        self._backlog = backlog
        self._batch_size = batch_size
        self._idle_seconds = idle_seconds
        self._wake = asyncio.Event()
        self._backoff = Backoff(self.stopping)  # new rows do not cut a back-off short
        table = outbox.table
        self._lock_key = f"outbox:{table}"
        self._select = f"SELECT id, topic, key, value FROM {table} ORDER BY id LIMIT $1"
        self._delete = f"DELETE FROM {table} WHERE id = ANY($1::bigint[])"
        self._count = f"SELECT count(*) FROM {table}"

    def wake(self) -> None:
        """New rows were committed: publish them without waiting for the next poll."""
        self._wake.set()

    async def stop(self) -> None:
        self._wake.set()
        await super().stop()

    async def run(self) -> None:
        while not self.stopping.is_set():
            self._wake.clear()
            try:
                published = await self.publish_some()
            except Exception as error:
                if isinstance(error, BrokerUnavailable):
                    log.warning("outbox relay: broker unavailable", extra={"error": str(error)})
                else:
                    log.exception("outbox relay failed")
                await self._backoff.pause()
                continue
            self._backoff.reset()
            if not published:
                await wait_for_event(self._wake, self._idle_seconds)

    async def publish_some(self) -> int:
        """Publish the oldest unpublished rows (one batch); returns how many were published."""
        async with self._pool().acquire() as conn, conn.transaction():
            if not await conn.fetchval(
                "SELECT pg_try_advisory_xact_lock(hashtext($1))", self._lock_key
            ):
                return 0  # another replica's relay is publishing
            rows = await conn.fetch(self._select, self._batch_size)
            if rows:
                await publish_all(
                    self._broker, [Outgoing(r["topic"], r["key"], r["value"]) for r in rows]
                )
                await conn.execute(self._delete, [r["id"] for r in rows])
            self._backlog.set(await conn.fetchval(self._count))
            return len(rows)
