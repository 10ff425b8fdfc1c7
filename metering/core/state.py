"""The per-account state the fold keeps, and the questions it answers about a point in time.

Everything time-dependent is evaluated lazily at a given instant: a seat month that has
rolled over has its fresh quota, a pack past its expiry counts zero. The state is plain
mutable slots dataclasses (the fold mutates it in place for speed); ``snapshot()`` copies
it for rollback and ``to_dict()``/``from_dict()`` persist it as JSON-able data.
"""

import copy
from bisect import insort
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from heapq import heappop, heappush
from typing import Any, Literal

from metering.core.calendar import month_bounds, month_index_containing
from metering.core.catalog import PACK_CREDITS_MICRO, TIER_QUOTA_MICRO
from schemas.base import Tier
from schemas.results import SeatStatus, SeatStatusReason

STATE_FORMAT = 1
"""Version of the ``to_dict`` layout."""

SubscriptionStatus = Literal["active", "not_started", "cancelled", "expired"]


@dataclass(slots=True)
class Pack:
    pack_id: str
    purchased_at: datetime
    expires_at: datetime
    used_micro: int = 0
    expired: bool = False
    """Its forfeiture is final and reported (``USAGE_LATENESS_LIMIT`` after its expiry): what
    was unused is gone for good, and no late report draws on it any more."""

    def valid_at(self, t: datetime) -> bool:
        return not self.expired and self.purchased_at <= t < self.expires_at

    @property
    def remaining_micro(self) -> int:
        return PACK_CREDITS_MICRO - self.used_micro

    def order(self) -> tuple[datetime, datetime, str]:
        """Deduction order: soonest expiry, then earliest purchase, then pack id."""
        return self.expires_at, self.purchased_at, self.pack_id


@dataclass(slots=True)
class Seat:
    seat_id: str
    member: str
    added_at: datetime
    tiers: list[tuple[int, Tier]]
    """``(first month index, tier)`` ascending: the tier of each subscription month."""
    used_micro: dict[int, int] = field(default_factory=dict)
    """Credits drawn from the seat quota, by subscription month index."""
    removed_at: datetime | None = None
    status: SeatStatus | None = None
    """The status last published for the seat."""
    status_reason: SeatStatusReason | None = None
    """The reason published with it."""

    def tier_in(self, month: int) -> Tier:
        for first, tier in reversed(self.tiers):
            if first <= month:
                return tier
        return self.tiers[0][1]

    def remaining_in(self, month: int) -> int:
        return max(0, TIER_QUOTA_MICRO[self.tier_in(month)] - self.used_micro.get(month, 0))

    def active_at(self, t: datetime) -> bool:
        return self.added_at <= t and (self.removed_at is None or t < self.removed_at)


@dataclass(slots=True)
class Subscription:
    subscription_id: str
    started_at: datetime
    expires_at: datetime | None
    cancelled_at: datetime | None = None
    seats: dict[str, Seat] = field(default_factory=dict)
    packs: list[Pack] = field(default_factory=list)
    """Kept in deduction order (``Pack.order``)."""
    _month: tuple[int, datetime, datetime] = field(
        default=(0, datetime.max.replace(tzinfo=UTC), datetime.min.replace(tzinfo=UTC)),
        compare=False,
        repr=False,
    )
    """Cache of the last month looked up; not part of the state's value."""

    @property
    def ends_at(self) -> datetime | None:
        if self.cancelled_at is None or self.expires_at is None:
            return self.cancelled_at or self.expires_at
        return min(self.cancelled_at, self.expires_at)

    def status_at(self, t: datetime) -> SubscriptionStatus:
        if t < self.started_at:
            return "not_started"
        ends_at = self.ends_at
        if ends_at is None or t < ends_at:
            return "active"
        return "cancelled" if ends_at == self.cancelled_at else "expired"

    def active_at(self, t: datetime) -> bool:
        ends_at = self.ends_at
        return self.started_at <= t and (ends_at is None or t < ends_at)

    def month_at(self, t: datetime) -> tuple[int, datetime, datetime]:
        """Index, start and end of the subscription month containing ``t``."""
        month = self._month
        if not month[1] <= t < month[2]:
            index = month_index_containing(self.started_at, t)
            month = (index, *month_bounds(self.started_at, index))
            self._month = month
        return month

    def shared_remaining_at(self, t: datetime) -> int:
        return sum(p.remaining_micro for p in self.packs if p.valid_at(t))

    def add_pack(self, pack: Pack) -> None:
        insort(self.packs, pack, key=Pack.order)


@dataclass(slots=True)
class ApiKey:
    key_id: str
    subscription_id: str
    seat_id: str
    key_hash: str
    issued_at: datetime
    revoked_at: datetime | None = None


@dataclass(slots=True)
class AccountState:
    """Everything the fold knows about one account."""

    subscriptions: dict[str, Subscription] = field(default_factory=dict)
    keys: dict[str, ApiKey] = field(default_factory=dict)
    request_ids: dict[str, datetime] = field(default_factory=dict)
    """Request ids already deducted, each with the instant until which a second charge of
    it is refused (``REQUEST_ID_MEMORY`` after its usage's time); pruned once past."""
    clock: datetime | None = None
    """The latest ``recorded_at`` seen (the server's clock, never a client's): the account's
    notion of now."""
    next_review: datetime | None = None
    """The earliest time a pack forfeiture or a change of some seat's status is due."""
    forgetting: list[tuple[datetime, str]] = field(default_factory=list, compare=False, repr=False)
    """A heap of (remembered until, request id): the order in which to forget them."""

    def remember_request(self, request_id: str, until: datetime) -> None:
        """Remember a deducted request id until ``until`` (if that is still to come)."""
        if self.clock is not None and until <= self.clock:
            return
        self.request_ids[request_id] = until
        heappush(self.forgetting, (until, request_id))

    def forget_requests(self) -> None:
        """Forget the request ids remembered only until the clock or earlier: after it,
        ``request_ids`` holds exactly those a duplicate of which could still arrive."""
        clock = self.clock
        heap = self.forgetting
        if clock is None:
            return
        while heap and heap[0][0] <= clock:
            until, request_id = heappop(heap)
            if self.request_ids.get(request_id) == until:
                del self.request_ids[request_id]

    def find_seat(self, seat_id: str) -> tuple[Subscription, Seat] | None:
        for subscription in self.subscriptions.values():
            seat = subscription.seats.get(seat_id)
            if seat is not None:
                return subscription, seat
        return None

    def snapshot(self) -> "AccountState":
        """An independent copy, for adapters that may need to roll back."""
        return copy.deepcopy(self)

    def to_dict(
        self, *, with_request_ids: bool = True, times_as_text: bool = True
    ) -> dict[str, Any]:
        """A JSON-able dict; ``from_dict(to_dict(s)) == s``.

        Without request ids it is the part that changes in place, the one projections
        rewrite each batch; the ids only grow, so they store them apart, adding the new ones.
        With ``times_as_text=False`` the times stay ``datetime`` objects (UTC, as the fold
        keeps them) for an encoder that writes them as ``isoformat()`` would, in C (orjson):
        the projections write a snapshot per touched account per batch (issue 17).
        """
        time = _time if times_as_text else _utc
        data: dict[str, Any] = {
            "format": STATE_FORMAT,
            "clock": time(self.clock),
            "next_review": time(self.next_review),
            "keys": {key_id: _key_to_dict(key, time) for key_id, key in sorted(self.keys.items())},
            "subscriptions": {
                sub_id: _subscription_to_dict(sub, time)
                for sub_id, sub in sorted(self.subscriptions.items())
            },
        }
        if with_request_ids:
            data["request_ids"] = [
                [request_id, _time(until)] for request_id, until in sorted(self.request_ids.items())
            ]
        return data

    @classmethod
    def from_dict(
        cls, data: dict[str, Any], request_ids: Iterable[tuple[str, datetime]] = ()
    ) -> "AccountState":
        """The state `data` holds, with `request_ids` (id, remembered until) added to any it
        has, the earliest to forget first."""
        clock = _parse_time(data["clock"])
        remembered = [(r, _required_time(until)) for r, until in data.get("request_ids", ())]
        remembered.extend(request_ids)
        remembered.sort(key=lambda item: item[1])
        if clock is not None:
            remembered = [(r, until) for r, until in remembered if until > clock]
        if data.get("format") != STATE_FORMAT:
            raise ValueError(f"unsupported account state format {data.get('format')!r}")
        return cls(
            subscriptions={
                sub_id: _subscription_from_dict(sub_id, sub)
                for sub_id, sub in data["subscriptions"].items()
            },
            keys={key_id: _key_from_dict(key_id, key) for key_id, key in data["keys"].items()},
            request_ids=dict(remembered),
            forgetting=[(until, r) for r, until in remembered],
            clock=clock,
            next_review=_parse_time(data["next_review"]),
        )


def _time(value: datetime | None) -> str | None:
    return None if value is None else value.astimezone(UTC).isoformat()


def _utc(value: datetime | None) -> datetime | None:
    """The time itself, in UTC (a no-op for the times the fold keeps)."""
    if value is None or value.tzinfo is UTC:
        return value
    return value.astimezone(UTC)


_Time = Callable[[datetime | None], str | datetime | None]


def _parse_time(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


def _required_time(value: str) -> datetime:
    return datetime.fromisoformat(value)


def _key_to_dict(key: ApiKey, time: _Time) -> dict[str, Any]:
    return {
        "subscription_id": key.subscription_id,
        "seat_id": key.seat_id,
        "key_hash": key.key_hash,
        "issued_at": time(key.issued_at),
        "revoked_at": time(key.revoked_at),
    }


def _key_from_dict(key_id: str, data: dict[str, Any]) -> ApiKey:
    return ApiKey(
        key_id=key_id,
        subscription_id=data["subscription_id"],
        seat_id=data["seat_id"],
        key_hash=data["key_hash"],
        issued_at=_required_time(data["issued_at"]),
        revoked_at=_parse_time(data["revoked_at"]),
    )


def _subscription_to_dict(sub: Subscription, time: _Time) -> dict[str, Any]:
    return {
        "started_at": time(sub.started_at),
        "expires_at": time(sub.expires_at),
        "cancelled_at": time(sub.cancelled_at),
        "seats": {
            seat_id: _seat_to_dict(seat, time) for seat_id, seat in sorted(sub.seats.items())
        },
        "packs": [
            {
                "pack_id": pack.pack_id,
                "purchased_at": time(pack.purchased_at),
                "expires_at": time(pack.expires_at),
                "used_micro": pack.used_micro,
                "expired": pack.expired,
            }
            for pack in sub.packs
        ],
    }


def _subscription_from_dict(sub_id: str, data: dict[str, Any]) -> Subscription:
    return Subscription(
        subscription_id=sub_id,
        started_at=_required_time(data["started_at"]),
        expires_at=_parse_time(data["expires_at"]),
        cancelled_at=_parse_time(data["cancelled_at"]),
        seats={seat_id: _seat_from_dict(seat_id, seat) for seat_id, seat in data["seats"].items()},
        packs=[
            Pack(
                pack_id=pack["pack_id"],
                purchased_at=_required_time(pack["purchased_at"]),
                expires_at=_required_time(pack["expires_at"]),
                used_micro=pack["used_micro"],
                expired=pack["expired"],
            )
            for pack in data["packs"]
        ],
    )


def _seat_to_dict(seat: Seat, time: _Time) -> dict[str, Any]:
    return {
        "member": seat.member,
        "added_at": time(seat.added_at),
        "tiers": [[first, tier] for first, tier in seat.tiers],
        "used_micro": [[month, used] for month, used in sorted(seat.used_micro.items())],
        "removed_at": time(seat.removed_at),
        "status": seat.status,
        "status_reason": seat.status_reason,
    }


def _seat_from_dict(seat_id: str, data: dict[str, Any]) -> Seat:
    return Seat(
        seat_id=seat_id,
        member=data["member"],
        added_at=_required_time(data["added_at"]),
        tiers=[(first, tier) for first, tier in data["tiers"]],
        used_micro={month: used for month, used in data["used_micro"]},
        removed_at=_parse_time(data["removed_at"]),
        status=data["status"],
        status_reason=data.get("status_reason"),
    )
