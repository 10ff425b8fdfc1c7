"""Background loops of a service (relays, timers): start, stop, readiness and pauses.

A loop is a service `Worker`: started after the pool and the broker, stopped before them;
it is ready while its task runs. Pauses end early when the service stops.
"""

from __future__ import annotations

import asyncio
import contextlib
from abc import ABC, abstractmethod


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


class BackgroundLoop(ABC):
    """Runs `run()` as a task until `stop()`; subclasses check `self.stopping` between rounds."""

    name = "background loop"

    def __init__(self) -> None:
        self.stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @abstractmethod
    async def run(self) -> None:
        """The loop; it must return soon after `self.stopping` is set."""

    async def start(self) -> None:
        self._task = asyncio.create_task(self.run(), name=self.name)

    async def stop(self) -> None:
        self.stopping.set()
        if self._task is not None:
            await self._task

    def ready(self) -> bool:
        return self._task is not None and not self._task.done()
