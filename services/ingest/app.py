"""Wiring of the ingest service: the only door into the event log.

HTTP for commands and usage, a Kafka entry (`metering.usage-reports.v1`) for gateways that
prefer producing, and a relay that publishes facts stored but never acknowledged.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

from aiokafka.structs import ConsumerRecord
from fastapi import FastAPI
from faststream import AckPolicy
from faststream.kafka.annotations import KafkaMessage
from pydantic import ValidationError
from starlette.middleware import Middleware

from ingest import metrics
from ingest.access import access_router
from ingest.api import UsageFastPath, build_router, install_error_handlers, reporter_guard
from ingest.intake import Intake
from ingest.rules import UsageWindow
from metering.deadletters import dead_letter
from metering.http import create_app
from metering.loops import BackgroundLoop, wait_for_event
from metering.publishing import BrokerUnavailable, Outgoing, publish_all
from metering.runtime import ServiceRuntime
from metering.settings import Settings
from metering.topics import USAGE_REPORTS
from schemas.api import UsageReport

log = logging.getLogger(__name__)

#: A fact stored this long without acknowledgement is published again by the relay.
RELAY_AFTER_SECONDS = 30.0
RELAY_EVERY_SECONDS = 5.0
FORGET_EVERY_ROUNDS = 60
"""The relay forgets old usage reports every 60 rounds (5 minutes)."""


def now() -> datetime:
    return datetime.now(UTC)


def build_app(settings: Settings) -> FastAPI:
    card = settings.rate_card()
    key_hash_secret = settings.required_secret(
        "api_key_hash_secret", "ingest stores member API keys only as keyed hashes"
    )
    settings.required_secret("metering_admin_token", "the write API needs a bearer token")
    window = UsageWindow(
        timedelta(seconds=settings.usage_max_future_skew_seconds),
        timedelta(seconds=settings.usage_max_lateness_seconds),
    )
    runtime = ServiceRuntime("ingest", settings)
    intake = Intake(lambda: runtime.pool, runtime.broker, card, window, now, settings.events_topic)
    runtime.add_worker(UnconfirmedRelay(intake))

    @runtime.batch_subscriber(
        USAGE_REPORTS, group_id="metering-ingest", ack_policy=AckPolicy.NACK_ON_ERROR
    )
    async def consume_reports(_bodies: list[bytes], message: KafkaMessage) -> None:
        """Accept raw reports like POST /v1/usage/batch; what cannot be used is dead-lettered.

        A broker outage raises, so the batch is redelivered (duplicates are harmless).
        """
        await _accept_records(intake, runtime, message.raw_message, settings.dlq_topic)

    batch_limit = {("POST", "/v1/usage/batch"): settings.max_batch_body_bytes}
    fast_path = Middleware(UsageFastPath, guard=reporter_guard(settings), intake=lambda: intake)
    app = create_app(
        "ingest",
        runtime.lifespan,
        runtime.readiness,
        hot_paths=[fast_path],
        body_limits=settings.body_limits(batch_limit),
        settings=settings,
    )
    app.state.intake = intake
    app.include_router(build_router(settings, key_hash_secret, now))
    app.include_router(access_router(settings, key_hash_secret, lambda: runtime.pool, now))
    install_error_handlers(app)
    return app


async def _accept_records(
    intake: Intake,
    runtime: ServiceRuntime,
    records: tuple[ConsumerRecord[bytes, bytes], ...],
    dlq_topic: str,
) -> None:
    reports: list[UsageReport] = []
    sources: list[ConsumerRecord[bytes, bytes]] = []
    letters: list[Outgoing] = []
    for record in records:
        try:
            reports.append(UsageReport.model_validate_json(record.value or b""))
            sources.append(record)
        except ValidationError as error:
            letters.append(
                dead_letter(record, f"unparseable usage report: {error}", now(), dlq_topic)
            )
    for record, result in zip(sources, await intake.accept_usage(reports), strict=True):
        if result.status in ("invalid", "conflict"):
            reason = "; ".join(f"{p.field}: {p.message}" for p in result.problems)
            letters.append(
                dead_letter(record, f"{result.status} usage report: {reason}", now(), dlq_topic)
            )
    await publish_all(runtime.broker, letters)
    metrics.DEAD_LETTERS.inc(len(letters))


class UnconfirmedRelay(BackgroundLoop):
    """Publishes facts stored but never acknowledged (a crash or an outage in between)."""

    name = "unconfirmed facts relay"

    def __init__(self, intake: Intake) -> None:
        super().__init__()
        self._intake = intake

    async def run(self) -> None:
        rounds = 0
        while not self.stopping.is_set():
            await wait_for_event(self.stopping, RELAY_EVERY_SECONDS)
            rounds += 1
            try:
                if published := await self._intake.republish_unconfirmed(RELAY_AFTER_SECONDS):
                    log.info("relay published unconfirmed facts", extra={"count": published})
                if rounds % FORGET_EVERY_ROUNDS == 0:
                    while forgotten := await self._intake.forget_old_usage():
                        log.info("forgot old usage reports", extra={"count": forgotten})
            except BrokerUnavailable:
                log.warning("relay: broker unavailable, will retry")
            except Exception:
                log.exception("relay failed, will retry")
