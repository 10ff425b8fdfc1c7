"""A gateway's local copy of metering.seat-status.v1: may this seat run, without a call.

`SeatStatusCache` reads every partition of the compacted topic from the beginning (no
consumer group: every gateway process keeps the whole table) and keeps the last status of
each seat, as compaction does. Ask `status(seat_id)`; None means the seat was never seen.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from pydantic import ValidationError

from metering.topics import SEAT_STATUS
from schemas.envelope import parse_seat_status
from schemas.results import SeatStatusChanged

log = logging.getLogger(__name__)


class SeatStatusCache:
    """The latest `SeatStatusChanged` of every seat, followed live."""

    def __init__(
        self, bootstrap_servers: str, topic: str = SEAT_STATUS, **kafka_options: Any
    ) -> None:
        """`kafka_options`: TLS/SASL of the gateway's Kafka client (aiokafka's arguments,
        e.g. `Settings.kafka_options()`)."""
        self._topic = topic
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap_servers, enable_auto_commit=False, **kafka_options
        )
        self._statuses: dict[str, SeatStatusChanged] = {}
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self._consumer.start()
        await self._consumer.topics()  # fetches the cluster's metadata
        partitions = self._consumer.partitions_for_topic(self._topic)
        if not partitions:
            await self._consumer.stop()
            raise LookupError(f"topic {self._topic} does not exist")
        assigned = [TopicPartition(self._topic, p) for p in sorted(partitions)]
        self._consumer.assign(assigned)
        await self._consumer.seek_to_beginning(*assigned)
        self._task = asyncio.create_task(self._follow(), name=f"follow {self._topic}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._consumer.stop()

    def status(self, seat_id: str) -> SeatStatusChanged | None:
        return self._statuses.get(seat_id)

    async def _follow(self) -> None:
        while True:
            batches = await self._consumer.getmany(timeout_ms=1000)
            for records in batches.values():
                for record in records:
                    try:
                        change = parse_seat_status(record.value or b"").payload
                    except ValidationError:
                        log.warning(
                            "unparseable seat status skipped", extra={"offset": record.offset}
                        )
                        continue
                    self._statuses[change.seat_id] = change
