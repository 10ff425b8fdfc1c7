"""Payloads the ledger derives: ``metering.ledger.v1`` and ``metering.seat-status.v1``.

The small records inside a deduction (components, receipt lines, usage copy) are plain
JSON objects (TypedDicts): the fold builds one per deduction and they must stay cheap.
"""

from typing import Literal

from pydantic import AwareDatetime, ConfigDict, with_config
from typing_extensions import TypedDict

from schemas.base import Contract, Count, Identifier, Micro, Tier, ToolCalls

_RECORD = ConfigDict(extra="forbid", strict=True)

ComponentName = Literal["input", "cached", "output", "thinking", "tools", "images"]
SeatStatus = Literal["active", "suspended"]
SeatStatusReason = Literal[
    "seat_added",
    "quota_exhausted",
    "pack_purchased",
    "tier_upgraded",
    "month_rolled_over",
    "seat_removed",
    "subscription_not_started",
    "subscription_cancelled",
    "subscription_expired",
]
RejectionReason = Literal[
    "account_has_active_subscription",
    "duplicate_subscription",
    "unknown_subscription",
    "subscription_inactive",
    "subscription_already_cancelled",
    "duplicate_seat",
    "unknown_seat",
    "seat_inactive",
    "duplicate_key",
    "unknown_key",
    "key_not_for_seat",
    "key_revoked",
    "duplicate_pack",
    "duplicate_request_id",
    "unknown_model",
    "no_rate_card_in_force",
    "unpriceable_usage",
    "apply_failed",
]


@with_config(_RECORD)
class PriceComponent(TypedDict):
    """One priced part of a request; ``credits_micro`` is already rounded."""

    name: ComponentName
    quantity: Count
    credits_micro: Micro


@with_config(_RECORD)
class ReceiptLine(TypedDict):
    """How much one bucket paid: a seat month (``seat-1:2026-01``) or a pack (its id)."""

    bucket: Literal["seat", "pack"]
    bucket_id: Identifier
    amount_micro: Micro


@with_config(_RECORD)
class UsageSummary(TypedDict):
    """The usage that was priced, copied for the usage-details view."""

    input_tokens: Count
    cached_tokens: Count
    output_tokens: Count
    thinking: bool
    tool_calls: ToolCalls
    images: Count
    client: Identifier | None


class CreditsDeducted(Contract):
    """A priced usage and the buckets that paid for it: sum(receipt) + shortfall == price."""

    request_id: Identifier
    usage_event_id: Identifier
    subscription_id: Identifier
    seat_id: Identifier
    key_id: Identifier
    model: Identifier
    tier: Tier
    price_micro: Micro
    components: list[PriceComponent]
    rate_card_version: Identifier
    coefficient: str
    receipt: list[ReceiptLine]
    shortfall_micro: Micro
    seat_remaining_micro: Micro
    """Left in the seat month the usage drew from, after this deduction."""
    shared_remaining_micro: Micro
    """Left in the subscription's packs valid at the usage time, after this deduction."""
    seat_month_start: AwareDatetime
    seat_month_end: AwareDatetime
    usage: UsageSummary


class PackExpired(Contract):
    subscription_id: Identifier
    pack_id: Identifier
    expired_at: AwareDatetime
    unused_micro: Micro


class FactRejected(Contract):
    """A well-formed fact that does not fit the account's state; nothing was changed."""

    rejected_event_id: Identifier
    rejected_event_type: Identifier
    reason: RejectionReason
    detail: str


class SeatStatusChanged(Contract):
    subscription_id: Identifier
    seat_id: Identifier
    status: SeatStatus
    reason: SeatStatusReason
    resets_at: AwareDatetime | None
    """When the seat quota refills, for a seat suspended because its credits ran out."""
    at: AwareDatetime
    """The account time (latest fact time seen) at which the change was noticed."""
