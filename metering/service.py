"""Process entry point shared by the three services: settings, logging, uvicorn."""

from __future__ import annotations

import signal
from collections.abc import Callable

import uvicorn
from fastapi import FastAPI

from metering.logs import configure_logging
from metering.settings import Settings, load_settings


def serve(service: str, build_app: Callable[[Settings], FastAPI]) -> None:
    """Run one service until SIGTERM/SIGINT; uvicorn drains requests, then the lifespan ends."""
    settings = load_settings()
    configure_logging(settings.log_level, service)
    # uvicorn drains, then re-raises the stop signal it caught: a finished stop exits with 0.
    for stop_signal in (signal.SIGTERM, signal.SIGINT):
        signal.signal(stop_signal, _exit_after_graceful_stop)
    uvicorn.run(
        build_app(settings),
        host=settings.http_host,
        port=settings.http_port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=25,
    )


def _exit_after_graceful_stop(_signum: int, _frame: object) -> None:
    raise SystemExit(0)
