"""Process entry point shared by the three services: settings, logging, uvicorn."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable
from typing import Any

import prometheus_client
import uvicorn
from fastapi import FastAPI
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

import metering.core
from metering.logs import configure_logging
from metering.settings import Settings, load_settings


def serve(service: str, build_app: Callable[[Settings], FastAPI]) -> None:
    """Run one service until SIGTERM/SIGINT; uvicorn drains requests, then the lifespan ends."""
    settings = load_settings()
    configure_logging(settings.log_level, service)
    logging.getLogger("metering.service").info(
        "core",
        extra={"compiled": metering.core.NATIVE, "source_because": metering.core.PURE_REASON},
    )
    # uvicorn drains, then re-raises the stop signal it caught: a finished stop exits with 0.
    for stop_signal in (signal.SIGTERM, signal.SIGINT):
        signal.signal(stop_signal, _exit_after_graceful_stop)
    if settings.metrics_port is not None:  # an internal port of its own (a thread)
        prometheus_client.start_http_server(settings.metrics_port, addr=settings.metrics_host)
    uvicorn.run(build_app(settings), **server_options(settings))


def server_options(settings: Settings) -> dict[str, Any]:
    """uvicorn's options: timeouts and limits from the settings, and no forwarded headers
    believed by uvicorn itself (`TRUSTED_PROXY_HOPS` / `TRUSTED_PROXIES` decide that)."""
    return {
        "host": settings.http_host,
        "port": settings.http_port,
        "log_config": None,
        "access_log": False,
        "timeout_graceful_shutdown": 25,
        "http": guarded_protocol(settings.http_header_timeout_seconds),
        "timeout_keep_alive": settings.http_keep_alive_seconds,
        "limit_concurrency": settings.http_limit_concurrency,
        "proxy_headers": False,
        "server_header": False,
    }


def guarded_protocol(header_timeout: float) -> type[HttpToolsProtocol]:
    """uvicorn's httptools protocol, closing connections that do not send a request's headers
    within `header_timeout` seconds (slow or half-sent headers, idle connections)."""

    class HeaderTimeoutProtocol(HttpToolsProtocol):
        _header_timer: asyncio.TimerHandle | None = None
        _awaiting_headers = True

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm_header_timer()

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._awaiting_headers = True

        def on_headers_complete(self) -> None:
            self._awaiting_headers = False
            self._disarm_header_timer()
            super().on_headers_complete()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._arm_header_timer()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm_header_timer()
            super().connection_lost(exc)

        def _arm_header_timer(self) -> None:
            self._disarm_header_timer()
            self._header_timer = self.loop.call_later(header_timeout, self._headers_late)

        def _disarm_header_timer(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _headers_late(self) -> None:
            self._header_timer = None
            idle = self.cycle is None or self.cycle.response_complete
            if self._awaiting_headers or idle:
                self.transport.close()

    return HeaderTimeoutProtocol


def _exit_after_graceful_stop(_signum: int, _frame: object) -> None:
    raise SystemExit(0)
