"""The fold: one account's facts in, deductions, expiries, rejections and seat statuses out.

``apply(state, event, card)`` is deterministic: no I/O, no clock reads, no randomness. Time
comes in as data: the usage's ``occurred_at`` selects its seat month and packs, and the
account's clock (the latest ``occurred_at`` or ``recorded_at`` seen: a late report still
proves that its recording time has come) is "now" for statuses and expiries, which are
noticed lazily at the first fact after they fall due. A well-formed fact that does not
fit the state becomes a ``FactRejected`` result and changes nothing; ``apply`` never raises
for a valid envelope.
"""

import hashlib
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from metering.core.calendar import add_months
from metering.core.catalog import PACK_CREDITS_MICRO, PACK_VALIDITY_MONTHS, is_upgrade
from metering.core.pricing import UnpriceableUsage, price
from metering.core.ratecard import NoRateCardInForce, RateCard
from metering.core.state import AccountState, ApiKey, Pack, Seat, Subscription
from schemas.base import SCHEMA_VERSION, Contract
from schemas.envelope import (
    CreditsDeductedEvent,
    FactEvent,
    FactRejectedEvent,
    PackExpiredEvent,
    ResultEvent,
    SeatStatusChangedEvent,
)
from schemas.facts import (
    ApiKeyIssued,
    ApiKeyRevoked,
    SeatAdded,
    SeatRemoved,
    SeatTierChanged,
    SharedPackPurchased,
    SubscriptionActivated,
    SubscriptionCancelled,
    UsageRecorded,
)
from schemas.results import (
    CreditsDeducted,
    FactRejected,
    PackExpired,
    ReceiptLine,
    RejectionReason,
    SeatStatusChanged,
    SeatStatusReason,
)

RESULT_NAMESPACE = uuid.UUID("5d6f3c1e-8a2b-4f0e-9c3d-7b1a2e4f6a80")
"""Namespace of the uuid5 ids of results: ``uuid5(RESULT_NAMESPACE, f"{event_id}/{index}")``."""

_Resume = tuple[SeatStatusReason, str | None]
"""Why a suspended seat may resume after a plan fact, and which seat (None: every seat)."""


class _Rejected(Exception):
    def __init__(self, reason: RejectionReason, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def apply(state: AccountState, event: FactEvent, card: RateCard) -> list[ResultEvent]:
    """Apply one fact of the account to ``state`` in place and return its results, in order.

    ``apply`` owns ``state``: it mutates it and keeps no reference to the results. Take a
    ``state.snapshot()`` first if the caller may need to roll back.
    """
    out = _Results(event)
    t = event.occurred_at
    if t.tzinfo is not UTC:  # the state keeps UTC times: comparing like with like is 10x faster
        t = t.astimezone(UTC)
    recorded = event.recorded_at
    if recorded.tzinfo is not UTC:
        recorded = recorded.astimezone(UTC)
    known = recorded if recorded > t else t  # a late fact still proves its recording time came
    if state.clock is None or known > state.clock:
        state.clock = known
    if state.next_review is not None and state.clock >= state.next_review:
        _review(state, out, None)
    payload = event.payload
    try:
        if isinstance(payload, UsageRecorded):
            _record_usage(state, t, payload, card, out)
        else:
            _review(state, out, _apply_plan_fact(state, t, payload))
    except _Rejected as rejection:
        out.rejected(rejection)
    return out.results


def fold(
    events: Iterable[FactEvent], card: RateCard, state: AccountState | None = None
) -> tuple[AccountState, list[ResultEvent]]:
    """Replay one account's facts, in order, into ``state`` (a fresh one by default)."""
    state = AccountState() if state is None else state
    results: list[ResultEvent] = []
    for event in events:
        results.extend(apply(state, event, card))
    return state, results


def derived_event_id(event_id: str, index: int) -> str:
    """``str(uuid5(RESULT_NAMESPACE, f"{event_id}/{index}"))``, without the UUID object."""
    h = hashlib.sha1(_NAMESPACE_BYTES + f"{event_id}/{index}".encode()).hexdigest()
    return f"{h[:8]}-{h[8:12]}-5{h[13:16]}-{_UUID_VARIANT[h[16]]}{h[17:20]}-{h[20:32]}"


_NAMESPACE_BYTES = RESULT_NAMESPACE.bytes
_UUID_VARIANT = {f"{n:x}": f"{8 | (n & 3):x}" for n in range(16)}
"""The hex digit that carries the RFC 4122 variant bits, from the digest's digit."""


class _Results:
    """The results of one fact, enveloped with derived ids and the fact's recorded_at."""

    __slots__ = ("event", "results")

    def __init__(self, event: FactEvent) -> None:
        self.event = event
        self.results: list[ResultEvent] = []

    def emit(self, envelope: Any, payload: Contract, occurred_at: datetime) -> None:
        """Append ``envelope`` (one of the result envelope classes) around ``payload``."""
        event = self.event
        self.results.append(
            envelope.trusted(
                event_id=derived_event_id(event.event_id, len(self.results)),
                event_type=type(payload).__name__,
                schema_version=SCHEMA_VERSION,
                occurred_at=occurred_at,
                recorded_at=event.recorded_at,
                account_id=event.account_id,
                payload=payload,
            )
        )

    def rejected(self, rejection: _Rejected) -> None:
        payload = FactRejected.trusted(
            rejected_event_id=self.event.event_id,
            rejected_event_type=self.event.event_type,
            reason=rejection.reason,
            detail=rejection.detail,
        )
        self.emit(FactRejectedEvent, payload, self.event.occurred_at)


# -- usage -------------------------------------------------------------------------------


def _record_usage(
    state: AccountState, t: datetime, usage: UsageRecorded, card: RateCard, out: _Results
) -> None:
    """Price the usage and draw it from the seat month of ``t``, then packs valid at ``t``."""
    sub, seat = _checked_usage(state, t, usage)
    try:
        model = card.in_force(t).models.get(usage.model)
        if model is None:
            raise _Rejected("unknown_model", f"model '{usage.model}' is not on the rate card")
        quote = price(model, usage)
    except NoRateCardInForce as error:
        raise _Rejected("no_rate_card_in_force", str(error)) from None
    except UnpriceableUsage as error:
        raise _Rejected("unpriceable_usage", str(error)) from None

    state.request_ids.add(usage.request_id)
    month, start, end = sub.month_at(t)
    receipt: list[ReceiptLine] = []
    due = quote.total_micro
    seat_left = seat.remaining_in(month)
    if due and seat_left:
        paid = min(due, seat_left)
        seat.used_micro[month] = seat.used_micro.get(month, 0) + paid
        seat_left -= paid
        due -= paid
        bucket_id = f"{seat.seat_id}:{start.year:04d}-{start.month:02d}"
        receipt.append({"bucket": "seat", "bucket_id": bucket_id, "amount_micro": paid})
    due, shared_left, drained_pack = _draw_from_packs(sub, t, due, receipt)

    deducted = CreditsDeducted.trusted(
        request_id=usage.request_id,
        usage_event_id=out.event.event_id,
        subscription_id=sub.subscription_id,
        seat_id=seat.seat_id,
        key_id=usage.key_id,
        model=usage.model,
        tier=seat.tier_in(month),
        price_micro=quote.total_micro,
        components=quote.components,
        rate_card_version=quote.rate_card_version,
        coefficient=quote.coefficient,
        receipt=receipt,
        shortfall_micro=due,
        seat_remaining_micro=seat_left,
        shared_remaining_micro=shared_left,
        seat_month_start=start,
        seat_month_end=end,
        usage={
            "input_tokens": usage.input_tokens,
            "cached_tokens": usage.cached_tokens,
            "output_tokens": usage.output_tokens,
            "thinking": usage.thinking,
            "tool_calls": usage.tool_calls,
            "images": usage.images,
            "client": usage.client,
        },
    )
    out.emit(CreditsDeductedEvent, deducted, t)

    clock = state.clock
    assert clock is not None
    plainly_active = seat.status == "active" and seat_left and start <= clock < end
    changed = not plainly_active and _publish_status(state, sub, seat, out, None)
    if changed or drained_pack:  # a newly suspended seat needs a reset review; others may be out
        _review(state, out, None)


def _draw_from_packs(
    sub: Subscription, t: datetime, due: int, receipt: list[ReceiptLine]
) -> tuple[int, int, bool]:
    """Draw ``due`` from the packs valid at ``t`` in order; return what is still due, what
    the valid packs have left, and whether one of them was drained by this draw."""
    shared_left = 0
    drained = False
    for pack in sub.packs:
        if pack.expired or not pack.purchased_at <= t < pack.expires_at:  # Pack.valid_at
            continue
        left = PACK_CREDITS_MICRO - pack.used_micro
        if due and left:
            paid = min(due, left)
            pack.used_micro += paid
            left -= paid
            due -= paid
            drained = drained or not left
            receipt.append({"bucket": "pack", "bucket_id": pack.pack_id, "amount_micro": paid})
        shared_left += left
    return due, shared_left, drained


def _checked_usage(
    state: AccountState, t: datetime, usage: UsageRecorded
) -> tuple[Subscription, Seat]:
    if usage.request_id in state.request_ids:
        raise _Rejected(
            "duplicate_request_id", f"request '{usage.request_id}' was already deducted"
        )
    sub = _subscription(state, usage.subscription_id)
    seat = _seat(sub, usage.seat_id)
    key = state.keys.get(usage.key_id)
    if key is None:
        raise _Rejected("unknown_key", f"API key '{usage.key_id}' is not known")
    if key.seat_id != seat.seat_id or key.subscription_id != sub.subscription_id:
        raise _Rejected(
            "key_not_for_seat", f"API key '{key.key_id}' belongs to seat '{key.seat_id}'"
        )
    if key.revoked_at is not None and key.revoked_at <= t:
        raise _Rejected(
            "key_revoked", f"API key '{key.key_id}' was revoked at {key.revoked_at.isoformat()}"
        )
    _require_active(sub, t)
    if not seat.active_at(t):
        raise _Rejected("seat_inactive", f"seat '{seat.seat_id}' is not active at {t.isoformat()}")
    return sub, seat


# -- plan facts --------------------------------------------------------------------------


def _apply_plan_fact(state: AccountState, t: datetime, fact: object) -> _Resume | None:
    """Change the state for one plan fact (validated first, so a rejection changes nothing)."""
    match fact:
        case SubscriptionActivated():
            _activate(state, fact)
        case SubscriptionCancelled():
            _cancel(state, fact)
        case SeatAdded():
            _add_seat(state, t, fact)
        case SeatTierChanged():
            return _change_tier(state, t, fact)
        case SeatRemoved():
            sub = _subscription(state, fact.subscription_id)
            seat = _seat(sub, fact.seat_id)
            if not seat.active_at(t):
                raise _Rejected("seat_inactive", f"seat '{seat.seat_id}' was already removed")
            seat.removed_at = t
        case ApiKeyIssued():
            _issue_key(state, t, fact)
        case ApiKeyRevoked():
            key = state.keys.get(fact.key_id)
            if key is None:
                raise _Rejected("unknown_key", f"API key '{fact.key_id}' is not known")
            if key.revoked_at is not None:
                raise _Rejected("key_revoked", f"API key '{fact.key_id}' was already revoked")
            key.revoked_at = t
        case SharedPackPurchased():
            _buy_pack(state, fact)
            return "pack_purchased", None
    return None


def _activate(state: AccountState, fact: SubscriptionActivated) -> None:
    if fact.subscription_id in state.subscriptions:
        raise _Rejected(
            "duplicate_subscription", f"subscription '{fact.subscription_id}' already exists"
        )
    for other in state.subscriptions.values():
        if _overlap(other.started_at, other.ends_at, fact.started_at, fact.expires_at):
            raise _Rejected(
                "account_has_active_subscription",
                f"the account already has subscription '{other.subscription_id}' active then",
            )
    state.subscriptions[fact.subscription_id] = Subscription(
        subscription_id=fact.subscription_id,
        started_at=fact.started_at.astimezone(UTC),
        expires_at=None if fact.expires_at is None else fact.expires_at.astimezone(UTC),
    )


def _overlap(
    start: datetime, end: datetime | None, other_start: datetime, other_end: datetime | None
) -> bool:
    """Whether [start, end) and [other_start, other_end) share an instant (None: no end)."""
    if end is not None and end <= start:
        return False
    return (other_end is None or start < other_end) and (end is None or other_start < end)


def _cancel(state: AccountState, fact: SubscriptionCancelled) -> None:
    sub = _subscription(state, fact.subscription_id)
    if sub.cancelled_at is not None:
        raise _Rejected(
            "subscription_already_cancelled",
            f"subscription '{sub.subscription_id}' was cancelled at {sub.cancelled_at.isoformat()}",
        )
    if sub.status_at(fact.at) == "expired":
        raise _Rejected(
            "subscription_inactive", f"subscription '{sub.subscription_id}' had already expired"
        )
    sub.cancelled_at = fact.at.astimezone(UTC)


def _add_seat(state: AccountState, t: datetime, fact: SeatAdded) -> None:
    sub = _subscription(state, fact.subscription_id)
    _require_active(sub, t)
    if state.find_seat(fact.seat_id) is not None:
        raise _Rejected("duplicate_seat", f"seat '{fact.seat_id}' already exists")
    month = sub.month_at(t)[0]
    sub.seats[fact.seat_id] = Seat(
        seat_id=fact.seat_id, member=fact.member, added_at=t, tiers=[(month, fact.tier)]
    )


def _change_tier(state: AccountState, t: datetime, fact: SeatTierChanged) -> _Resume | None:
    """An upgrade applies to the month containing ``t``; anything else from the next month."""
    sub = _subscription(state, fact.subscription_id)
    seat = _active_seat(sub, fact.seat_id, t)
    month = sub.month_at(t)[0]
    upgrade = is_upgrade(seat.tier_in(month), fact.tier)
    first = month if upgrade else month + 1
    seat.tiers = [entry for entry in seat.tiers if entry[0] < first]
    if not seat.tiers or seat.tiers[-1][1] != fact.tier:
        seat.tiers.append((first, fact.tier))
    return ("tier_upgraded", seat.seat_id) if upgrade else None


def _issue_key(state: AccountState, t: datetime, fact: ApiKeyIssued) -> None:
    sub = _subscription(state, fact.subscription_id)
    seat = _active_seat(sub, fact.seat_id, t)
    if fact.key_id in state.keys:
        raise _Rejected("duplicate_key", f"API key '{fact.key_id}' already exists")
    state.keys[fact.key_id] = ApiKey(
        key_id=fact.key_id,
        subscription_id=sub.subscription_id,
        seat_id=seat.seat_id,
        key_hash=fact.key_hash,
        issued_at=t,
    )


def _buy_pack(state: AccountState, fact: SharedPackPurchased) -> None:
    sub = _subscription(state, fact.subscription_id)
    _require_active(sub, fact.purchased_at)
    if any(p.pack_id == fact.pack_id for s in state.subscriptions.values() for p in s.packs):
        raise _Rejected("duplicate_pack", f"pack '{fact.pack_id}' was already purchased")
    purchased_at = fact.purchased_at.astimezone(UTC)
    expires_at = add_months(purchased_at, PACK_VALIDITY_MONTHS)
    sub.add_pack(Pack(pack_id=fact.pack_id, purchased_at=purchased_at, expires_at=expires_at))


def _subscription(state: AccountState, subscription_id: str) -> Subscription:
    sub = state.subscriptions.get(subscription_id)
    if sub is None:
        raise _Rejected("unknown_subscription", f"subscription '{subscription_id}' is not known")
    return sub


def _seat(sub: Subscription, seat_id: str) -> Seat:
    seat = sub.seats.get(seat_id)
    if seat is None:
        raise _Rejected(
            "unknown_seat", f"seat '{seat_id}' is not in subscription '{sub.subscription_id}'"
        )
    return seat


def _active_seat(sub: Subscription, seat_id: str, t: datetime) -> Seat:
    seat = _seat(sub, seat_id)
    _require_active(sub, t)
    if not seat.active_at(t):
        raise _Rejected("seat_inactive", f"seat '{seat_id}' is not active at {t.isoformat()}")
    return seat


def _require_active(sub: Subscription, t: datetime) -> None:
    status = sub.status_at(t)
    if status != "active":
        raise _Rejected(
            "subscription_inactive",
            f"subscription '{sub.subscription_id}' is {status.replace('_', ' ')} "
            f"at {t.isoformat()}",
        )


# -- what time and plan changes do to packs and seats ------------------------------------


def _review(state: AccountState, out: _Results, resume: _Resume | None) -> None:
    """Expire due packs, publish every seat's status at the clock, and set the next review."""
    clock = state.clock
    assert clock is not None
    due: list[datetime] = []
    for _, sub in sorted(state.subscriptions.items()):
        for pack in sub.packs:
            if pack.expired:
                continue
            if pack.expires_at <= clock:
                pack.expired = True
                expired = PackExpired.trusted(
                    subscription_id=sub.subscription_id,
                    pack_id=pack.pack_id,
                    expired_at=pack.expires_at,
                    unused_micro=pack.remaining_micro,
                )
                out.emit(PackExpiredEvent, expired, pack.expires_at)
            else:
                due.append(pack.purchased_at if clock < pack.purchased_at else pack.expires_at)
        due.extend(t for t in (sub.cancelled_at, sub.expires_at) if t is not None and t > clock)
        for seat_id, seat in sorted(sub.seats.items()):
            reason = resume[0] if resume and resume[1] in (None, seat_id) else None
            _publish_status(state, sub, seat, out, reason)
            if seat.status == "suspended" and seat.removed_at is None and sub.active_at(clock):
                due.append(sub.month_at(clock)[2])  # its quota resets
    state.next_review = min(due, default=None)


def _publish_status(
    state: AccountState,
    sub: Subscription,
    seat: Seat,
    out: _Results,
    resume: SeatStatusReason | None,
) -> bool:
    """Emit ``SeatStatusChanged`` if the seat's status at the clock differs from the last one."""
    clock = state.clock
    assert clock is not None
    status, reason, resets_at = sub.seat_status(seat, clock)
    if status == seat.status:
        return False
    if reason is None:
        reason = "seat_added" if seat.status is None else resume or "month_rolled_over"
    seat.status = status
    changed = SeatStatusChanged.trusted(
        subscription_id=sub.subscription_id,
        seat_id=seat.seat_id,
        status=status,
        reason=reason,
        resets_at=resets_at,
        at=clock,
    )
    out.emit(SeatStatusChangedEvent, changed, clock)
    return True
