"""Pauses for background loops: doubling back-off after failures, cut short by a stop."""

from __future__ import annotations

import asyncio
import contextlib


async def wait_for_event(event: asyncio.Event, seconds: float) -> None:
    """Until `event` is set or `seconds` have passed, whichever comes first."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(event.wait(), seconds)


class Backoff:
    """Pauses of 0.5 s doubling up to `cap` seconds while failures repeat; `stopping` ends one."""

    def __init__(self, stopping: asyncio.Event, cap: float = 10.0) -> None:
        self._stopping = stopping
        self._cap = cap
        self._seconds = 0.0

    def reset(self) -> None:
        """A success: the next failure pauses briefly again."""
        self._seconds = 0.0

    async def pause(self) -> None:
        self._seconds = min(self._cap, max(0.5, self._seconds * 2))
        await wait_for_event(self._stopping, self._seconds)
