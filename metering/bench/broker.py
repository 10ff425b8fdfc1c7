"""(a) The broker's ceiling: aiokafka alone, producing then consuming realistic envelopes.

A fresh topic with the events topic's partition count; the producer uses acks=all like the
services (not idempotent: the embedded broker refuses that) with generous batching, the
consumer reads every partition from the start without a group. The ceiling is the slower of
the two rates: a pipeline cannot move events faster than its slowest stage.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections import deque
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient

from metering.bench.monitor import Rate, Timeline, ticking
from metering.topics import TopicSpec, ensure_topics

IN_FLIGHT = 20_000
"""Sends awaiting their acknowledgement before the producer waits for the oldest."""
CONSUME_TIMEOUT = 120.0


@dataclass(frozen=True)
class BrokerResult:
    messages: int
    mean_bytes: int
    partitions: int
    produce_seconds: float
    consume_seconds: float

    @property
    def produce_rate(self) -> float:
        return self.messages / self.produce_seconds if self.produce_seconds else 0.0

    @property
    def consume_rate(self) -> float:
        return self.messages / self.consume_seconds if self.consume_seconds else 0.0

    @property
    def ceiling(self) -> float:
        return min(self.produce_rate, self.consume_rate)


async def broker_ceiling(
    bootstrap_servers: str,
    messages: list[tuple[bytes, bytes]],
    seconds: float,
    timeline: Timeline,
    partitions: int = 6,
) -> BrokerResult:
    """Produce `messages` (key, value), cycling, for `seconds`; then consume them all."""
    topic = f"bench.broker.{uuid.uuid4().hex[:10]}"
    await ensure_topics(bootstrap_servers, [TopicSpec(topic, partitions, {"retention.ms": "-1"})])
    try:
        produced, produce_seconds = await _produce(
            bootstrap_servers, topic, messages, seconds, timeline
        )
        consume_seconds = await _consume(bootstrap_servers, topic, produced, timeline)
    finally:
        await _delete_topic(bootstrap_servers, topic)
    mean = sum(len(k) + len(v) for k, v in messages) // len(messages)
    return BrokerResult(produced, mean, partitions, produce_seconds, consume_seconds)


async def _produce(
    bootstrap_servers: str,
    topic: str,
    messages: list[tuple[bytes, bytes]],
    seconds: float,
    timeline: Timeline,
) -> tuple[int, float]:
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap_servers,
        client_id="metering-bench",
        acks="all",
        linger_ms=5,
        max_batch_size=256 * 1024,
        request_timeout_ms=30_000,
    )
    await producer.start()
    rate = Rate(timeline, "broker produced (msg/s)")
    pending: deque[asyncio.Future[object]] = deque()
    sent = 0
    try:
        async with ticking(timeline, rate):
            started = time.perf_counter()
            deadline = started + seconds
            while time.perf_counter() < deadline:
                for _ in range(500):
                    key, value = messages[sent % len(messages)]
                    pending.append(await producer.send(topic, value, key=key))
                    sent += 1
                rate.add(500)
                while len(pending) > IN_FLIGHT:
                    await pending.popleft()
            while pending:
                await pending.popleft()
            elapsed = time.perf_counter() - started
    finally:
        await producer.stop()
    return sent, elapsed


async def _consume(bootstrap_servers: str, topic: str, expected: int, timeline: Timeline) -> float:
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap_servers,
        client_id="metering-bench",
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=4 * 1024 * 1024,
    )
    await consumer.start()
    rate = Rate(timeline, "broker consumed (msg/s)")
    try:
        async with ticking(timeline, rate):
            started = time.perf_counter()
            deadline = started + CONSUME_TIMEOUT
            while rate.total < expected and time.perf_counter() < deadline:
                fetched = await consumer.getmany(timeout_ms=1000, max_records=20_000)
                rate.add(sum(len(records) for records in fetched.values()))
            elapsed = time.perf_counter() - started
    finally:
        await consumer.stop()
    if rate.total < expected:
        raise RuntimeError(f"consumed {rate.total} of {expected} messages in {elapsed:.0f} s")
    return elapsed


async def _delete_topic(bootstrap_servers: str, topic: str) -> None:
    """Free the broker's memory (the embedded broker keeps topics in memory)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers, request_timeout_ms=10_000)
    with contextlib.suppress(Exception):
        await admin.start()
        try:
            await admin.delete_topics([topic])
        finally:
            await admin.close()
