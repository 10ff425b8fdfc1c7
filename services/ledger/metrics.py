"""The ledger's Prometheus metrics (all prefixed `metering_ledger_`), counted after commit."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

from metering.consumer import consumer_metrics
from metering.metrics import per_subscription

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
SUBSCRIPTION_CREDITS_DEDUCTED = per_subscription(
    Counter(
        "metering_ledger_subscription_credits_deducted_micro_total",
        "Micro-credits paid by buckets, by subscription and seat tier (for the business view; "
        "only with METRICS_PER_SUBSCRIPTION, for at most METRICS_SUBSCRIPTION_SERIES_MAX).",
        ["subscription_id", "tier"],
    )
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
OUTBOX_BACKLOG = Gauge(
    "metering_ledger_outbox_backlog",
    "Results written to the outbox and not yet acknowledged by the broker.",
)
CONSUMER = consumer_metrics("ledger")
