"""The quota service's Prometheus metrics (all prefixed `metering_quota_`)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from metering.consumer import consumer_metrics
from metering.metrics import child_of, per_subscription

AUTHORIZE_DECISIONS = Counter(
    "metering_quota_authorize_decisions_total",
    "Answers of POST /v1/authorize, by result (allowed, denied, rate_limited) and code.",
    ["result", "code"],
)
AUTHORIZE_DECISION = child_of(AUTHORIZE_DECISIONS)
AUTHORIZE_SECONDS = Histogram(
    "metering_quota_authorize_seconds",
    "Service time of an authorize decision (key hash, lookups and balance evaluation).",
    buckets=(0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05),
)
SEATS_SUSPENDED = Gauge(
    "metering_quota_seats_suspended",
    "Seats whose last published status is suspended, by reason.",
    ["reason"],
)
for _reason in (
    "quota_exhausted",
    "seat_removed",
    "subscription_not_started",
    "subscription_cancelled",
    "subscription_expired",
):  # at 0 from the start, so the first suspensions of a reason show as an increase
    SEATS_SUSPENDED.labels(_reason)
SUBSCRIPTION_UTILIZATION = per_subscription(
    Gauge(
        "metering_quota_subscription_utilization_ratio",
        "Credits used of the credits available this month (seats and valid packs), 0 to 1, "
        "per active subscription (only with METRICS_PER_SUBSCRIPTION, for at most "
        "METRICS_SUBSCRIPTION_SERIES_MAX).",
        ["subscription_id"],
    )
)
SEAT_STATUSES_PUBLISHED = Counter(
    "metering_quota_seat_statuses_published_total",
    "Seat status changes written for metering.seat-status.v1, by who noticed them (fold, timer).",
    ["source"],
)
PROJECTION_LAG_SECONDS = Histogram(
    "metering_quota_projection_lag_seconds",
    "From an event's recorded_at (its acceptance by ingest) to its effect being committed.",
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600),
)
STALENESS_SECONDS = Gauge(
    "metering_quota_staleness_seconds",
    "Seconds since the projection last committed a batch (read it with the consumer lag: "
    "a quiet topic also leaves it growing).",
)
UNPARSEABLE_EVENTS = Counter(
    "metering_quota_unparseable_events_total",
    "Messages of metering.events.v1 quota could not parse and skipped (ledger dead-letters them).",
)
OUTBOX_BACKLOG = Gauge(
    "metering_quota_outbox_backlog",
    "Seat statuses written to the outbox and not yet acknowledged by the broker.",
)
CONSUMER = consumer_metrics("quota")
