"""The shared HTTP edges over ASGI: private metrics, bounded labels, problems everywhere."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI
from prometheus_client import CollectorRegistry, Counter, generate_latest

from metering.http import Readiness, create_app
from metering.metrics import PerSubscription
from metering.settings import load_settings


@contextlib.asynccontextmanager
async def _no_lifespan(_app: FastAPI) -> AsyncIterator[None]:
    yield


def app_with(**settings: object) -> FastAPI:
    return create_app("ledger", _no_lifespan, Readiness(), settings=load_settings(**settings))


async def get(
    app: FastAPI, path: str, *, peer: str = "127.0.0.1", headers: dict[str, str] | None = None
) -> httpx.Response:
    transport = httpx.ASGITransport(app=app, client=(peer, 4711))
    async with httpx.AsyncClient(transport=transport, base_url="http://svc") as client:
        return await client.get(path, headers=headers)


async def test_metrics_need_the_metrics_token_when_one_is_set() -> None:
    app = app_with(metrics_token="s3cret")
    refused = await get(app, "/metrics", peer="192.0.2.5")
    assert refused.status_code == 401
    assert refused.headers["content-type"] == "application/problem+json"
    assert (await get(app, "/metrics", headers={"Authorization": "Bearer nope"})).status_code == 401
    allowed = await get(
        app, "/metrics", peer="192.0.2.5", headers={"Authorization": "Bearer s3cret"}
    )
    assert allowed.status_code == 200
    assert "process_cpu_seconds_total" in allowed.text or "python_info" in allowed.text


async def test_metrics_without_a_token_answer_loopback_callers_only() -> None:
    app = app_with()
    assert (await get(app, "/metrics")).status_code == 200
    assert (await get(app, "/metrics", peer="::1")).status_code == 200
    remote = await get(app, "/metrics", peer="192.0.2.5")
    assert remote.status_code == 403
    assert remote.json()["code"] == "metrics_private"


async def test_metrics_on_their_own_port_are_not_on_the_apis() -> None:
    answer = await get(app_with(metrics_port=9464), "/metrics")
    assert answer.status_code == 404
    assert answer.headers["content-type"] == "application/problem+json"


@pytest.fixture
def per_subscription() -> tuple[PerSubscription, CollectorRegistry]:
    registry = CollectorRegistry()
    counter = Counter("spend_micro", "spend", ["subscription_id", "tier"], registry=registry)
    return PerSubscription(counter), registry


def test_per_subscription_series_are_off_by_default(
    per_subscription: tuple[PerSubscription, CollectorRegistry],
) -> None:
    metric, registry = per_subscription
    metric.labels("sub-1", "standard").inc(5)
    assert b"sub-1" not in generate_latest(registry)


def test_per_subscription_series_stop_at_their_cap(
    per_subscription: tuple[PerSubscription, CollectorRegistry],
) -> None:
    metric, registry = per_subscription
    metric.configure(enabled=True, cap=3)
    for n in range(10):
        metric.labels(f"sub-{n}", "standard").inc()
    metric.labels("sub-0", "premium").inc()  # a known subscription keeps its series
    text = generate_latest(registry).decode()
    assert [f"sub-{n}" in text for n in range(10)] == [True] * 3 + [False] * 7
    assert 'subscription_id="sub-0",tier="premium"' in text
    metric.remove("sub-1", "standard")
    metric.labels("sub-9", "standard").inc()  # room again
    assert "sub-9" in generate_latest(registry).decode()
    with pytest.raises(KeyError):
        metric.remove("sub-5", "standard")
