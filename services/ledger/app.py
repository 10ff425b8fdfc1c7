"""Wiring of the ledger service: it folds the event log into credit deductions."""

from __future__ import annotations

from fastapi import FastAPI

from metering.http import create_app
from metering.metrics import MESSAGES_CONSUMED
from metering.runtime import ServiceRuntime
from metering.settings import Settings
from metering.topics import EVENTS


def build_app(settings: Settings) -> FastAPI:
    runtime = ServiceRuntime("ledger", settings)

    @runtime.batch_subscriber(EVENTS, group_id="metering-ledger")
    async def consume(messages: list[bytes]) -> None:
        MESSAGES_CONSUMED.labels(EVENTS).inc(len(messages))

    return create_app("ledger", runtime.lifespan, runtime.readiness)
