"""Wiring of the ingest service: the only door into the event log.

HTTP for commands and usage, a Kafka entry (`metering.usage-reports.v1`) for gateways that
prefer producing, and a relay that publishes facts stored but never acknowledged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta

from aiokafka.structs import ConsumerRecord
from fastapi import FastAPI
from faststream import AckPolicy
from faststream.kafka.annotations import KafkaMessage
from pydantic import ValidationError

from ingest import metrics
from ingest.api import build_router, install_error_handlers
from ingest.facts import UsageWindow
from ingest.intake import Intake
from metering.deadletters import dead_letter
from metering.http import create_app
from metering.publishing import BrokerUnavailable, Outgoing, publish_all
from metering.runtime import ServiceRuntime
from metering.settings import Settings
from metering.topics import USAGE_REPORTS
from schemas.api import UsageReport

log = logging.getLogger(__name__)

#: A fact stored this long without acknowledgement is published again by the relay.
RELAY_AFTER_SECONDS = 30.0
RELAY_EVERY_SECONDS = 5.0


def now() -> datetime:
    return datetime.now(UTC)


def build_app(settings: Settings) -> FastAPI:
    card = settings.rate_card()
    key_hash_secret = settings.required_secret(
        "api_key_hash_secret", "ingest stores member API keys only as keyed hashes"
    )
    if not settings.tokens("metering_admin_token"):
        settings.required_secret("metering_admin_token", "the write API needs a bearer token")
    window = UsageWindow(
        timedelta(seconds=settings.usage_max_future_skew_seconds),
        timedelta(seconds=settings.usage_max_lateness_seconds),
    )
    runtime = ServiceRuntime("ingest", settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with runtime.lifespan(app):
            app.state.intake = Intake(runtime.pool, runtime.broker, card, window, now)
            relay = asyncio.create_task(_relay(app.state.intake))
            try:
                yield
            finally:
                relay.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await relay

    @runtime.batch_subscriber(
        USAGE_REPORTS, group_id="metering-ingest", ack_policy=AckPolicy.NACK_ON_ERROR
    )
    async def consume_reports(_bodies: list[bytes], message: KafkaMessage) -> None:
        """Accept raw reports like POST /v1/usage/batch; what cannot be used is dead-lettered.

        A broker outage raises, so the batch is redelivered (duplicates are harmless).
        """
        await _accept_records(app.state.intake, runtime, message.raw_message)

    app = create_app("ingest", lifespan, runtime.readiness)
    app.include_router(build_router(settings, key_hash_secret, now))
    install_error_handlers(app)
    return app


async def _accept_records(
    intake: Intake, runtime: ServiceRuntime, records: tuple[ConsumerRecord[bytes, bytes], ...]
) -> None:
    reports: list[UsageReport] = []
    sources: list[ConsumerRecord[bytes, bytes]] = []
    letters: list[Outgoing] = []
    for record in records:
        try:
            reports.append(UsageReport.model_validate_json(record.value or b""))
            sources.append(record)
        except ValidationError as error:
            letters.append(dead_letter(record, f"unparseable usage report: {error}", now()))
    for record, result in zip(sources, await intake.accept_usage(reports), strict=True):
        if result.status in ("invalid", "conflict"):
            reason = "; ".join(f"{p.field}: {p.message}" for p in result.problems)
            letters.append(dead_letter(record, f"{result.status} usage report: {reason}", now()))
    await publish_all(runtime.broker, letters)
    metrics.DEAD_LETTERS.inc(len(letters))


async def _relay(intake: Intake) -> None:
    """Publish facts stored but never acknowledged (a crash or an outage in between)."""
    while True:
        await asyncio.sleep(RELAY_EVERY_SECONDS)
        try:
            if published := await intake.republish_unconfirmed(RELAY_AFTER_SECONDS):
                log.info("relay published unconfirmed facts", extra={"count": published})
        except BrokerUnavailable:
            log.warning("relay: broker unavailable, will retry")
        except Exception:
            log.exception("relay failed, will retry")
