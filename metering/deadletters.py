"""Dead letters: what a consumer could not parse or apply, kept verbatim with the reason.

Nothing accepted is lost: a consumer that meets a message it cannot use publishes this to
`metering.dlq.v1` (keyed by the original key) and moves on.
"""

from __future__ import annotations

import base64
from datetime import datetime

from aiokafka.structs import ConsumerRecord

from metering.publishing import Outgoing
from schemas.dlq import DeadLetter

#: Longer reasons (a validation error listing every field) are cut to keep letters small.
MAX_REASON_CHARS = 2000


def dead_letter(
    record: ConsumerRecord[bytes, bytes], reason: str, now: datetime, topic: str
) -> Outgoing:
    """The message for dead-letter `topic` about one consumed record."""
    key = record.key.decode(errors="replace") if record.key is not None else None
    letter = DeadLetter(
        schema_version=1,
        original_key=key,
        original_value_base64=base64.b64encode(record.value or b"").decode(),
        reason=reason[:MAX_REASON_CHARS],
        source_topic=record.topic,
        source_partition=record.partition,
        source_offset=record.offset,
        failed_at=now,
    )
    return Outgoing(topic, key or "", letter.model_dump_json().encode())
