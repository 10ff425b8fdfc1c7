"""A consumer-group member that projects a topic into PostgreSQL with exactly-once effect.

Kafka's committed offsets are not used: each batch's projection and the next offset of every
partition in it are written in one PostgreSQL transaction, and on start and on every
rebalance each assigned partition is sought to the offset stored there (the earliest when
none is). The offset write is fenced: it succeeds only if the stored offset is still the one
this member last read or wrote, so a member that lost a partition during a rebalance, or a
zombie that missed its revocation, can never write a batch twice.

The projection may cache what it derived from its partitions in memory; it is told to
forget it whenever that memory may have diverged from the database (a failed transaction,
a partition gained or lost).

No partition stays stuck in silence: one whose batches failed `StuckAfter.failures` times in a
row, or that made no progress for `StuckAfter.seconds` while messages wait, is reported stuck
(`metering_<service>_partition_stuck`), and one whose stored offset lies past the end of the
log (the broker lost data that PostgreSQL says was applied) is reported
(`metering_<service>_offsets_past_end`) until the log reaches it again: either makes the
consumer not ready.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeAlias

import asyncpg
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, ConsumerRecord, TopicPartition
from prometheus_client import REGISTRY, CollectorRegistry, Gauge, Histogram

from metering.db import Connection
from metering.loops import BackgroundLoop, Backoff
from metering.metrics import MESSAGES_CONSUMED
from metering.runtime import HEARTBEAT_INTERVAL_MS, SESSION_TIMEOUT_MS

log = logging.getLogger(__name__)

Record: TypeAlias = "ConsumerRecord[bytes, bytes]"


class Projection(Protocol):
    """What a `ProjectionConsumer` feeds."""

    async def apply(self, conn: Connection, records: Sequence[Record]) -> None:
        """Write the effect of `records` within the open transaction on `conn`."""

    def committed(self) -> None:
        """The last `apply` was committed."""

    def rolled_back(self) -> None:
        """The last `apply` was not committed: drop what it changed in memory."""

    def forget(self, partitions: Collection[int]) -> None:
        """Drop in-memory state derived from these partitions (gained or lost)."""


@dataclass(frozen=True)
class ConsumerMetrics:
    """What every projection consumer reports, under its service's prefix."""

    lag: Gauge
    batch_seconds: Histogram
    batch_size: Histogram
    stuck: Gauge
    past_end: Gauge


def consumer_metrics(service: str, registry: CollectorRegistry = REGISTRY) -> ConsumerMetrics:
    """`metering_<service>_consumer_lag`, `_transaction_seconds`, `_batch_size`,
    `_partition_stuck` and `_offsets_past_end`."""
    prefix = f"metering_{service}"
    return ConsumerMetrics(
        lag=Gauge(
            f"{prefix}_consumer_lag",
            "Messages of the consumed topic not yet applied, per owned partition (never negative).",
            ["partition"],
            registry=registry,
        ),
        batch_seconds=Histogram(
            f"{prefix}_transaction_seconds",
            "Time to apply one batch in its PostgreSQL transaction, commit included.",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=registry,
        ),
        batch_size=Histogram(
            f"{prefix}_batch_size",
            "Messages per applied batch.",
            buckets=(1, 10, 50, 100, 250, 500, 1000, 2000),
            registry=registry,
        ),
        stuck=Gauge(
            f"{prefix}_partition_stuck",
            "1 while an owned partition is stuck: its batches failed repeatedly, or it made no "
            "progress for a while with messages waiting; else 0.",
            ["partition"],
            registry=registry,
        ),
        past_end=Gauge(
            f"{prefix}_offsets_past_end",
            "1 while an owned partition's stored offset lies past the end of the log (the "
            "broker lost data PostgreSQL says was applied): it is not consumed; else 0.",
            ["partition"],
            registry=registry,
        ),
    )


@dataclass(frozen=True)
class StuckAfter:
    """When a partition counts as stuck."""

    failures: int = 5
    """Failed batches in a row."""
    seconds: float = 120.0
    """Time without progress while messages wait."""


class OffsetsMoved(RuntimeError):
    """Another member wrote a partition's offset since we read it: we no longer own it."""


class StoredOffsets:
    """The `consumer_offsets` rows of one group and topic."""

    def __init__(self, group: str, topic: str) -> None:
        self.group = group
        self.topic = topic

    async def load(self, conn: Connection, partitions: Collection[int]) -> dict[int, int]:
        rows = await conn.fetch(
            "SELECT partition, next_offset FROM consumer_offsets "
            "WHERE consumer_group = $1 AND topic = $2 AND partition = ANY($3::int[])",
            self.group,
            self.topic,
            list(partitions),
        )
        return {row["partition"]: row["next_offset"] for row in rows}

    async def advance(self, conn: Connection, moves: dict[int, tuple[int | None, int]]) -> None:
        """Set each partition's next offset from `expected` (None: no row yet) to a new one.

        Raises `OffsetsMoved` when any stored offset is not the expected one; the caller's
        transaction must then be rolled back.
        """
        partitions = list(moves)
        advanced = await conn.fetchval(
            """
            WITH moves AS (
                SELECT * FROM unnest($3::int[], $4::bigint[], $5::bigint[])
                    AS m(partition, expected, next_offset)
            ), written AS (
                INSERT INTO consumer_offsets AS o (consumer_group, topic, partition, next_offset)
                SELECT $1, $2, partition, next_offset FROM moves
                ON CONFLICT (consumer_group, topic, partition) DO UPDATE
                    SET next_offset = EXCLUDED.next_offset, updated_at = now()
                    WHERE o.next_offset = (
                        SELECT expected FROM moves WHERE moves.partition = EXCLUDED.partition)
                RETURNING 1
            )
            SELECT count(*) FROM written
            """,
            self.group,
            self.topic,
            partitions,
            [-1 if moves[p][0] is None else moves[p][0] for p in partitions],
            [moves[p][1] for p in partitions],
        )
        if advanced != len(partitions):
            raise OffsetsMoved(f"stored offsets of {self.topic} {partitions} moved under us")


class ProjectionConsumer(BackgroundLoop):
    """Reads `topic` in batches as a member of `group` and applies each batch exactly once.

    A service `Worker`: `ready()` says whether it holds partitions; `metrics` are the
    service's own (see `consumer_metrics`).
    """

    def __init__(
        self,
        *,
        bootstrap_servers: str,
        topic: str,
        group: str,
        client_id: str,
        pool: Callable[[], asyncpg.Pool],
        projection: Projection,
        metrics: ConsumerMetrics,
        max_records: int = 1000,
        stuck_after: StuckAfter = StuckAfter(),
        kafka_options: Mapping[str, Any] | None = None,
        fetch_max_wait_ms: int = 500,
        fetch_min_bytes: int = 1,
    ) -> None:
        super().__init__()
        self._kafka_options = dict(kafka_options or {})
        self._fetch_max_wait_ms = fetch_max_wait_ms
        self._fetch_min_bytes = fetch_min_bytes
        self.name = f"consume {topic}"
        self._bootstrap_servers = bootstrap_servers
        self._client_id = client_id
        self._offsets = StoredOffsets(group, topic)
        self._pool = pool
        self._projection = projection
        self._metrics = metrics
        self._max_records = max_records
        self._next: dict[int, int | None] = {}
        """Per owned partition: the offset stored in PostgreSQL (None: no row yet)."""
        self._lock = asyncio.Lock()
        """Held while a batch is applied and while partitions change hands."""
        self._backoff = Backoff(self.stopping)
        self._consumer: AIOKafkaConsumer | None = None
        self._stuck_after = stuck_after
        self._failures: dict[int, int] = {}
        """Per owned partition: batches with it that failed in a row."""
        self._progress_at: dict[int, float] = {}
        """Per owned partition: when it last advanced, or was found caught up (monotonic)."""
        self._stuck: set[int] = set()
        self._past_end: set[int] = set()

    @property
    def topic(self) -> str:
        return self._offsets.topic

    async def start(self) -> None:
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=self._bootstrap_servers,
            group_id=self._offsets.group,
            client_id=self._client_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            session_timeout_ms=SESSION_TIMEOUT_MS,
            heartbeat_interval_ms=HEARTBEAT_INTERVAL_MS,
            fetch_max_wait_ms=self._fetch_max_wait_ms,
            fetch_min_bytes=self._fetch_min_bytes,
            **self._kafka_options,
        )
        self._consumer.subscribe([self.topic], listener=_Rebalance(self))
        await self._consumer.start()
        await super().start()

    async def stop(self) -> None:
        """Finish the batch in hand, then leave the group."""
        await super().stop()
        if self._consumer is not None:
            await self._consumer.stop()

    def ready(self) -> bool:
        """Running, with partitions, none of them stuck or sought past the end of its log."""
        consumer = self._consumer
        return (
            super().ready()
            and consumer is not None
            and bool(consumer.assignment())
            and not self._stuck
            and not self._past_end
        )

    async def run(self) -> None:
        consumer = self._consumer
        assert consumer is not None
        while not self.stopping.is_set():
            try:
                fetched = await consumer.getmany(timeout_ms=500, max_records=self._max_records)
                async with self._lock:
                    failed = bool(fetched) and await self._apply(fetched)
            except Exception:
                log.exception("consumer loop failed; retrying")
                failed = True
            try:  # after failures too: they are what makes a partition stuck
                self._report_lag(consumer)
            except Exception:
                log.exception("could not report the consumer's lag")
            if failed:
                await self._backoff.pause()
            else:
                self._backoff.reset()

    async def _apply(self, fetched: dict[TopicPartition, list[Record]]) -> bool:
        """Apply one fetched batch in one transaction; returns whether it failed."""
        batch = {tp.partition: records for tp, records in fetched.items() if records}
        out_of_step = [p for p, records in batch.items() if not self._in_step(p, records)]
        if out_of_step:  # fetched before a seek, or never sought: re-read from the stored offset
            await self._seek_to_stored(out_of_step)
            for partition in out_of_step:
                del batch[partition]
        if not batch:
            return False
        records = [r for partition in sorted(batch) for r in batch[partition]]
        moves = {p: (self._next[p], records_[-1].offset + 1) for p, records_ in batch.items()}
        started = time.perf_counter()
        try:
            async with self._pool().acquire() as conn, conn.transaction():
                await self._offsets.advance(conn, moves)
                await self._projection.apply(conn, records)
        except Exception as error:
            self._projection.rolled_back()
            if isinstance(error, OffsetsMoved):
                log.info("partitions moved to another member", extra={"error": str(error)})
            else:
                log.exception("batch failed; it will be read again from the stored offsets")
                for partition in batch:
                    self._failures[partition] = self._failures.get(partition, 0) + 1
            with contextlib.suppress(Exception):
                await self._seek_to_stored(list(batch))
            return True
        self._metrics.batch_seconds.observe(time.perf_counter() - started)
        self._metrics.batch_size.observe(len(records))
        MESSAGES_CONSUMED.labels(self.topic).inc(len(records))
        now = time.monotonic()
        for partition, (_, next_offset) in moves.items():
            self._next[partition] = next_offset
            self._failures[partition] = 0
            self._progress_at[partition] = now
        self._projection.committed()
        return False

    def _in_step(self, partition: int, records: list[Record]) -> bool:
        """Whether `records` continue exactly where the stored offset says we are."""
        if partition not in self._next:
            return False
        stored = self._next[partition]
        return stored is None or records[0].offset == stored

    async def _seek_to_stored(self, partitions: Collection[int]) -> None:
        """Seek owned `partitions` to their stored offsets and forget what was derived."""
        consumer = self._consumer
        assert consumer is not None
        owned = {tp.partition for tp in consumer.assignment() if tp.topic == self.topic}
        partitions = [p for p in partitions if p in owned]
        self._projection.forget(partitions)
        async with self._pool().acquire() as conn:
            stored = await self._offsets.load(conn, partitions)
        ends = (
            await consumer.end_offsets([TopicPartition(self.topic, p) for p in stored])
            if stored
            else {}
        )
        for partition in partitions:
            tp = TopicPartition(self.topic, partition)
            self._next[partition] = stored.get(partition)
            self._progress_at.setdefault(partition, time.monotonic())
            if partition in stored and stored[partition] > ends[tp]:
                self._offsets_past_end(tp, stored[partition], ends[tp])
            else:
                self._past_end.discard(partition)
                self._metrics.past_end.labels(str(partition)).set(0)
            if partition in stored:
                consumer.seek(tp, stored[partition])
            else:
                await consumer.seek_to_beginning(tp)
        offsets = {str(p): stored.get(p, "earliest") for p in partitions}
        log.info("sought to stored offsets", extra={"topic": self.topic, "offsets": offsets})

    def _offsets_past_end(self, tp: TopicPartition, stored: int, end: int) -> None:
        """The log ends before the stored offset: the broker may have lost what we applied,
        and facts appended now would be skipped until the log reaches the stored offset. Say
        so (not ready, gauge, alert) until it does; the partition is still consumed from the
        stored offset, as the fenced offsets require (a broker's answer about its end can also
        be stale for a moment: the flag then clears at the next fetch)."""
        self._past_end.add(tp.partition)
        self._metrics.past_end.labels(str(tp.partition)).set(1)
        self._metrics.lag.labels(str(tp.partition)).set(0)
        log.error(
            "stored offset lies past the end of the log: facts appended now are not applied "
            "until the log reaches it; reconcile the broker and the stored offsets",
            extra={
                "topic": tp.topic,
                "partition": tp.partition,
                "stored_offset": stored,
                "log_end_offset": end,
            },
        )

    async def _assigned(self, partitions: Collection[TopicPartition]) -> None:
        async with self._lock:
            await self._seek_to_stored([tp.partition for tp in partitions])

    async def _revoked(self, partitions: Collection[TopicPartition]) -> None:
        async with self._lock:  # waits for the batch in hand
            lost = [tp.partition for tp in partitions]
            self._projection.forget(lost)
            for partition in lost:
                self._next.pop(partition, None)
                self._failures.pop(partition, None)
                self._progress_at.pop(partition, None)
                self._stuck.discard(partition)
                self._past_end.discard(partition)
                for gauge in (self._metrics.lag, self._metrics.stuck, self._metrics.past_end):
                    with contextlib.suppress(KeyError):
                        gauge.remove(str(partition))

    def _report_lag(self, consumer: AIOKafkaConsumer) -> None:
        """Each owned partition's lag (never negative) and whether it is stuck."""
        now = time.monotonic()
        for tp in consumer.assignment():
            partition = tp.partition
            if partition not in self._next:
                continue
            end = consumer.highwater(tp)
            if partition in self._past_end:
                if end is None or end < (self._next[partition] or 0):
                    continue
                self._past_end.discard(partition)  # the log reached the stored offset
                self._metrics.past_end.labels(str(partition)).set(0)
            lag = None if end is None else max(0, end - (self._next[partition] or 0))
            if lag is not None:
                self._metrics.lag.labels(str(partition)).set(lag)
            if lag == 0:
                self._progress_at[partition] = now
            waited = now - self._progress_at.setdefault(partition, now)
            stuck = self._failures.get(partition, 0) >= self._stuck_after.failures or (
                bool(lag) and waited >= self._stuck_after.seconds
            )
            self._metrics.stuck.labels(str(partition)).set(int(stuck))
            if stuck and partition not in self._stuck:
                log.error(
                    "partition stuck",
                    extra={
                        "topic": self.topic,
                        "partition": partition,
                        "failed_batches_in_a_row": self._failures.get(partition, 0),
                        "seconds_without_progress": round(waited, 1),
                        "lag": lag,
                    },
                )
                self._stuck.add(partition)
            elif not stuck and partition in self._stuck:
                log.info("partition no longer stuck", extra={"partition": partition})
                self._stuck.discard(partition)


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    """aiokafka awaits these around every rebalance, before fetching for the new owner."""

    def __init__(self, owner: ProjectionConsumer) -> None:
        self._owner = owner

    async def on_partitions_revoked(self, revoked: Collection[TopicPartition]) -> None:
        await self._owner._revoked(revoked)

    async def on_partitions_assigned(self, assigned: Collection[TopicPartition]) -> None:
        await self._owner._assigned(assigned)
