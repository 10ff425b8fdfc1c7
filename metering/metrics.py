"""Prometheus metrics every service shares; service-specific ones live with their service."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TypeVar

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
