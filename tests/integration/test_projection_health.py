"""No partition stuck in silence: `ProjectionConsumer` on a real topic and database reports
stored offsets past the end of the log and partitions whose batches keep failing, and is not
ready while either lasts."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Sequence
from pathlib import Path

import asyncpg
import pytest
from aiokafka import AIOKafkaProducer
from prometheus_client import CollectorRegistry

from metering.consumer import ProjectionConsumer, Record, StuckAfter, consumer_metrics
from metering.db import Connection
from metering.stack import Stack
from tests.integration.isolated import PARTITIONS, IsolatedEnv, isolated_env

pytestmark = pytest.mark.integration
DEADLINE = 60.0
DEFAULT_STUCK_AFTER = StuckAfter()


class Recording:
    """A projection that remembers what it applied, and fails while `failing` is set."""

    def __init__(self) -> None:
        self.failing = False
        self.applied: list[tuple[int, int]] = []
        self._batch: list[tuple[int, int]] = []

    async def apply(self, conn: Connection, records: Sequence[Record]) -> None:
        if self.failing:
            raise RuntimeError("this projection refuses the batch")
        self._batch = [(r.partition, r.offset) for r in records]

    def committed(self) -> None:
        self.applied += self._batch

    def rolled_back(self) -> None:
        self._batch = []

    def forget(self, partitions: Collection[int]) -> None:
        pass


@pytest.fixture
async def env(stack: Stack, tmp_path: Path) -> AsyncIterator[IsolatedEnv]:
    async with isolated_env(stack, tmp_path, "ph") as isolated:
        yield isolated


@pytest.fixture
async def pool(env: IsolatedEnv) -> AsyncIterator[asyncpg.Pool]:
    async with asyncpg.create_pool(env.database_url, min_size=1, max_size=4) as opened:
        yield opened


async def produce(env: IsolatedEnv, partition: int, count: int) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=env.stack.kafka_bootstrap_servers, acks="all")
    await producer.start()
    try:
        for n in range(count):
            await producer.send_and_wait(
                env.events_topic, f"m{n}".encode(), key=b"k", partition=partition
            )
    finally:
        await producer.stop()


def consumer_on(
    env: IsolatedEnv,
    pool: asyncpg.Pool,
    projection: Recording,
    registry: CollectorRegistry,
    stuck_after: StuckAfter = DEFAULT_STUCK_AFTER,
) -> ProjectionConsumer:
    return ProjectionConsumer(
        bootstrap_servers=env.stack.kafka_bootstrap_servers,
        topic=env.events_topic,
        group=f"{env.name}-group",
        client_id="projection-health-test",
        pool=lambda: pool,
        projection=projection,
        metrics=consumer_metrics("t", registry),
        stuck_after=stuck_after,
    )


async def until(check: Callable[[], bool | Awaitable[bool]], what: str) -> None:
    deadline = time.monotonic() + DEADLINE
    while True:
        outcome = check()
        if outcome if isinstance(outcome, bool) else await outcome:
            return
        if time.monotonic() > deadline:
            pytest.fail(f"{what} did not happen within {DEADLINE:.0f} s")
        await asyncio.sleep(0.1)


def gauge(registry: CollectorRegistry, name: str, partition: int) -> float | None:
    return registry.get_sample_value(f"metering_t_{name}", {"partition": str(partition)})


async def test_stored_offsets_past_the_end_of_the_log_are_reported_and_not_ready(
    env: IsolatedEnv, pool: asyncpg.Pool
) -> None:
    """PostgreSQL says 50 messages of partition 0 were applied; the log holds 3 (the broker
    lost its data): the partition is not consumed, lag is not negative, readiness fails."""
    await produce(env, 0, 3)
    await produce(env, 1, 2)
    await pool.execute(
        "INSERT INTO consumer_offsets (consumer_group, topic, partition, next_offset) "
        "VALUES ($1, $2, 0, 50)",
        f"{env.name}-group",
        env.events_topic,
    )
    registry, projection = CollectorRegistry(), Recording()
    consumer = consumer_on(env, pool, projection, registry)
    await consumer.start()
    try:
        await until(lambda: gauge(registry, "offsets_past_end", 0) == 1, "past end reported")
        await until(lambda: (1, 1) in projection.applied, "partition 1 applied")
        await asyncio.sleep(1.5)  # a few more rounds of the loop
        assert not consumer.ready()
        assert [p for p, _ in projection.applied] == [1, 1]
        for partition in range(PARTITIONS):
            assert (gauge(registry, "consumer_lag", partition) or 0) >= 0
            assert gauge(registry, "offsets_past_end", partition) == (partition == 0)
        assert (
            await pool.fetchval("SELECT next_offset FROM consumer_offsets WHERE partition = 0")
            == 50
        )
    finally:
        await consumer.stop()


@pytest.mark.parametrize(
    "stuck_after",
    [StuckAfter(failures=3, seconds=600), StuckAfter(failures=1000, seconds=2)],
    ids=["failed-batches-in-a-row", "no-progress-with-lag"],
)
async def test_a_partition_whose_batches_keep_failing_is_stuck_until_one_succeeds(
    env: IsolatedEnv, pool: asyncpg.Pool, stuck_after: StuckAfter
) -> None:
    await produce(env, 1, 2)
    registry, projection = CollectorRegistry(), Recording()
    projection.failing = True
    consumer = consumer_on(env, pool, projection, registry, stuck_after)
    await consumer.start()
    try:
        await until(lambda: gauge(registry, "partition_stuck", 1) == 1, "stuck reported")
        assert not consumer.ready()
        assert gauge(registry, "partition_stuck", 0) == 0
        projection.failing = False
        await until(consumer.ready, "ready again once a batch succeeds")
        assert gauge(registry, "partition_stuck", 1) == 0
        assert projection.applied == [(1, 0), (1, 1)]
    finally:
        await consumer.stop()
