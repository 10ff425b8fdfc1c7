"""Running a projection (services/*/projection.py) over its store's in-memory twin, with the
consumer's commit and rollback (metering/consumer.py) played by hand."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Generic, Protocol, TypeVar

from aiokafka.structs import ConsumerRecord

from metering.consumer import Projection, Record
from schemas.envelope import FactEvent


def records(
    events: Sequence[FactEvent | bytes], partition: int = 0, first: int = 0
) -> list[Record]:
    """Consumer records of `events` (bytes as they are), from offset `first` on."""
    return [
        ConsumerRecord(
            "test.events",
            partition,
            first + offset,
            0,
            0,
            b"key",
            event if isinstance(event, bytes) else event.model_dump_json().encode(),
            None,
            3,
            0,
            (),
        )
        for offset, event in enumerate(events)
    ]


class Copyable(Protocol):
    def copy(self) -> Any: ...


S = TypeVar("S", bound=Copyable)
P = TypeVar("P", bound=Projection)


class Transactions(Generic[S, P]):
    """A projection over a memory store `store`; a batch's writes are undone on rollback."""

    store: S
    projection: P

    async def batch(self, batch: list[Record]) -> None:
        """Apply and commit, or roll the store and the projection back and raise."""
        before = self.store.copy()
        try:
            await self.projection.apply(None, batch)  # type: ignore[arg-type]
        except Exception:
            self.store = before
            self.projection.rolled_back()
            raise
        self.committing(batch)
        self.projection.committed()

    def committing(self, batch: list[Record]) -> None:
        """What the consumer writes with the batch (its offsets)."""

    async def rolled_back_batch(self, batch: list[Record]) -> None:
        """Apply, then fail to commit (as if the offsets' write failed)."""
        before = self.store.copy()
        await self.projection.apply(None, batch)  # type: ignore[arg-type]
        self.store = before
        self.projection.rolled_back()
