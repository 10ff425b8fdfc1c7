"""Payloads of the facts on ``metering.events.v1``: plan facts and usage.

A plan fact takes effect at its payload's explicit time (``started_at``, ``at``,
``purchased_at``) where it has one, otherwise at the envelope's ``occurred_at``.
"""

from typing import Annotated

from pydantic import AwareDatetime, StringConstraints

from schemas.base import (
    Contract,
    Count,
    Identifier,
    SubscriptionTerm,
    Tier,
    ToolCalls,
    UsageCountsFields,
)


class SubscriptionActivated(SubscriptionTerm):
    subscription_id: Identifier


class SubscriptionCancelled(Contract):
    subscription_id: Identifier
    at: AwareDatetime


class SeatAdded(Contract):
    subscription_id: Identifier
    seat_id: Identifier
    tier: Tier
    member: Identifier


class SeatTierChanged(Contract):
    subscription_id: Identifier
    seat_id: Identifier
    tier: Tier


class SeatRemoved(Contract):
    subscription_id: Identifier
    seat_id: Identifier


class ApiKeyIssued(Contract):
    subscription_id: Identifier
    seat_id: Identifier
    key_id: Identifier
    key_hash: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{32,128}$")]
    """Hex digest of the secret; the secret itself is never stored."""


class ApiKeyRevoked(Contract):
    key_id: Identifier


class SharedPackPurchased(Contract):
    subscription_id: Identifier
    pack_id: Identifier
    purchased_at: AwareDatetime


class UsageRecorded(Contract):
    """One model call. The envelope's ``occurred_at`` is when the call happened."""

    request_id: Identifier
    subscription_id: Identifier
    seat_id: Identifier
    key_id: Identifier
    model: Identifier
    input_tokens: Count
    cached_tokens: Count
    output_tokens: Count
    thinking: bool
    tool_calls: ToolCalls
    images: Count
    client: Identifier | None = None


class UsageRecordedFields(UsageCountsFields):
    """A ``UsageRecorded``'s ``__dict__``, its fields by name: for the fold, which reads most
    of them (see ``UsageCountsFields``). tests/unit/test_schemas.py checks it names exactly the
    model's fields."""

    request_id: str
    subscription_id: str
    seat_id: str
    key_id: str
    model: str
    client: str | None
