"""Wiring of the quota service: it keeps the live remaining-balance projection."""

from __future__ import annotations

from fastapi import FastAPI

from metering.http import create_app
from metering.metrics import MESSAGES_CONSUMED
from metering.runtime import ServiceRuntime
from metering.settings import Settings
from metering.topics import LEDGER


def build_app(settings: Settings) -> FastAPI:
    runtime = ServiceRuntime("quota", settings)

    @runtime.batch_subscriber(LEDGER, group_id="metering-quota")
    async def consume(messages: list[bytes]) -> None:
        MESSAGES_CONSUMED.labels(LEDGER).inc(len(messages))

    return create_app("quota", runtime.lifespan, runtime.readiness)
