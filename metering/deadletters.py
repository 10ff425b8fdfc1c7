"""Dead letters: what a consumer could not parse or apply, kept verbatim with the reason.

Nothing accepted is lost: a consumer that meets a message it cannot use publishes this to
`metering.dlq.v1` (keyed by the original key) and moves on.
"""

from __future__ import annotations

import base64
from datetime import datetime

from aiokafka.structs import ConsumerRecord

from metering.publishing import Outgoing
from metering.topics import DLQ
from schemas.dlq import DeadLetter


def dead_letter(record: ConsumerRecord[bytes, bytes], reason: str, now: datetime) -> Outgoing:
    """The DLQ message for one consumed record."""
    key = record.key.decode(errors="replace") if record.key is not None else None
    letter = DeadLetter(
        schema_version=1,
        original_key=key,
        original_value_base64=base64.b64encode(record.value or b"").decode(),
        reason=reason,
        source_topic=record.topic,
        source_partition=record.partition,
        source_offset=record.offset,
        failed_at=now,
    )
    return Outgoing(DLQ, key or "", letter.model_dump_json().encode())
