"""Wiring of the quota service: the gateway's decision point.

A `ProjectionConsumer` (group `QUOTA_CONSUMER_GROUP`) folds metering.events.v1 into the
in-memory `QuotaProjection` with the pure core, snapshotting each batch in PostgreSQL; an
`OutboxRelay` publishes the seat statuses it decides to metering.seat-status.v1, and a
`SeatStatusTimer` adds those that time alone changes. The HTTP API answers from memory,
`POST /v1/authorize` through `AuthorizeFront`, ahead of every middleware and FastAPI's routing.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

from fastapi import FastAPI

from metering.consumer import ProjectionConsumer, StuckAfter
from metering.http import create_app
from metering.outbox import OutboxRelay
from metering.runtime import ServiceRuntime
from metering.scopes import MEMBER_ONLY, ScopeResolver, scope_guard
from metering.settings import Settings
from quota import metrics
from quota.api import AuthorizeFront, Authorizer, quota_router
from quota.projection import QuotaProjection
from quota.ratelimit import FailedKeyLimiter
from quota.store import OUTBOX
from quota.timer import SeatStatusTimer


def now() -> datetime:
    return datetime.now(UTC)


def build_app(settings: Settings, clock: Callable[[], datetime] = now) -> FastAPI:
    card = settings.rate_card()
    key_hash_secret = settings.required_secret(
        "api_key_hash_secret", "quota looks member API keys up by their keyed hash"
    )
    runtime = ServiceRuntime("quota", settings)
    pool = lambda: runtime.pool  # noqa: E731 - the pool exists once the service has started
    relay = OutboxRelay(OUTBOX, pool, runtime.broker, metrics.OUTBOX_BACKLOG)
    projection = QuotaProjection(
        card,
        pool,
        group=settings.quota_consumer_group,
        events_topic=settings.events_topic,
        seat_status_topic=settings.seat_status_topic,
        clock=clock,
        on_commit=relay.wake,
    )
    consumer = ProjectionConsumer(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        kafka_options=settings.kafka_options(),
        fetch_max_wait_ms=settings.projection_fetch_max_wait_ms,
        fetch_min_bytes=settings.projection_fetch_min_bytes,
        topic=settings.events_topic,
        group=settings.quota_consumer_group,
        client_id="metering-quota",
        pool=pool,
        projection=projection,
        metrics=metrics.CONSUMER,
        stuck_after=StuckAfter(
            settings.projection_stuck_after_failures, settings.projection_stuck_after_seconds
        ),
    )
    runtime.add_worker(projection)
    runtime.add_worker(relay)
    runtime.add_worker(consumer)
    runtime.add_worker(SeatStatusTimer(projection, settings.quota_status_interval_seconds))
    limiter = FailedKeyLimiter(settings.quota_failed_keys_per_minute)
    authorizer = Authorizer(
        projection.index, card, key_hash_secret, limiter, clock, settings.proxies()
    )
    app = create_app(
        "quota",
        runtime.lifespan,
        runtime.readiness,
        settings=settings,
        front=lambda rest, limits: AuthorizeFront(rest, authorizer, limits),
    )
    resolver = ScopeResolver(
        settings.tokens("metering_admin_token", "metering_read_token"), pool, key_hash_secret
    )
    reader, member = scope_guard(resolver), scope_guard(resolver, MEMBER_ONLY)
    app.include_router(quota_router(projection.index, authorizer, clock, reader, member))
    return app
