"""Wiring of the ingest service: the only door into the event log."""

from __future__ import annotations

from fastapi import FastAPI

from metering.http import create_app
from metering.runtime import ServiceRuntime
from metering.settings import Settings


def build_app(settings: Settings) -> FastAPI:
    runtime = ServiceRuntime("ingest", settings)
    return create_app("ingest", runtime.lifespan, runtime.readiness)
