"""Prometheus metrics every service shares; service-specific ones live with their service."""

from __future__ import annotations

from prometheus_client import Counter

MESSAGES_CONSUMED = Counter(
    "metering_messages_consumed_total",
    "Kafka messages a service has consumed, by topic.",
    ["topic"],
)
