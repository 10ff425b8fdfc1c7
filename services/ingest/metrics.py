"""ingest's Prometheus metrics."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

USAGE_REPORTS = Counter(
    "metering_ingest_usage_reports_total",
    "Usage reports by result: accepted, duplicate, conflict or invalid.",
    ["result"],
)
REJECTIONS = Counter(
    "metering_ingest_rejections_total",
    "Refused fields of usage reports, by reason (malformed, unknown_model, occurred_in_future, "
    "occurred_too_late, unknown_key, key_revoked, tokens_beyond_context, ..., "
    "conflicting_report: the problem codes of the README).",
    ["reason"],
)
PLAN_COMMANDS = Counter(
    "metering_ingest_plan_commands_total",
    "Plan commands by fact type and outcome (new, duplicate, conflict, unconfirmed).",
    ["event_type", "outcome"],
)
BATCH_SIZE = Histogram(
    "metering_ingest_batch_size",
    "Usage reports per accepted call (1 for POST /v1/usage).",
    buckets=(1, 10, 50, 100, 250, 500, 1000),
)
BROKER_ACK_SECONDS = Histogram(
    "metering_ingest_broker_ack_seconds",
    "Time from sending a call's events to the broker's acknowledgement of all of them.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
BROKER_UNAVAILABLE = Counter(
    "metering_ingest_broker_unavailable_total",
    "Calls answered 503 because the broker did not acknowledge in time.",
)
DEAD_LETTERS = Counter(
    "metering_ingest_dead_letters_total",
    "Raw reports from the Kafka entry sent to the dead-letter topic.",
)
RELAYED = Counter(
    "metering_ingest_relayed_total",
    "Stored but unacknowledged facts published again by the relay.",
)
