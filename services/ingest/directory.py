"""ingest's plan registry: what it must know to decide at once whether a fact takes effect.

Each command function returns the registry change of one command, to run inside the
transaction that claims the command's fact: it raises `DirectoryError` (a 4xx with a stable
code) when the fact could not take effect, and returns the account the fact belongs to.
The times it stores are those the fold will judge by (design.md §4a): a seat or key of a
plan that starts later is usable from the start, a pack from its purchase (never later than
it was recorded), a cancellation from its `at`. `keys_of` serves usage reports.

The event log remains the source of truth; this registry mirrors the fold's rules so that
a 2xx is a promise (the fold's own rejections remain as a guard, counted and alerted on).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from metering.db import Connection
from schemas.api import SubscriptionCreate
from schemas.base import Tier

DirectoryChange = Callable[[Connection], Awaitable[str]]


class DirectoryError(Exception):
    """A command that cannot take effect, answered with a 4xx problem and a stable code."""

    def __init__(
        self, status: int, title: str, detail: str, code: str, field: str | None = None
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.title = title
        self.detail = detail
        self.code = code
        self.field = field


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """An API key as usage reports are judged against it: its seat and plan, and when each
    was usable."""

    key_id: str
    account_id: str
    subscription_id: str
    seat_id: str
    issued_at: datetime
    revoked_at: datetime | None
    seat_added_at: datetime
    seat_removed_at: datetime | None
    started_at: datetime
    ends_at: datetime | None


async def keys_of(conn: Connection, key_ids: Sequence[str]) -> dict[str, KeyRecord]:
    """The keys among `key_ids` the registry knows, with their seats and subscriptions."""
    rows = await conn.fetch(
        """
        SELECT k.key_id, k.account_id, k.subscription_id, k.seat_id, k.issued_at, k.revoked_at,
               s.added_at, s.removed_at, p.started_at,
               LEAST(p.cancelled_at, p.expires_at) AS ends_at
        FROM ingest_keys k
        JOIN ingest_seats s ON s.seat_id = k.seat_id
        JOIN ingest_subscriptions p ON p.subscription_id = k.subscription_id
        WHERE k.key_id = ANY($1::text[])
        """,
        list(set(key_ids)),
    )
    return {
        row["key_id"]: KeyRecord(
            key_id=row["key_id"],
            account_id=row["account_id"],
            subscription_id=row["subscription_id"],
            seat_id=row["seat_id"],
            issued_at=row["issued_at"],
            revoked_at=row["revoked_at"],
            seat_added_at=row["added_at"],
            seat_removed_at=row["removed_at"],
            started_at=row["started_at"],
            ends_at=row["ends_at"],
        )
        for row in rows
    }


# -- plan commands -----------------------------------------------------------------------


def open_subscription(body: SubscriptionCreate, now: datetime) -> DirectoryChange:
    """A subscription, possibly scheduled to start later; a renewal may start once every
    earlier plan of the account has ended (expired or cancelled) by its start."""

    async def change(conn: Connection) -> str:
        await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 7))", body.account_id)
        if await _subscription_account(conn, body.subscription_id) is not None:
            raise DirectoryError(
                409,
                "Subscription id taken",
                f"subscription '{body.subscription_id}' exists",
                "subscription_id_taken",
                "subscription_id",
            )
        overlapping = await conn.fetchval(
            "SELECT subscription_id FROM ingest_subscriptions WHERE account_id = $1 "
            "AND started_at < LEAST(cancelled_at, expires_at, 'infinity'::timestamptz) "
            "AND ($3::timestamptz IS NULL OR started_at < $3) "
            "AND (LEAST(cancelled_at, expires_at) IS NULL OR $2 < LEAST(cancelled_at, expires_at)) "
            "ORDER BY started_at LIMIT 1",
            body.account_id,
            body.started_at,
            body.expires_at,
        )
        if overlapping is not None:
            raise DirectoryError(
                409,
                "Account already subscribed",
                f"account '{body.account_id}' already has an active subscription "
                f"'{overlapping}'; an account holds at most one active Token Plan Team "
                "Edition subscription",
                "account_has_active_subscription",
                "started_at",
            )
        await conn.execute(
            "INSERT INTO ingest_subscriptions "
            "(subscription_id, account_id, started_at, expires_at) VALUES ($1, $2, $3, $4)",
            body.subscription_id,
            body.account_id,
            body.started_at,
            body.expires_at,
        )
        return body.account_id

    return change


def add_seat(subscription_id: str, seat_id: str, tier: Tier, now: datetime) -> DirectoryChange:
    """A seat, usable from now or from its subscription's later start."""

    async def change(conn: Connection) -> str:
        plan = await _open_plan(conn, subscription_id, now)
        holder = await conn.fetchval(
            "SELECT subscription_id FROM ingest_seats WHERE seat_id = $1", seat_id
        )
        if holder is not None:
            raise DirectoryError(
                409, "Seat id taken", f"seat '{seat_id}' already exists", "seat_id_taken", "seat_id"
            )
        await conn.execute(
            "INSERT INTO ingest_seats (seat_id, subscription_id, tier, added_at) "
            "VALUES ($1, $2, $3, $4)",
            seat_id,
            subscription_id,
            tier,
            max(now, plan.started_at),
        )
        return plan.account_id

    return change


def change_tier(subscription_id: str, seat_id: str, tier: Tier, now: datetime) -> DirectoryChange:
    async def change(conn: Connection) -> str:
        plan = await _open_plan(conn, subscription_id, now)
        await _usable_seat(conn, subscription_id, seat_id, max(now, plan.started_at))
        await conn.execute("UPDATE ingest_seats SET tier = $2 WHERE seat_id = $1", seat_id, tier)
        return plan.account_id

    return change


def remove_seat(subscription_id: str, seat_id: str, now: datetime) -> DirectoryChange:
    """A seat removed now (or, for a plan that starts later, at its start): its keys stop."""

    async def change(conn: Connection) -> str:
        plan = await _open_plan(conn, subscription_id, now)
        at = max(now, plan.started_at)
        await _usable_seat(conn, subscription_id, seat_id, at)
        await conn.execute(
            "UPDATE ingest_seats SET removed_at = $2 WHERE seat_id = $1", seat_id, at
        )
        return plan.account_id

    return change


def issue_key(
    subscription_id: str, seat_id: str, key_id: str, now: datetime, key_hash: str | None = None
) -> DirectoryChange:
    """A key, usable from now or from its subscription's later start; its keyed hash lets
    ledger and quota recognise its holder's own reads (metering/scopes.py)."""

    async def change(conn: Connection) -> str:
        plan = await _open_plan(conn, subscription_id, now)
        issued_at = max(now, plan.started_at)
        await _usable_seat(conn, subscription_id, seat_id, issued_at)
        await conn.execute(
            "INSERT INTO ingest_keys "
            "(key_id, account_id, subscription_id, seat_id, issued_at, key_hash) "
            "VALUES ($1, $2, $3, $4, $5, $6)",
            key_id,
            plan.account_id,
            subscription_id,
            seat_id,
            issued_at,
            key_hash,
        )
        return plan.account_id

    return change


def revoke_key(key_id: str, now: datetime) -> DirectoryChange:
    async def change(conn: Connection) -> str:
        row = await conn.fetchrow(
            "SELECT account_id, revoked_at FROM ingest_keys WHERE key_id = $1 FOR UPDATE", key_id
        )
        if row is None:
            raise DirectoryError(
                404, "Unknown API key", f"API key '{key_id}' does not exist", "unknown_key"
            )
        if row["revoked_at"] is None:
            await conn.execute(
                "UPDATE ingest_keys SET revoked_at = $2 WHERE key_id = $1", key_id, now
            )
        return str(row["account_id"])

    return change


def buy_pack(
    subscription_id: str, purchased_at: datetime, now: datetime, window: PurchaseWindow
) -> DirectoryChange:
    """A pack valid for a month from its purchase (never later than now), for a plan active
    then; a purchase dated ahead of the server's clock or too long ago is refused."""

    async def change(conn: Connection) -> str:
        window.check(purchased_at, now)
        start = min(purchased_at, now)
        plan = await _plan(conn, subscription_id)
        if start < plan.started_at:
            raise DirectoryError(
                409,
                "Subscription not started",
                f"subscription '{subscription_id}' starts at {plan.started_at.isoformat()}; "
                "a pack can only be bought for a subscription that has started",
                "subscription_not_started",
                "purchased_at",
            )
        if plan.ends_at is not None and plan.ends_at <= start:
            raise _ended(subscription_id, plan.ends_at, "purchased_at")
        return plan.account_id

    return change


def cancel_subscription(
    subscription_id: str, at: datetime, now: datetime, max_skew: timedelta
) -> DirectoryChange:
    """A cancellation now or scheduled for later; one dated in the past is refused (it
    would take back what was already charged)."""

    async def change(conn: Connection) -> str:
        if at < now - max_skew:
            raise DirectoryError(
                422,
                "Cancellation in the past",
                f"at ({at.isoformat()}) is before the server's clock ({now.isoformat()}); "
                "cancel now (send the current time) or at a later time",
                "cancellation_in_past",
                "at",
            )
        plan = await _plan(conn, subscription_id, lock=True)
        if plan.cancelled_at is not None:
            raise DirectoryError(
                409,
                "Subscription cancelled",
                f"subscription '{subscription_id}' is already cancelled at "
                f"{plan.cancelled_at.isoformat()}",
                "subscription_already_cancelled",
            )
        if plan.ends_at is not None and plan.ends_at <= max(at, now):
            raise _ended(subscription_id, plan.ends_at, "at")
        await conn.execute(
            "UPDATE ingest_subscriptions SET cancelled_at = $2 WHERE subscription_id = $1",
            subscription_id,
            at,
        )
        return plan.account_id

    return change


@dataclass(frozen=True)
class PurchaseWindow:
    """How far from the server's clock a pack's `purchased_at` may be."""

    max_future_skew: timedelta
    max_lateness: timedelta

    def check(self, purchased_at: datetime, now: datetime) -> None:
        if purchased_at > now + self.max_future_skew:
            raise DirectoryError(
                422,
                "Purchase in the future",
                f"purchased_at ({purchased_at.isoformat()}) is ahead of the server's clock "
                f"({now.isoformat()}); a purchase is recorded when it happens",
                "purchased_in_future",
                "purchased_at",
            )
        if purchased_at < now - self.max_lateness:
            raise DirectoryError(
                422,
                "Purchase too old",
                f"purchased_at ({purchased_at.isoformat()}) is older than the lateness bound",
                "purchased_too_late",
                "purchased_at",
            )


# -- lookups -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Plan:
    account_id: str
    started_at: datetime
    cancelled_at: datetime | None
    ends_at: datetime | None


async def _plan(conn: Connection, subscription_id: str, *, lock: bool = False) -> _Plan:
    row = await conn.fetchrow(
        "SELECT account_id, started_at, cancelled_at, LEAST(cancelled_at, expires_at) AS ends_at "
        "FROM ingest_subscriptions WHERE subscription_id = $1" + (" FOR UPDATE" if lock else ""),
        subscription_id,
    )
    if row is None:
        raise DirectoryError(
            404,
            "Unknown subscription",
            f"subscription '{subscription_id}' does not exist",
            "unknown_subscription",
        )
    return _Plan(str(row["account_id"]), row["started_at"], row["cancelled_at"], row["ends_at"])


async def _open_plan(conn: Connection, subscription_id: str, now: datetime) -> _Plan:
    """The subscription, refused if it has ended by now (a scheduled end is still ahead)."""
    plan = await _plan(conn, subscription_id)
    if plan.ends_at is not None and plan.ends_at <= max(now, plan.started_at):
        raise _ended(subscription_id, plan.ends_at, None)
    return plan


def _ended(subscription_id: str, ends_at: datetime, field: str | None) -> DirectoryError:
    return DirectoryError(
        409,
        "Subscription ended",
        f"subscription '{subscription_id}' ended at {ends_at.isoformat()}",
        "subscription_ended",
        field,
    )


async def _usable_seat(conn: Connection, subscription_id: str, seat_id: str, at: datetime) -> None:
    row = await conn.fetchrow(
        "SELECT subscription_id, removed_at FROM ingest_seats WHERE seat_id = $1 FOR UPDATE",
        seat_id,
    )
    if row is None or row["subscription_id"] != subscription_id:
        raise DirectoryError(
            404,
            "Unknown seat",
            f"seat '{seat_id}' is not a seat of subscription '{subscription_id}'",
            "unknown_seat",
        )
    if row["removed_at"] is not None and row["removed_at"] <= at:
        raise DirectoryError(
            409,
            "Seat removed",
            f"seat '{seat_id}' was removed at {row['removed_at'].isoformat()}",
            "seat_removed",
        )


async def _subscription_account(conn: Connection, subscription_id: str) -> str | None:
    account: str | None = await conn.fetchval(
        "SELECT account_id FROM ingest_subscriptions WHERE subscription_id = $1",
        subscription_id,
    )
    return account
