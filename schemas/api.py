"""Request and response bodies of the HTTP APIs (contract.md). Credits are decimal strings."""

from typing import Annotated, Literal

from pydantic import Field, StringConstraints

from schemas.base import (
    Contract,
    Count,
    EventId,
    Identifier,
    SubscriptionTerm,
    Tier,
    Timestamp,
    ToolCalls,
    UsageCounts,
)
from schemas.results import ComponentName, SeatStatus, SeatStatusReason

Credits = Annotated[
    str,
    StringConstraints(pattern=r"^\d+(\.\d{1,6})?$"),
    Field(description="credits as a decimal string with at most 6 decimals", examples=["3.18"]),
]
MAX_BATCH = 1_000


# -- ingest ------------------------------------------------------------------------------


class UsageReport(UsageCounts):
    """One model call, reported by the gateway. ``request_id`` is unique per account."""

    request_id: Identifier
    account_id: Identifier
    subscription_id: Identifier
    seat_id: Identifier
    key_id: Identifier
    model: Identifier
    occurred_at: Timestamp
    """When the model call happened (RFC 3339 with a zone)."""
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
    code: str | None = None
    """Stable and machine-readable: why the field is refused."""


class Problem(Contract):
    """An ``application/problem+json`` error body (RFC 9457)."""

    type: str = "about:blank"
    title: str
    status: int
    detail: str | None = None
    code: str | None = None
    """Stable and machine-readable (snake case): what a client branches on, never the text."""
    instance: str | None = None
    errors: list[FieldProblem] = Field(default_factory=list)


class UsageBatchItem(Contract):
    status: Literal["accepted", "duplicate", "conflict", "invalid"]
    event_id: EventId | None = None
    problem: Problem | None = None


class UsageBatchResponse(Contract):
    results: list[UsageBatchItem]
    """One per report, in the order of the request."""


class SubscriptionCreate(SubscriptionTerm):
    account_id: Identifier
    subscription_id: Identifier


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
        "too_many_failed_keys",
    ]
    message: str
    """The product's documented error text (design.md §5)."""
    resets_at: Timestamp | None = None
    """For a suspended seat: when its quota refills."""
    reason: SeatStatusReason | None = None
    """For a suspended seat: why (quota exhausted, subscription expired or cancelled, ...)."""


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
    used: Credits
    remaining: Credits
    expires_in_seconds: Count
    """Countdown to ``expires_at`` from the time of the answer."""


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


class QuoteRequest(UsageCounts):
    model: Identifier
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


class PaidFrom(Contract):
    """One bucket's share of a deduction."""

    product: Literal["seat_quota", "shared_pack"]
    bucket_id: Identifier
    """The seat month (``seat-1:2026-05``) or the pack id."""
    credits: Credits


class UsageRow(Contract):
    """One deduction (one model request): its usage, its price and what paid for it."""

    deducted_at: Timestamp
    """When the request happened (the usage's time decides its seat month and packs)."""
    request_id: Identifier
    event_id: EventId
    """Id of the ``CreditsDeducted`` result on metering.ledger.v1."""
    seat_id: Identifier
    key_id: Identifier
    model: Identifier
    tier: Tier
    input_tokens: Count
    cached_tokens: Count
    output_tokens: Count
    thinking: bool
    images: Count
    tool_calls: ToolCalls
    coefficient: str
    rate_card_version: Identifier
    credits: Credits
    """The request's price; ``sum(paid_from) + shortfall``."""
    paid_from: list[PaidFrom]
    shortfall: Credits
    """What no bucket covered (the last request before suspension may overshoot)."""


class UsagePage(Contract):
    rows: list[UsageRow]
    """Newest first."""
    next_cursor: str | None
    """Pass as ``cursor`` for the next (older) page; null on the last page."""


class UsageTotals(Contract):
    """The sums over every row a usage filter selects (all its pages), computed by the
    ledger where the rows are: what a person totals from the usage details."""

    requests: Count
    """Deductions (model requests)."""
    credits: Credits
    """Their price: ``seat_quota + shared_packs + shortfall``."""
    seat_quota: Credits
    """Paid from seat quotas."""
    shared_packs: Credits
    """Paid from shared packs."""
    shortfall: Credits
    """What no bucket covered."""
    input_tokens: Count
    cached_tokens: Count
    output_tokens: Count
    images: Count


class Balances(Contract):
    seat: Credits
    shared: Credits
    total: Credits


class StatementSeat(Contract):
    seat_id: Identifier
    member: Identifier
    tier: Tier
    """The seat's tier for this month."""
    quota: Credits
    opening: Credits
    added: Credits
    """The quota of a seat added during the month."""
    used: Credits
    """Drawn from the seat quota."""
    forfeited: Credits
    """Left when the seat was removed during the month."""
    closing: Credits
    shared_used: Credits
    """Drawn from the shared packs by this seat's requests."""
    shortfall: Credits
    requests: Count


class StatementModel(Contract):
    model: Identifier
    requests: Count
    credits: Credits
    """Sum of the requests' prices (buckets and shortfall)."""
    shortfall: Credits


class StatementPack(Contract):
    pack_id: Identifier
    purchased_at: Timestamp
    expires_at: Timestamp
    opening: Credits
    added: Credits
    """625,000 for a pack bought during the month."""
    used: Credits
    expired: Credits
    """Unused when the pack expired during the month."""
    closing: Credits


class Statement(Contract):
    """One subscription month: ``closing = opening + added - deducted - expired``."""

    subscription_id: Identifier
    month: Annotated[str, StringConstraints(pattern=r"^\d{4}-\d{2}$")]
    """The subscription month that starts in this calendar month."""
    period_start: Timestamp
    period_end: Timestamp
    opening: Balances
    """Available at the period start."""
    added: Balances
    """Seats added and packs bought during the period."""
    deducted: Balances
    """Paid by the seat quotas and the packs."""
    expired: Balances
    """Packs that expired and seats removed during the period, with what they had left."""
    closing: Balances
    """Available just before the period ends (before seat quotas reset)."""
    shortfall: Credits
    requests: Count
    seats: list[StatementSeat]
    models: list[StatementModel]
    packs: list[StatementPack]


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
    UsagePage,
    UsageTotals,
    Statement,
)
"""Every top-level HTTP body, for the generated JSON Schema."""


# -- ledger: where did my fact go (GET /v1/events/{id}, GET .../requests/{request_id}) ----------


class FactEntry(Contract):
    """A ledger entry derived from the fact (a result on metering.ledger.v1)."""

    event_id: EventId
    event_type: Identifier
    """``CreditsDeducted``, ``PackExpired`` or ``FactRejected``."""
    occurred_at: Timestamp
    price: Credits | None = None
    """A deduction's price: ``sum(receipt) + shortfall`` (null for other entries)."""
    receipt: list[PaidFrom] | None = None
    """The buckets that paid for a deduction (null for other entries)."""
    shortfall: Credits | None = None
    """What no bucket covered (null for other entries)."""


class FactRejection(Contract):
    reason: Identifier
    """The ledger's reason (``FactRejected.reason``), e.g. ``unknown_key``."""
    detail: str


class FactStatus(Contract):
    """What became of one accepted fact: recorded by ingest, applied by the ledger, or rejected
    by the ledger's guard."""

    event_id: EventId
    event_type: Identifier | None
    """Null only for a fact ingest recorded whose envelope it no longer keeps, of a kind it
    cannot tell from its idempotency key."""
    account_id: Identifier
    status: Literal["accepted", "applied", "rejected"]
    """``accepted``: ingest recorded it, the ledger has not applied it yet; ``applied``: in the
    ledger; ``rejected``: the ledger recorded a ``FactRejected`` for it (see ``rejection``)."""
    recorded_at: Timestamp
    """When ingest recorded the fact (for a fact only ingest knows: when it stored it)."""
    request_id: Identifier | None = None
    """The usage report's ``request_id`` (usage only)."""
    entries: list[FactEntry]
    """Ledger entries derived from the fact, oldest first (empty until it is applied, and for
    facts that change a plan without an entry)."""
    rejection: FactRejection | None
    """Why the ledger rejected it (null unless ``status`` is ``rejected``)."""


API_MODELS = (*API_MODELS, FactStatus)
