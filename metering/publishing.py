"""Publishing envelopes with the broker's acknowledgement, or a clear failure.

Used where "accepted" must mean "durable": ingest answers 2xx only after this returns, and
the outboxes delete their rows only then. All sends of a call go out together and are
awaited together, so a batch costs one round of acknowledgements, not one per message.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

from aiokafka.errors import KafkaError
from faststream.kafka import KafkaBroker

#: How long a caller waits for the broker before telling its own caller to retry.
ACK_TIMEOUT_SECONDS = 5.0


class BrokerUnavailable(RuntimeError):
    """The broker did not acknowledge in time; nothing may be reported as accepted."""


@dataclass(frozen=True)
class Outgoing:
    """One message: topic, partitioning key, JSON value."""

    topic: str
    key: str
    value: bytes


async def publish_all(
    broker: KafkaBroker, messages: Sequence[Outgoing], within: float = ACK_TIMEOUT_SECONDS
) -> None:
    """Send every message (acks=all, set on the broker) and wait for every acknowledgement."""
    if not messages:
        return
    try:
        async with asyncio.timeout(within):
            pending = [
                await broker.publish(
                    m.value,
                    m.topic,
                    key=m.key.encode(),
                    headers={"content-type": "application/json"},
                    no_confirm=True,
                )
                for m in messages
            ]
            await asyncio.gather(*pending)
    except (TimeoutError, KafkaError) as error:
        raise BrokerUnavailable(f"the broker did not acknowledge: {error!r}") from error
