"""Reading the event topic from its first offset up to known positions, for audit replays.

A replay compares the log with what the ledger made of it, so it reads exactly as far as
the ledger had applied: the next offsets its consumer stored in PostgreSQL with its
projection. Those are exact, unlike the broker's end offsets (some Kafka-compatible brokers
report the base offset of the last record batch there), and they need no write to the log.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError
from pydantic import ValidationError

from schemas.envelope import FactEvent, parse_event

FETCH_RECORDS = 10_000
STALL_SECONDS = 30.0
"""How long the broker may return nothing before the read is declared stuck."""


class LogReadError(Exception):
    """The broker cannot give the log up to the wanted offsets; the message says why."""


@dataclass
class LogRead:
    """Each account's events in log order, first copy of each event id only."""

    accounts: dict[str, list[FactEvent]] = field(default_factory=dict)
    records: int = 0
    duplicates: int = 0
    """Records whose event id came earlier in the log (the ledger skips them too)."""
    unparseable: int = 0
    """Records that are not valid events (the ledger dead-lettered them)."""


async def read_log(
    bootstrap_servers: str,
    topic: str,
    stop_offsets: Mapping[int, int],
    kafka_options: Mapping[str, Any] | None = None,
) -> LogRead:
    """Every record of `topic` before `stop_offsets[partition]`, from the first offset."""
    consumer = AIOKafkaConsumer(
        **(kafka_options or {}),
        bootstrap_servers=bootstrap_servers,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=8 * 1024 * 1024,
    )
    try:
        await consumer.start()
        partitions = await _partitions(consumer, topic, stop_offsets)
        wanted = {tp: stop_offsets.get(tp.partition, 0) for tp in partitions}
        consumer.assign(list(wanted))
        await consumer.seek_to_beginning(*wanted)
        return await _read(consumer, wanted)
    except KafkaError as error:
        raise LogReadError(f"KAFKA_BOOTSTRAP_SERVERS: reading {topic} failed: {error}") from None
    finally:
        await consumer.stop()


async def _partitions(
    consumer: AIOKafkaConsumer, topic: str, stop_offsets: Mapping[int, int]
) -> list[TopicPartition]:
    await consumer.topics()  # refreshes the metadata that `partitions_for_topic` reads
    numbers = consumer.partitions_for_topic(topic)
    if not numbers:
        raise LogReadError(f"topic {topic} does not exist on the broker")
    unknown = sorted(set(stop_offsets) - numbers)
    if unknown:
        raise LogReadError(f"the ledger applied partitions {unknown} that {topic} does not have")
    return [TopicPartition(topic, p) for p in sorted(numbers)]


async def _read(consumer: AIOKafkaConsumer, wanted: dict[TopicPartition, int]) -> LogRead:
    read = LogRead()
    seen: set[str] = set()
    for tp, stop in wanted.items():
        first = await consumer.position(tp)
        if first > 0 and stop > 0:
            raise LogReadError(
                f"partition {tp.partition} now starts at offset {first}: the broker's retention "
                "deleted events the ledger applied; replay from the archive instead"
            )
    pending = {tp: stop for tp, stop in wanted.items() if stop > 0}
    last_progress = time.monotonic()
    while pending:
        batches = await consumer.getmany(*pending, timeout_ms=500, max_records=FETCH_RECORDS)
        for tp, records in batches.items():
            end = pending.get(tp)
            if end is None:
                continue
            for record in records:
                if record.offset < end:
                    _take(read, seen, record.value or b"")
            if records and records[-1].offset + 1 >= end:
                del pending[tp]
                consumer.pause(tp)
        if batches:
            last_progress = time.monotonic()
        elif time.monotonic() - last_progress > STALL_SECONDS:
            where = ", ".join(
                [
                    f"partition {tp.partition} at offset {await consumer.position(tp)} of {end}"
                    for tp, end in sorted(pending.items())
                ]
            )
            raise LogReadError(f"the broker returned nothing for {STALL_SECONDS:.0f} s: {where}")
    return read


def _take(read: LogRead, seen: set[str], value: bytes) -> None:
    read.records += 1
    try:
        event = parse_event(value)
    except ValidationError:
        read.unparseable += 1
        return
    if event.event_id in seen:
        read.duplicates += 1
        return
    seen.add(event.event_id)
    read.accounts.setdefault(event.account_id, []).append(event)
