"""The worker that publishes seat statuses changed by time alone, between facts."""

from __future__ import annotations

import logging
import time

from metering.loops import BackgroundLoop, wait_for_event
from quota.projection import QuotaProjection

log = logging.getLogger(__name__)


class SeatStatusTimer(BackgroundLoop):
    """Every `interval` seconds, asks the projection for the statuses time changed."""

    name = "seat status timer"

    def __init__(
        self, projection: QuotaProjection, interval: float, forget_every: float = 600.0
    ) -> None:
        super().__init__()
        self._projection = projection
        self._interval = interval
        self._forget_every = forget_every
        self._forget_at = time.monotonic() + forget_every

    async def run(self) -> None:
        while not self.stopping.is_set():
            try:
                published = await self._projection.publish_time_changes()
                if published:
                    log.info("seat statuses changed by time", extra={"count": published})
                if time.monotonic() >= self._forget_at:
                    self._forget_at = time.monotonic() + self._forget_every
                    forgotten = await self._projection.forget_request_ids()
                    if forgotten:
                        log.info("request ids forgotten", extra={"count": forgotten})
            except Exception:
                log.exception("seat status timer failed; retrying")
            await wait_for_event(self.stopping, self._interval)
