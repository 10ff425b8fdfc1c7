"""The fold: one account's facts in, deductions, expiries, rejections and seat statuses out.

``apply(state, event, card)`` is deterministic: no I/O, no clock reads, no randomness. Time
comes in as data (design.md §4a):
- the account's clock, its "now", is the latest ``recorded_at`` seen: the server's clock
  when ingest accepted a fact. A time a client sent never moves it;
- a usage is charged as of ``t = min(occurred_at, recorded_at)`` (a gateway whose clock runs
  ahead is clamped to the recording time), and no earlier than its key's issue (a gateway
  whose clock runs behind, within the skew ingest allows): the seat month containing ``t``,
  then the packs valid at ``t``;
- scheduled plan facts (a later start, cancellation or expiry) take effect when the clock
  reaches them; statuses and pack forfeitures are noticed lazily at the first fact after
  they fall due (quota's timer publishes statuses between facts).
A well-formed fact that does not fit the state becomes a ``FactRejected`` result. ``apply``
never raises: a fact that fails in any other way (a bug, an absurd value) is rejected with
reason ``apply_failed`` and the account goes on (the guard; ingest refuses such facts first).
"""

from __future__ import annotations  # a nested function's annotations cost a typing `|` per call

import hashlib
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any, cast

from metering.core import seat_status
from metering.core.calendar import add_months
from metering.core.catalog import (
    MAX_PRICE_MICRO,
    PACK_CREDITS_MICRO,
    PACK_VALIDITY_MONTHS,
    REQUEST_ID_MEMORY,
    USAGE_LATENESS_LIMIT,
    is_upgrade,
)
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
    UsageRecordedFields,
)
from schemas.results import (
    CreditsDeducted,
    FactRejected,
    PackExpired,
    ReceiptLine,
    RejectionReason,
    SeatStatus,
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


def apply(
    state: AccountState, event: FactEvent, card: RateCard, *, deductions: bool = True
) -> list[ResultEvent]:
    """Apply one fact of the account to ``state`` in place and return its results, in order.

    ``apply`` owns ``state``: it mutates it and keeps no reference to the results. Take a
    ``state.snapshot()`` first if the caller may need to roll back. It never raises: see
    ``_guarded``.

    With ``deductions=False`` a usage's ``CreditsDeducted`` is not built: the state changes
    all the same and every other result keeps its id. Quota needs the state and the seat
    statuses only, and building the deduction was most of its fold (issue 17).
    """
    out = _Results(event, deductions)
    try:
        _apply(state, event, card, out)
    except _Rejected as rejection:
        out.rejected(rejection)
    except Exception as error:
        _guarded(out, error)
    return out.results


def _guarded(out: _Results, error: Exception) -> None:
    """The fact failed in a way no rule foresaw: it becomes a rejection with its reason.

    What time had already brought (the review before the fact, even one that failed midway:
    each of its results was emitted with its change) stands; what the fact itself produced is
    dropped. The rules check before they change, so such a failure leaves the account as it
    was; and being a pure function of the same state and fact, it fails the same way in the
    ledger, in quota and in a replay.
    """
    if out.fact_started is not None:
        kept, out.left_out = out.fact_started
        del out.results[kept:]
    detail = f"{type(error).__name__}: {error}"
    out.rejected(_Rejected("apply_failed", detail[:500]))


def _apply(state: AccountState, event: FactEvent, card: RateCard, out: _Results) -> None:
    recorded = event.recorded_at
    if (
        recorded.tzinfo is not UTC
    ):  # the state keeps UTC times: comparing like with like is 10x faster
        recorded = recorded.astimezone(UTC)
    if state.clock is None or recorded > state.clock:
        state.clock = recorded
        if state.forgetting and state.forgetting[0][0] <= recorded:
            state.forget_requests()
    if state.next_review is not None and state.clock >= state.next_review:
        _review(state, out, None)
    out.fact_started = (len(out.results), out.left_out)
    t = event.occurred_at
    if t.tzinfo is not UTC:
        t = t.astimezone(UTC)
    if recorded < t:  # the sender's clock ran ahead: nothing can happen after it is recorded
        t = recorded
    payload = event.payload
    if isinstance(payload, UsageRecorded):
        fields = cast("UsageRecordedFields", payload.__dict__)
        _record_usage(state, t, recorded, fields, card, out)
    else:
        _review(state, out, _apply_plan_fact(state, t, recorded, payload))


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
    return _derived_id(_id_prefix(event_id), index)


def _id_prefix(event_id: str) -> bytes:
    """What the sha1 of each id derived from ``event_id`` starts with."""
    return _NAMESPACE_BYTES + event_id.encode() + b"/"


def _derived_id(prefix: bytes, index: int) -> str:
    h = hashlib.sha1(prefix + str(index).encode()).hexdigest()
    return f"{h[:8]}-{h[8:12]}-5{h[13:16]}-{_UUID_VARIANT[h[16]]}{h[17:20]}-{h[20:32]}"


_NAMESPACE_BYTES = RESULT_NAMESPACE.bytes
_UUID_VARIANT = {f"{n:x}": f"{8 | (n & 3):x}" for n in range(16)}
"""The hex digit that carries the RFC 4122 variant bits, from the digest's digit."""


def was_rejected(results: list[ResultEvent]) -> bool:
    """Whether ``apply`` rejected the fact it returned ``results`` for: a rejection is always
    the last result (what time brought before the fact may precede it; nothing follows)."""
    return bool(results) and results[-1].event_type == "FactRejected"


class _Results:
    """The results of one fact, enveloped with derived ids and the fact's recorded_at."""

    __slots__ = ("deductions", "event", "fact_started", "id_prefix", "left_out", "results")

    def __init__(self, event: FactEvent, deductions: bool) -> None:
        self.event = event
        self.deductions = deductions
        self.results: list[ResultEvent] = []
        self.left_out = 0
        """Results not built (``deductions=False``): each keeps its place in the ids."""
        self.fact_started: tuple[int, int] | None = None
        """``(len(results), left_out)`` once time's results were in, before the fact's own."""
        self.id_prefix = b""
        """``_id_prefix`` of the fact's id, once a result needs it."""

    def emit(self, envelope: Any, payload: Contract, occurred_at: datetime) -> None:
        """Append ``envelope`` (one of the result envelope classes) around ``payload``."""
        event = self.event
        if not self.id_prefix:
            self.id_prefix = _id_prefix(event.event_id)
        self.results.append(
            envelope.trusted(
                {
                    "event_id": _derived_id(self.id_prefix, len(self.results) + self.left_out),
                    "event_type": type(payload).__name__,
                    "schema_version": SCHEMA_VERSION,
                    "occurred_at": occurred_at,
                    "recorded_at": event.recorded_at,
                    "account_id": event.account_id,
                    "payload": payload,
                }
            )
        )

    def rejected(self, rejection: _Rejected) -> None:
        payload = FactRejected.trusted(
            {
                "rejected_event_id": self.event.event_id,
                "rejected_event_type": self.event.event_type,
                "reason": rejection.reason,
                "detail": rejection.detail,
            }
        )
        self.emit(FactRejectedEvent, payload, self.event.occurred_at)


# -- usage -------------------------------------------------------------------------------


def _record_usage(
    state: AccountState,
    t: datetime,
    recorded: datetime,
    usage: UsageRecordedFields,
    card: RateCard,
    out: _Results,
) -> None:
    """Price the usage and draw it from the seat month of ``t``, then packs valid at ``t``."""
    sub, seat, t = _checked_usage(state, t, recorded, usage)
    try:
        model = card.in_force(t).models.get(usage["model"])
        if model is None:
            raise _Rejected("unknown_model", f"model '{usage['model']}' is not on the rate card")
        quote = price(model, usage)
    except NoRateCardInForce as error:
        raise _Rejected("no_rate_card_in_force", str(error)) from None
    except UnpriceableUsage as error:
        raise _Rejected("unpriceable_usage", str(error)) from None
    if quote.total_micro > MAX_PRICE_MICRO:
        raise _Rejected("unpriceable_usage", "the usage would cost more than any request may")
    remember_until = t + REQUEST_ID_MEMORY
    month, start, end = sub.month_at(t)
    tier = seat.tier_in(month)

    # Every check is done: from here on the fact changes the state.
    state.remember_request(usage["request_id"], remember_until)
    receipt: list[ReceiptLine] = []
    due = quote.total_micro
    seat_left = seat.remaining_in(month)
    if due and seat_left:
        paid = min(due, seat_left)
        seat.used_micro[month] = seat.used_micro.get(month, 0) + paid
        seat_left -= paid
        due -= paid
        bucket_id = f"{seat.seat_id}:{start.year}-{_TWO_DIGITS[start.month]}"
        receipt.append({"bucket": "seat", "bucket_id": bucket_id, "amount_micro": paid})
    due, shared_left, drained_pack = _draw_from_packs(sub, t, due, receipt)

    if not out.deductions:
        out.left_out += 1
    else:
        deducted = CreditsDeducted.trusted(
            {
                "request_id": usage["request_id"],
                "usage_event_id": out.event.event_id,
                "subscription_id": sub.subscription_id,
                "seat_id": seat.seat_id,
                "key_id": usage["key_id"],
                "model": usage["model"],
                "tier": tier,
                "price_micro": quote.total_micro,
                "components": quote.components,
                "rate_card_version": quote.rate_card_version,
                "coefficient": quote.coefficient,
                "receipt": receipt,
                "shortfall_micro": due,
                "seat_remaining_micro": seat_left,
                "shared_remaining_micro": shared_left,
                "seat_month_start": start,
                "seat_month_end": end,
                "usage": {
                    "input_tokens": usage["input_tokens"],
                    "cached_tokens": usage["cached_tokens"],
                    "output_tokens": usage["output_tokens"],
                    "thinking": usage["thinking"],
                    "tool_calls": usage["tool_calls"],
                    "images": usage["images"],
                    "client": usage["client"],
                },
            }
        )
        out.emit(CreditsDeductedEvent, deducted, t)

    clock = state.clock
    assert clock is not None
    plainly_active = seat.status == "active" and seat_left and start <= clock < end
    changed = not plainly_active and _publish_statuses(state, out, None, [(sub, seat)])
    if changed or drained_pack:  # a newly suspended seat needs a reset review; others may be out
        _review(state, out, None)


_TWO_DIGITS = tuple(f"{n:02d}" for n in range(13))
"""A month's number as a bucket id writes it: compiled, ``:02d`` was a ``str.format`` call and
6 % of a deduction's instructions (a year has four digits: times lie in 2000-2099)."""


def _draw_from_packs(
    sub: Subscription, t: datetime, due: int, receipt: list[ReceiptLine]
) -> tuple[int, int, bool]:
    """Draw ``due`` from the packs valid at ``t`` in deduction order (``Pack.order``, in which
    ``sub.packs`` is kept); return what is still due, what the valid packs have left, and
    whether one of them was drained by this draw."""
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
    state: AccountState, t: datetime, recorded: datetime, usage: UsageRecordedFields
) -> tuple[Subscription, Seat, datetime]:
    """The usage's subscription, seat and charging time, or why it cannot be charged."""
    if usage["request_id"] in state.request_ids:  # remembered while a duplicate may arrive
        raise _Rejected(
            "duplicate_request_id", f"request '{usage['request_id']}' was already deducted"
        )
    sub = _subscription(state, usage["subscription_id"])
    seat = _seat(sub, usage["seat_id"])
    key = state.keys.get(usage["key_id"])
    if key is None:
        raise _Rejected("unknown_key", f"API key '{usage['key_id']}' is not known")
    if key.seat_id != seat.seat_id or key.subscription_id != sub.subscription_id:
        raise _Rejected(
            "key_not_for_seat", f"API key '{key.key_id}' belongs to seat '{key.seat_id}'"
        )
    if t < key.issued_at:  # the gateway's clock runs behind ours (ingest bounds by how much)
        t = min(key.issued_at, recorded)  # but nothing happens after it is recorded
    if key.revoked_at is not None and key.revoked_at <= t:
        raise _Rejected(
            "key_revoked", f"API key '{key.key_id}' was revoked at {key.revoked_at.isoformat()}"
        )
    _require_active(sub, t)
    if not seat.active_at(t):
        raise _Rejected("seat_inactive", f"seat '{seat.seat_id}' is not active at {t.isoformat()}")
    return sub, seat, t


# -- plan facts --------------------------------------------------------------------------


def _apply_plan_fact(
    state: AccountState, t: datetime, recorded: datetime, fact: object
) -> _Resume | None:
    """Change the state for one plan fact (validated first, so a rejection changes nothing).

    ``t`` is when the fact happened (never after ``recorded``, when it was recorded).
    """
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
            at = _seat_time(sub, t)
            if not seat.active_at(at):
                raise _Rejected("seat_inactive", f"seat '{seat.seat_id}' was already removed")
            seat.removed_at = at
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
            _buy_pack(state, fact, recorded)
            return "pack_purchased", None
    return None


def _activate(state: AccountState, fact: SubscriptionActivated) -> None:
    """A subscription, possibly scheduled to start later; renewals may follow an end."""
    if fact.subscription_id in state.subscriptions:
        raise _Rejected(
            "duplicate_subscription", f"subscription '{fact.subscription_id}' already exists"
        )
    started_at = fact.started_at.astimezone(UTC)
    expires_at = None if fact.expires_at is None else fact.expires_at.astimezone(UTC)
    for other in state.subscriptions.values():
        if _overlap(other.started_at, other.ends_at, started_at, expires_at):
            raise _Rejected(
                "account_has_active_subscription",
                f"the account already has subscription '{other.subscription_id}' active then",
            )
    state.subscriptions[fact.subscription_id] = Subscription(
        subscription_id=fact.subscription_id, started_at=started_at, expires_at=expires_at
    )


def _overlap(
    start: datetime, end: datetime | None, other_start: datetime, other_end: datetime | None
) -> bool:
    """Whether [start, end) and [other_start, other_end) share an instant (None: no end)."""
    if end is not None and end <= start:
        return False
    return (other_end is None or start < other_end) and (end is None or other_start < end)


def _cancel(state: AccountState, fact: SubscriptionCancelled) -> None:
    """A cancellation at its ``at``: now, or scheduled (it takes effect when the clock
    reaches it). ingest refuses one dated in the past."""
    sub = _subscription(state, fact.subscription_id)
    if sub.cancelled_at is not None:
        raise _Rejected(
            "subscription_already_cancelled",
            f"subscription '{sub.subscription_id}' was cancelled at {sub.cancelled_at.isoformat()}",
        )
    at = fact.at.astimezone(UTC)
    if sub.status_at(at) == "expired":
        raise _Rejected(
            "subscription_inactive", f"subscription '{sub.subscription_id}' had already expired"
        )
    sub.cancelled_at = at


def _seat_time(sub: Subscription, t: datetime) -> datetime:
    """When a seat or key change made at ``t`` takes effect: at once, or at the start of a
    subscription scheduled to start later."""
    return t if t >= sub.started_at else sub.started_at


def _add_seat(state: AccountState, t: datetime, fact: SeatAdded) -> None:
    """A seat, active from ``t`` or from its subscription's later start."""
    sub = _subscription(state, fact.subscription_id)
    at = _seat_time(sub, t)
    _require_active(sub, at)
    if state.find_seat(fact.seat_id) is not None:
        raise _Rejected("duplicate_seat", f"seat '{fact.seat_id}' already exists")
    month = sub.month_at(at)[0]
    sub.seats[fact.seat_id] = Seat(
        seat_id=fact.seat_id, member=fact.member, added_at=at, tiers=[(month, fact.tier)]
    )


def _change_tier(state: AccountState, t: datetime, fact: SeatTierChanged) -> _Resume | None:
    """An upgrade applies to the month containing ``t``; anything else from the next month."""
    sub = _subscription(state, fact.subscription_id)
    at = _seat_time(sub, t)
    seat = _active_seat(sub, fact.seat_id, at)
    month = sub.month_at(at)[0]
    upgrade = is_upgrade(seat.tier_in(month), fact.tier)
    first = month if upgrade else month + 1
    seat.tiers = [entry for entry in seat.tiers if entry[0] < first]
    if not seat.tiers or seat.tiers[-1][1] != fact.tier:
        seat.tiers.append((first, fact.tier))
    return ("tier_upgraded", seat.seat_id) if upgrade else None


def _issue_key(state: AccountState, t: datetime, fact: ApiKeyIssued) -> None:
    sub = _subscription(state, fact.subscription_id)
    at = _seat_time(sub, t)
    seat = _active_seat(sub, fact.seat_id, at)
    if fact.key_id in state.keys:
        raise _Rejected("duplicate_key", f"API key '{fact.key_id}' already exists")
    state.keys[fact.key_id] = ApiKey(
        key_id=fact.key_id,
        subscription_id=sub.subscription_id,
        seat_id=seat.seat_id,
        key_hash=fact.key_hash,
        issued_at=at,
    )


def _buy_pack(state: AccountState, fact: SharedPackPurchased, recorded: datetime) -> None:
    """A pack valid for a month from its purchase (never later than it was recorded), for a
    subscription active then."""
    sub = _subscription(state, fact.subscription_id)
    purchased_at = fact.purchased_at.astimezone(UTC)
    if recorded < purchased_at:
        purchased_at = recorded
    _require_active(sub, purchased_at)
    if any(p.pack_id == fact.pack_id for s in state.subscriptions.values() for p in s.packs):
        raise _Rejected("duplicate_pack", f"pack '{fact.pack_id}' was already purchased")
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
    """Make final the forfeiture of packs whose lateness allowance has passed, publish every
    seat's status at the clock, and set when to look again."""
    clock = state.clock
    assert clock is not None
    due: list[datetime] = []
    for _, sub in sorted(state.subscriptions.items()):
        for pack in sub.packs:
            if pack.expired:
                continue
            final = pack.expires_at + USAGE_LATENESS_LIMIT
            if final <= clock:
                pack.expired = True
                expired = PackExpired.trusted(
                    {
                        "subscription_id": sub.subscription_id,
                        "pack_id": pack.pack_id,
                        "expired_at": pack.expires_at,
                        "unused_micro": pack.remaining_micro,
                    }
                )
                out.emit(PackExpiredEvent, expired, pack.expires_at)
            else:
                due.append(final)
    _publish_statuses(state, out, resume, None)
    following = seat_status.next_change(state, clock)
    if following is not None:
        due.append(following)
    state.next_review = min(due, default=None)


def _publish_statuses(
    state: AccountState,
    out: _Results,
    resume: _Resume | None,
    seats: list[tuple[Subscription, Seat]] | None,
) -> bool:
    """Emit ``SeatStatusChanged`` for the seats (all by default) whose status at the clock
    differs from the one last published; whether any did."""
    clock = state.clock
    assert clock is not None

    def hint(seat_id: str) -> SeatStatusReason | None:
        return resume[0] if resume is not None and resume[1] in (None, seat_id) else None

    changes = seat_status.changes(
        state, _last_published, clock, hint, None if seats is None else iter(seats)
    )
    for change in changes:
        seat = state.subscriptions[change.subscription_id].seats[change.seat_id]
        seat.status = change.status
        seat.status_reason = change.reason
        out.emit(SeatStatusChangedEvent, change, clock)
    return bool(changes)


def _last_published(seat: Seat) -> tuple[SeatStatus, SeatStatusReason] | None:
    """The status the fold last published for the seat (kept in the state)."""
    if seat.status is None:
        return None
    return seat.status, seat.status_reason or "seat_added"
