"""The message on ``metering.dlq.v1``: what could not be parsed or applied, kept verbatim."""

from typing import Annotated, Literal

from pydantic import AwareDatetime, StringConstraints

from schemas.base import Contract, Count, Identifier


class DeadLetter(Contract):
    schema_version: Literal[1]
    original_key: str | None
    """The original message key as text (an account id), if it had one."""
    original_value_base64: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9+/]*={0,2}$")]
    reason: str
    source_topic: Identifier
    source_partition: Count
    source_offset: Count
    failed_at: AwareDatetime
