"""Usage reports to ingest's `POST /v1/usage`, retried while they may not have been recorded.

The report's `request_id` (LiteLLM's call id) makes a retry safe: ingest answers a repeat
`200 "duplicate": true` and counts it once. A `429`, `5xx` or network failure is retried with
the same body (bounded, with back-off); any other `4xx` (a report ingest refuses, with its
`code`) is logged and dropped.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import httpx

from metering_litellm.settings import GatewaySettings

log = logging.getLogger("metering_litellm")

RETRIED = {429, 500, 502, 503, 504}


class UsageSender:
    """Posts usage reports to ingest, retrying what may not have been recorded."""

    def __init__(self, config: GatewaySettings, client: httpx.AsyncClient | None = None) -> None:
        self.config = config
        self._client = client
        self.sent = 0
        self.refused = 0
        self.lost = 0

    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(
                base_url=self.config.ingest_url.rstrip("/"),
                timeout=self.config.timeout_seconds,
                headers={"Authorization": f"Bearer {self.config.gateway_token}"},
                limits=httpx.Limits(max_connections=100, max_keepalive_connections=50),
            )
        return self._client

    async def send(self, report: dict[str, Any]) -> bool:
        """True once ingest accepted the report (or already had it)."""
        wait = self.config.usage_backoff_seconds
        for attempt in range(1, self.config.usage_attempts + 1):
            try:
                answer = await self.client().post("/v1/usage", json=report)
            except httpx.HTTPError as error:
                problem = f"{type(error).__name__}: {error}"
            else:
                if answer.status_code < 300:
                    self.sent += 1
                    return True
                if answer.status_code not in RETRIED:
                    self.refused += 1
                    code = _code(answer)
                    log.error(
                        "usage report %s refused by ingest: %s %s %s",
                        report["request_id"],
                        answer.status_code,
                        code,
                        answer.text[:500],
                    )
                    return False
                problem = f"HTTP {answer.status_code}"
            if attempt < self.config.usage_attempts:
                log.warning(
                    "usage report %s not recorded (%s), try %d again in %.1fs",
                    report["request_id"],
                    problem,
                    attempt + 1,
                    wait,
                )
                await asyncio.sleep(wait)
                wait = min(wait * 2, 5.0)
        self.lost += 1
        log.error("usage report %s LOST after %d tries: %s", report["request_id"], attempt, report)
        return False


def _code(answer: httpx.Response) -> str | None:
    try:
        code = answer.json().get("code")
    except ValueError:
        return None
    return str(code) if code else None
