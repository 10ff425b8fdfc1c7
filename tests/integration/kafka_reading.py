"""Reading what is on a topic, for assertions: a fresh consumer, polled until a condition."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable

from aiokafka import AIOKafkaConsumer
from aiokafka.structs import ConsumerRecord

Records = list[ConsumerRecord[bytes, bytes]]


async def read_until(
    bootstrap_servers: str,
    topic: str,
    wanted: Callable[[ConsumerRecord[bytes, bytes]], bool],
    done: Callable[[Records], bool],
    deadline_seconds: float = 60,
    settle_seconds: float = 1.0,
) -> Records:
    """Every `wanted` record of `topic` from the beginning, once `done` holds for them and no
    new one arrived for `settle_seconds` (so a duplicate arriving late is still seen)."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap_servers,
        group_id=f"test-reader-{uuid.uuid4()}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        session_timeout_ms=6000,
        heartbeat_interval_ms=1000,
    )
    await consumer.start()
    found: Records = []
    try:
        give_up = time.monotonic() + deadline_seconds
        quiet_since = time.monotonic()
        while time.monotonic() < give_up:
            batches = await consumer.getmany(timeout_ms=200, max_records=5000)
            new = [r for records in batches.values() for r in records if wanted(r)]
            if new:
                found.extend(new)
                quiet_since = time.monotonic()
            elif done(found) and time.monotonic() - quiet_since >= settle_seconds:
                return found
        return found
    finally:
        await consumer.stop()
