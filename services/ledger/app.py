"""Wiring of the ledger service: it folds the event log into credit deductions.

A `ProjectionConsumer` (group `LEDGER_CONSUMER_GROUP`) applies batches of the events topic
to PostgreSQL exactly once through the `LedgerProjection`, which publishes what each batch
produced before it commits; an `OutboxRelay` publishes any rows left in the outbox (none are
written unless `publish_now` is off); the HTTP API reads the ledger.
"""

from __future__ import annotations

from collections.abc import Sequence

from fastapi import FastAPI

from ledger import metrics
from ledger.api import ledger_router
from ledger.projection import LedgerProjection, LedgerTopics
from ledger.store import OUTBOX
from metering.consumer import ProjectionConsumer, StuckAfter
from metering.http import create_app
from metering.outbox import OutboxRelay
from metering.publishing import Outgoing, publish_all
from metering.runtime import ServiceRuntime
from metering.scopes import MEMBER_ONLY, ScopeResolver, scope_guard
from metering.settings import Settings


def build_app(settings: Settings) -> FastAPI:
    card = settings.rate_card()
    runtime = ServiceRuntime("ledger", settings)
    pool = lambda: runtime.pool  # noqa: E731 - the pool exists once the service has started
    relay = OutboxRelay(OUTBOX, pool, runtime.broker, metrics.OUTBOX_BACKLOG)
    topics = LedgerTopics(settings.ledger_topic, settings.dlq_topic)

    async def publish_now(messages: Sequence[Outgoing]) -> None:
        await publish_all(runtime.broker, messages)

    consumer = ProjectionConsumer(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        kafka_options=settings.kafka_options(),
        fetch_max_wait_ms=settings.projection_fetch_max_wait_ms,
        fetch_min_bytes=settings.projection_fetch_min_bytes,
        topic=settings.events_topic,
        group=settings.ledger_consumer_group,
        client_id="metering-ledger",
        pool=pool,
        projection=LedgerProjection(
            card, topics, on_commit=lambda: None, publish_now=publish_now
        ),  # the relay polls for rows left from before; batches write none
        metrics=metrics.CONSUMER,
        stuck_after=StuckAfter(
            settings.projection_stuck_after_failures, settings.projection_stuck_after_seconds
        ),
    )
    runtime.add_worker(relay)
    runtime.add_worker(consumer)
    app = create_app("ledger", runtime.lifespan, runtime.readiness, settings=settings)
    resolver = ScopeResolver(
        settings.tokens("metering_admin_token", "metering_read_token"),
        pool,
        next(iter(settings.tokens("api_key_hash_secret")), None),
    )
    reader, member = scope_guard(resolver), scope_guard(resolver, MEMBER_ONLY)
    app.include_router(ledger_router(card, pool, reader, member))
    return app
