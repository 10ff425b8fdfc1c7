"""Request and response bodies of the HTTP APIs (contract.md). Credits are decimal strings."""

from typing import Annotated, Literal

from pydantic import Field, StringConstraints

from schemas.base import Contract, Count, EventId, Identifier, Tier, Timestamp, ToolCalls
from schemas.results import ComponentName, SeatStatus, SeatStatusReason

Credits = Annotated[
    str,
    StringConstraints(pattern=r"^\d+(\.\d{1,6})?$"),
    Field(description="credits as a decimal string with at most 6 decimals", examples=["3.18"]),
]
MAX_BATCH = 1_000


# -- ingest ------------------------------------------------------------------------------


class UsageReport(Contract):
    """One model call, reported by the gateway. ``request_id`` is unique per account."""

    request_id: Identifier
    account_id: Identifier
    subscription_id: Identifier
    seat_id: Identifier
    key_id: Identifier
    model: Identifier
    occurred_at: Timestamp
    """When the model call happened (RFC 3339 with a zone)."""
    input_tokens: Count = 0
    cached_tokens: Count = 0
    output_tokens: Count = 0
    thinking: bool = False
    tool_calls: ToolCalls = Field(default_factory=dict)
    images: Count = 0
    client: Identifier | None = None
    """The tool that made the call, if known."""


class UsageAccepted(Contract):
    event_id: EventId
    duplicate: bool = False
    """True when the same report was already accepted: nothing is counted twice."""


class UsageBatchRequest(Contract):
    reports: Annotated[list[UsageReport], Field(min_length=1, max_length=MAX_BATCH)]


class FieldProblem(Contract):
    field: str
    """Dotted path of the bad field, e.g. ``reports.3.input_tokens``."""
    message: str


class Problem(Contract):
    """An ``application/problem+json`` error body (RFC 9457)."""

    type: str = "about:blank"
    title: str
    status: int
    detail: str | None = None
    instance: str | None = None
    errors: list[FieldProblem] = Field(default_factory=list)


class UsageBatchItem(Contract):
    status: Literal["accepted", "duplicate", "conflict", "invalid"]
    event_id: EventId | None = None
    problem: Problem | None = None


class UsageBatchResponse(Contract):
    results: list[UsageBatchItem]
    """One per report, in the order of the request."""


class SubscriptionCreate(Contract):
    account_id: Identifier
    subscription_id: Identifier
    started_at: Timestamp
    expires_at: Timestamp | None = None


class SeatCreate(Contract):
    seat_id: Identifier
    tier: Tier
    member: Identifier


class SeatUpdate(Contract):
    tier: Tier


class PackPurchase(Contract):
    pack_id: Identifier
    purchased_at: Timestamp


class SubscriptionCancel(Contract):
    at: Timestamp


class FactAccepted(Contract):
    """A plan fact was appended to the event log under this id."""

    event_id: EventId


class ApiKeyCreated(Contract):
    event_id: EventId
    key_id: Identifier
    api_key: str
    """The secret, shown this once; only its hash is kept."""


# -- quota -------------------------------------------------------------------------------


class AuthorizeRequest(Contract):
    model: Identifier
    endpoint: Literal["openai", "anthropic"] | None = None
    input_tokens: Count | None = None


class Remaining(Contract):
    seat: Credits
    shared: Credits
    total: Credits


class AuthorizeAllowed(Contract):
    allowed: Literal[True]
    account_id: Identifier
    subscription_id: Identifier
    seat_id: Identifier
    key_id: Identifier
    remaining: Remaining


class AuthorizeDenied(Contract):
    allowed: Literal[False]
    code: Literal[
        "missing_api_key",
        "invalid_api_key",
        "wrong_plan",
        "model_not_supported",
        "image_model_on_text_endpoint",
        "input_length_out_of_range",
        "seat_suspended",
    ]
    message: str
    """The product's documented error text (design.md §5)."""
    resets_at: Timestamp | None = None
    """For a suspended seat: when its quota refills."""


class SeatBalance(Contract):
    subscription_id: Identifier
    seat_id: Identifier
    member: Identifier
    status: SeatStatus
    reason: SeatStatusReason | None
    tier: Tier
    quota: Credits
    used: Credits
    remaining: Credits
    shared_remaining: Credits
    resets_at: Timestamp | None


class PackBalance(Contract):
    pack_id: Identifier
    purchased_at: Timestamp
    expires_at: Timestamp
    remaining: Credits


class SubscriptionOverview(Contract):
    subscription_id: Identifier
    status: Literal["active", "not_started", "cancelled", "expired"]
    utilization_percent: Annotated[str, StringConstraints(pattern=r"^\d+(\.\d{1,2})?$")]
    quota: Credits
    used: Credits
    remaining: Credits
    month_start: Timestamp
    month_end: Timestamp
    seats: list[SeatBalance]
    packs: list[PackBalance]


# -- ledger ------------------------------------------------------------------------------


class QuoteRequest(Contract):
    model: Identifier
    input_tokens: Count = 0
    cached_tokens: Count = 0
    output_tokens: Count = 0
    thinking: bool = False
    tool_calls: ToolCalls = Field(default_factory=dict)
    images: Count = 0
    at: Timestamp | None = None
    """Price under the rate card in force at this time (default: now)."""


class QuoteComponent(Contract):
    name: ComponentName
    quantity: Count
    credits: Credits


class QuoteResponse(Contract):
    model: Identifier
    at: Timestamp
    credits: Credits
    components: list[QuoteComponent]
    rate_card_version: Identifier
    coefficient: str


API_MODELS: tuple[type[Contract], ...] = (
    UsageReport,
    UsageAccepted,
    UsageBatchRequest,
    UsageBatchResponse,
    Problem,
    SubscriptionCreate,
    SeatCreate,
    SeatUpdate,
    PackPurchase,
    SubscriptionCancel,
    FactAccepted,
    ApiKeyCreated,
    AuthorizeRequest,
    AuthorizeAllowed,
    AuthorizeDenied,
    SeatBalance,
    SubscriptionOverview,
    QuoteRequest,
    QuoteResponse,
)
"""Every top-level HTTP body, for the generated JSON Schema."""
