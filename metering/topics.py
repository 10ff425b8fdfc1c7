"""The contract's topics and their settings, created explicitly with their final configuration.

Topics are never left to broker auto-creation: the embedded broker refuses later changes
(`alter_configs`, `create_partitions`), and production wants replication and retention set.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError, for_code

EVENTS = "metering.events.v1"
LEDGER = "metering.ledger.v1"
SEAT_STATUS = "metering.seat-status.v1"
DLQ = "metering.dlq.v1"
USAGE_REPORTS = "metering.usage-reports.v1"
"""Kafka entry for gateways that prefer producing to posting: raw usage reports, read by ingest."""


@dataclass(frozen=True)
class TopicSpec:
    """One topic of the contract: name, partition count and broker configs."""

    name: str
    partitions: int
    configs: dict[str, str] = field(default_factory=dict)


def contract_topics(events_partitions: int = 6) -> list[TopicSpec]:
    """The topics of contract.md and ingest's Kafka entry, with their final settings.

    Results follow the events' partitioning by account; raw reports are kept a week (they
    are copied into the event log once accepted).
    """
    forever = {"retention.ms": "-1"}
    return [
        TopicSpec(EVENTS, events_partitions, forever),
        TopicSpec(LEDGER, events_partitions, forever),
        TopicSpec(SEAT_STATUS, events_partitions, {"cleanup.policy": "compact"}),
        TopicSpec(DLQ, 1, forever),
        TopicSpec(USAGE_REPORTS, events_partitions, {"retention.ms": str(7 * 24 * 3600 * 1000)}),
    ]


async def ensure_topics(
    bootstrap_servers: str,
    specs: list[TopicSpec],
    replication_factor: int = 1,
    kafka_options: Mapping[str, Any] | None = None,
) -> list[str]:
    """Create the topics that do not exist yet; returns the names it created."""
    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap_servers, request_timeout_ms=10_000, **(kafka_options or {})
    )
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [spec for spec in specs if spec.name not in existing]
        if missing:
            new = [
                NewTopic(s.name, s.partitions, replication_factor, topic_configs=s.configs)
                for s in missing
            ]
            response = await admin.create_topics(new)
            for name, code, *_ in response.topic_errors:
                # Another process may have created it between our list and create.
                if code and for_code(code) is not TopicAlreadyExistsError:
                    raise for_code(code)(f"could not create topic {name}")
        return [spec.name for spec in missing]
    finally:
        await admin.close()
