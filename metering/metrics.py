"""Prometheus metrics every service shares; service-specific ones live with their service."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

from prometheus_client import Counter, Histogram
from prometheus_client.metrics import MetricWrapperBase

Metric = TypeVar("Metric", bound=MetricWrapperBase)


def child_of(metric: Metric) -> Callable[..., Metric]:
    """`metric.labels`, remembered per label values: for hot paths, where prometheus-client's
    own lookup (validation, a lock) would cost more than the increment."""
    return functools.cache(metric.labels)


MESSAGES_CONSUMED = Counter(
    "metering_messages_consumed_total",
    "Kafka messages a service has consumed, by topic.",
    ["topic"],
)
HTTP_REQUESTS = Counter(
    "metering_http_requests_total",
    "HTTP requests answered, by service (component), method, route template and status.",
    ["component", "method", "route", "status"],
)
HTTP_SECONDS = Histogram(
    "metering_http_request_duration_seconds",
    "Time to answer an HTTP request, by service (component), method and route template.",
    ["component", "method", "route"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
"""`component`, not `service`: the Prometheus Operator sets `service` on every target."""
HTTP_REQUEST_COUNT = child_of(HTTP_REQUESTS)
HTTP_REQUEST_SECONDS = child_of(HTTP_SECONDS)


SUBSCRIPTION_SERIES_DROPPED = Counter(
    "metering_metrics_subscription_series_dropped_total",
    "Updates of per-subscription series not recorded: per-subscription metrics are off "
    "(METRICS_PER_SUBSCRIPTION) or METRICS_SUBSCRIPTION_SERIES_MAX subscriptions already have one.",
)


class _Ignored:
    """What a per-subscription series that is not recorded gives: every update is a no-op."""

    def inc(self, amount: float = 1) -> None:
        SUBSCRIPTION_SERIES_DROPPED.inc()

    def set(self, value: float) -> None:
        SUBSCRIPTION_SERIES_DROPPED.inc()


_IGNORED = _Ignored()


class PerSubscription:
    """A metric whose first label is a subscription id: customers' names and spend, one
    series each. Recorded only when enabled (`METRICS_PER_SUBSCRIPTION`), and for at most
    `cap` subscriptions (`METRICS_SUBSCRIPTION_SERIES_MAX`): the label set stays bounded."""

    def __init__(self, metric: MetricWrapperBase) -> None:
        self.metric = metric
        self.enabled = False
        self.cap = 0
        self._seen: set[str] = set()

    def configure(self, *, enabled: bool, cap: int) -> None:
        self.enabled = enabled
        self.cap = cap

    def labels(self, subscription_id: str, *rest: str) -> Any:
        if not self.enabled:
            return _IGNORED
        if subscription_id not in self._seen:
            if len(self._seen) >= self.cap:
                return _IGNORED
            self._seen.add(subscription_id)
        return self.metric.labels(subscription_id, *rest)

    def remove(self, subscription_id: str, *rest: str) -> None:
        """Forget a series (raises KeyError, as prometheus-client does, if it had none)."""
        if subscription_id not in self._seen:
            raise KeyError(subscription_id)
        self.metric.remove(subscription_id, *rest)
        self._seen.discard(subscription_id)


PER_SUBSCRIPTION: list[PerSubscription] = []
"""Every per-subscription metric of this process (configured from the settings at start)."""


def per_subscription(metric: MetricWrapperBase) -> PerSubscription:
    wrapped = PerSubscription(metric)
    PER_SUBSCRIPTION.append(wrapped)
    return wrapped


def configure_per_subscription(*, enabled: bool, cap: int) -> None:
    for metric in PER_SUBSCRIPTION:
        metric.configure(enabled=enabled, cap=cap)
