"""A success callback that does nothing: `make bench-gateway` measures LiteLLM's own cost of
running callbacks with it, apart from what the metering callback adds."""

from __future__ import annotations

from typing import Any

from litellm.integrations.custom_logger import CustomLogger


class NoopCallback(CustomLogger):  # type: ignore[misc]
    async def async_log_success_event(
        self, kwargs: dict[str, Any], response_obj: Any, start_time: Any, end_time: Any
    ) -> None:
        return None


noop_callback = NoopCallback()
