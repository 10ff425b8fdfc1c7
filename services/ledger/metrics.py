"""The ledger's Prometheus metrics (all prefixed `metering_ledger_`), counted after commit."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

EVENTS_APPLIED = Counter(
    "metering_ledger_events_applied_total",
    "Facts of metering.events.v1 folded into the ledger, by event type.",
    ["event_type"],
)
DUPLICATES_SKIPPED = Counter(
    "metering_ledger_duplicates_skipped_total",
    "Events skipped because their event id was already in the ledger.",
)
CREDITS_DEDUCTED = Counter(
    "metering_ledger_credits_deducted_micro_total",
    "Micro-credits paid by buckets, by model, seat tier and bucket (seat or pack).",
    ["model", "tier", "bucket"],
)
SHORTFALL = Counter(
    "metering_ledger_shortfall_micro_total",
    "Micro-credits of usage no bucket covered, by model.",
    ["model"],
)
FACTS_REJECTED = Counter(
    "metering_ledger_facts_rejected_total",
    "Well-formed facts that did not fit the account's state, by reason.",
    ["reason"],
)
DEAD_LETTERS = Counter(
    "metering_ledger_dead_letters_total",
    "Messages that could not be parsed, sent to the dead-letter topic.",
)
BATCH_SIZE = Histogram(
    "metering_ledger_batch_size",
    "Messages per applied batch.",
    buckets=(1, 10, 50, 100, 250, 500, 1000, 2000),
)
TRANSACTION_SECONDS = Histogram(
    "metering_ledger_transaction_seconds",
    "Time to apply one batch in its PostgreSQL transaction, commit included.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
CONSUMER_LAG = Gauge(
    "metering_ledger_consumer_lag",
    "Messages of metering.events.v1 not yet applied, per owned partition.",
    ["partition"],
)
OUTBOX_BACKLOG = Gauge(
    "metering_ledger_outbox_backlog",
    "Results written to the outbox and not yet acknowledged by the broker.",
)
