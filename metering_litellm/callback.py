"""LiteLLM's success callback: one usage report per model call to ingest's `POST /v1/usage`.

The call id LiteLLM gives every call (`litellm_call_id`) is the report's `request_id`, so a
retry can never count twice: ingest answers a repeat `200 "duplicate": true`. A `503`, a
`429`, another `5xx` or a network failure is retried with the same body (bounded, with
back-off); a `4xx` (a report ingest refuses, with its `code`) is logged, not retried. A
streamed call is reported once, when LiteLLM logs its assembled response at the stream's end.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from litellm.integrations.custom_logger import CustomLogger

from metering_litellm.report import usage_report
from metering_litellm.settings import settings
from metering_litellm.usage import UsageSender

log = logging.getLogger("metering_litellm")


class MeteringCallback(CustomLogger):  # type: ignore[misc]
    """`litellm_settings.callbacks: metering_litellm.callback.metering_callback`."""

    def __init__(self) -> None:
        super().__init__()
        self._senders: dict[int, UsageSender] = {}
        self._pending: set[asyncio.Task[bool]] = set()

    def sender(self) -> UsageSender:
        loop = id(asyncio.get_running_loop())
        found = self._senders.get(loop)
        if found is None:
            found = self._senders[loop] = UsageSender(settings())
        return found

    async def async_log_success_event(
        self, kwargs: dict[str, Any], response_obj: Any, start_time: Any, end_time: Any
    ) -> None:
        payload = kwargs.get("standard_logging_object")
        if not payload:
            log.error("no standard_logging_object for call %s", kwargs.get("litellm_call_id"))
            return
        try:
            report = usage_report(payload, response_obj)
        except Exception:
            log.exception("cannot build the usage report of %s", payload.get("litellm_call_id"))
            return
        if report is None:
            return
        # Retries outlive LiteLLM's logging worker's patience: they run in a task of their own.
        task = asyncio.create_task(self.sender().send(report))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def drain(self) -> None:
        """Wait for the reports still being sent (tests, shutdown)."""
        while self._pending:
            await asyncio.gather(*list(self._pending), return_exceptions=True)


metering_callback = MeteringCallback()
