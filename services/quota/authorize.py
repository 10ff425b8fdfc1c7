"""The gateway's question, answered as a pure function: may this key call this model now?

Every refusal carries the product's documented status and message (design.md §5). The
balances and statuses come from the pure core's views evaluated lazily at `now`, so a month
that rolled over or a pack that expired counts even before any event says so.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from metering.apikeys import TOKEN_PLAN_PREFIX
from metering.core.money import to_decimal_string
from metering.core.ratecard import NoRateCardInForce, RateCard
from metering.core.views import SeatView, seat_view
from quota.accounts import AccountIndex, KeyHolder
from schemas.api import AuthorizeAllowed, AuthorizeDenied, AuthorizeRequest, Remaining

NO_KEY = "InvalidApiKey: No API-key provided."
INVALID_KEY = "InvalidApiKey: Invalid API-key provided."
WRONG_PLAN = "invalid access token or token expired"
KEY_FAILURES = frozenset({"missing_api_key", "invalid_api_key", "wrong_plan"})
"""Codes that count against a client's failed-key allowance."""


@dataclass(frozen=True, slots=True)
class Decision:
    status: int
    body: AuthorizeAllowed | AuthorizeDenied

    @property
    def code(self) -> str:
        return "allowed" if isinstance(self.body, AuthorizeAllowed) else self.body.code

    @property
    def key_failed(self) -> bool:
        return self.code in KEY_FAILURES


def presented_key(authorization: str | None) -> str | None:
    """The API key of an `Authorization: Bearer <key>` header (a bare key is taken as is)."""
    if not authorization or not authorization.strip():
        return None
    scheme, _, rest = authorization.strip().partition(" ")
    key = rest.strip() if scheme.lower() == "bearer" else authorization.strip()
    return key or None


def authorize(
    index: AccountIndex,
    api_key: str | None,
    hash_key: Callable[[str], str],
    request: AuthorizeRequest,
    now: datetime,
    card: RateCard,
) -> Decision:
    """The decision for `api_key` (None: none presented) asking for `request` at `now`."""
    holder = key_holder(index, api_key, hash_key, now)
    if isinstance(holder, Decision):
        return holder
    return decide(holder, request, now, card)


def key_holder(
    index: AccountIndex,
    api_key: str | None,
    hash_key: Callable[[str], str],
    now: datetime,
) -> KeyHolder | Decision:
    """The holder of a valid `api_key`, or the 401 decision: what can be answered before
    the request's body is read."""
    if api_key is None:
        return _denied(401, "missing_api_key", NO_KEY)
    if not api_key.startswith(TOKEN_PLAN_PREFIX):
        return _denied(401, "wrong_plan", WRONG_PLAN)
    holder = index.key(hash_key(api_key))
    if holder is None or _revoked(holder, now):
        return _denied(401, "invalid_api_key", INVALID_KEY)
    return holder


def decide(holder: KeyHolder, request: AuthorizeRequest, now: datetime, card: RateCard) -> Decision:
    """The decision for the holder of a valid key asking for `request` at `now`."""
    key = holder.key
    model_refused = _model_refusal(request, now, card)
    if model_refused is not None:
        return model_refused
    seat = seat_view(holder.state, key.seat_id, now)
    if seat is None:  # the fold never issues a key for a seat it does not have
        return _denied(401, "invalid_api_key", INVALID_KEY)
    if seat.status == "suspended":
        return _suspended(seat)
    remaining = Remaining.trusted(
        {
            "seat": to_decimal_string(seat.seat_remaining_micro),
            "shared": to_decimal_string(seat.shared_remaining_micro),
            "total": to_decimal_string(seat.remaining_micro),
        }
    )
    allowed = AuthorizeAllowed.trusted(
        {
            "allowed": True,
            "account_id": holder.account_id,
            "subscription_id": key.subscription_id,
            "seat_id": key.seat_id,
            "key_id": key.key_id,
            "remaining": remaining,
        }
    )
    return Decision(200, allowed)


def _revoked(holder: KeyHolder, now: datetime) -> bool:
    revoked_at = holder.key.revoked_at
    return revoked_at is not None and revoked_at <= now


def _model_refusal(request: AuthorizeRequest, now: datetime, card: RateCard) -> Decision | None:
    try:
        model = card.in_force(now).models.get(request.model)
    except NoRateCardInForce:
        model = None
    if model is None:
        return _denied(
            404, "model_not_supported", f"model '{request.model}' not found or not supported"
        )
    if model.modality == "image" and request.endpoint is not None:
        return _denied(
            400,
            "image_model_on_text_endpoint",
            f"model '{request.model}' is an image model: image models use separate APIs, "
            f"not the {request.endpoint}-compatible text endpoint",
        )
    length = request.input_tokens
    if length is not None and not 1 <= length <= model.context_window:
        return _denied(
            400,
            "input_length_out_of_range",
            f"Range of input length should be [1, {model.context_window}]",
        )
    return None


def _suspended(seat: SeatView) -> Decision:
    reason = seat.reason
    if reason == "quota_exhausted":
        message = (
            f"Quota exhausted: seat '{seat.seat_id}' has used its credits for this month and "
            "the subscription's shared quota packs are used up or expired. The seat quota "
            f"resets at {rfc3339(seat.month_end)}. To restore service sooner, upgrade the "
            "seat's tier or buy a shared quota pack."
        )
    elif reason in ("subscription_expired", "subscription_cancelled"):
        ended = "has expired" if reason == "subscription_expired" else "was cancelled"
        message = (
            f"Subscription '{seat.subscription_id}' {ended}: its seats are suspended. "
            "Renew the subscription to restore service."
        )
    elif reason == "subscription_not_started":
        message = f"Subscription '{seat.subscription_id}' has not started yet."
    else:
        message = f"Seat '{seat.seat_id}' was removed from its subscription."
    body = AuthorizeDenied.trusted(
        {
            "allowed": False,
            "code": "seat_suspended",
            "message": message,
            "resets_at": seat.resets_at if reason == "quota_exhausted" else None,
            "reason": reason,
        }
    )
    return Decision(403, body)


def _denied(status: int, code: str, message: str) -> Decision:
    body = AuthorizeDenied.trusted(
        {"allowed": False, "code": code, "message": message, "resets_at": None, "reason": None}
    )
    return Decision(status, body)


def rfc3339(t: datetime) -> str:
    """`2026-12-01T00:00:00Z`: how times are written in messages and bodies."""
    return t.astimezone(UTC).isoformat().replace("+00:00", "Z")
