"""ingest's plan directory: just enough to answer commands with 404 and 409 at once.

Each function returns the directory change of one command, to run inside the transaction
that claims the command's fact; it raises `DirectoryError` when the command does not fit
and returns the account the fact belongs to. The event log remains the source of truth:
the ledger's fold decides what a fact does; this only spares callers silent rejections.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime

from ingest.intake import DirectoryError
from metering.db import Connection
from schemas.api import SubscriptionCreate
from schemas.base import Tier

DirectoryChange = Callable[[Connection], Awaitable[str]]


def open_subscription(body: SubscriptionCreate) -> DirectoryChange:
    async def change(conn: Connection) -> str:
        active = await conn.fetchval(
            "SELECT subscription_id FROM ingest_subscriptions "
            "WHERE account_id = $1 AND cancelled_at IS NULL",
            body.account_id,
        )
        if active is not None:
            raise DirectoryError(
                409,
                "Account already subscribed",
                f"account '{body.account_id}' already has an active subscription '{active}'; "
                "an account holds at most one active Token Plan Team Edition subscription",
            )
        if await _subscription_account(conn, body.subscription_id) is not None:
            raise DirectoryError(
                409, "Subscription id taken", f"subscription '{body.subscription_id}' exists"
            )
        await conn.execute(
            "INSERT INTO ingest_subscriptions (subscription_id, account_id, started_at) "
            "VALUES ($1, $2, $3)",
            body.subscription_id,
            body.account_id,
            body.started_at,
        )
        return body.account_id

    return change


def add_seat(subscription_id: str, seat_id: str, tier: Tier) -> DirectoryChange:
    async def change(conn: Connection) -> str:
        account_id = await _open_subscription_account(conn, subscription_id)
        holder = await conn.fetchval(
            "SELECT subscription_id FROM ingest_seats WHERE seat_id = $1", seat_id
        )
        if holder is not None:
            raise DirectoryError(409, "Seat id taken", f"seat '{seat_id}' already exists")
        await conn.execute(
            "INSERT INTO ingest_seats (seat_id, subscription_id, tier) VALUES ($1, $2, $3)",
            seat_id,
            subscription_id,
            tier,
        )
        return account_id

    return change


def change_tier(subscription_id: str, seat_id: str, tier: Tier) -> DirectoryChange:
    async def change(conn: Connection) -> str:
        account_id = await _seat_account(conn, subscription_id, seat_id)
        await conn.execute("UPDATE ingest_seats SET tier = $2 WHERE seat_id = $1", seat_id, tier)
        return account_id

    return change


def issue_key(subscription_id: str, seat_id: str, key_id: str) -> DirectoryChange:
    async def change(conn: Connection) -> str:
        account_id = await _seat_account(conn, subscription_id, seat_id)
        await _open_subscription_account(conn, subscription_id)
        await conn.execute(
            "INSERT INTO ingest_keys (key_id, account_id, subscription_id, seat_id) "
            "VALUES ($1, $2, $3, $4)",
            key_id,
            account_id,
            subscription_id,
            seat_id,
        )
        return account_id

    return change


def revoke_key(key_id: str, at: datetime) -> DirectoryChange:
    async def change(conn: Connection) -> str:
        row = await conn.fetchrow(
            "SELECT account_id, revoked_at FROM ingest_keys WHERE key_id = $1", key_id
        )
        if row is None:
            raise DirectoryError(404, "Unknown API key", f"API key '{key_id}' does not exist")
        if row["revoked_at"] is None:
            await conn.execute(
                "UPDATE ingest_keys SET revoked_at = $2 WHERE key_id = $1", key_id, at
            )
        return str(row["account_id"])

    return change


def buy_pack(subscription_id: str) -> DirectoryChange:
    async def change(conn: Connection) -> str:
        return await _open_subscription_account(conn, subscription_id)

    return change


def cancel_subscription(subscription_id: str, at: datetime) -> DirectoryChange:
    async def change(conn: Connection) -> str:
        account_id = await _open_subscription_account(conn, subscription_id)
        await conn.execute(
            "UPDATE ingest_subscriptions SET cancelled_at = $2 WHERE subscription_id = $1",
            subscription_id,
            at,
        )
        return account_id

    return change


async def _subscription_account(conn: Connection, subscription_id: str) -> str | None:
    account: str | None = await conn.fetchval(
        "SELECT account_id FROM ingest_subscriptions WHERE subscription_id = $1",
        subscription_id,
    )
    return account


async def _open_subscription_account(conn: Connection, subscription_id: str) -> str:
    row = await conn.fetchrow(
        "SELECT account_id, cancelled_at FROM ingest_subscriptions WHERE subscription_id = $1",
        subscription_id,
    )
    if row is None:
        raise DirectoryError(
            404, "Unknown subscription", f"subscription '{subscription_id}' does not exist"
        )
    if row["cancelled_at"] is not None:
        raise DirectoryError(
            409,
            "Subscription cancelled",
            f"subscription '{subscription_id}' was cancelled at {row['cancelled_at'].isoformat()}",
        )
    return str(row["account_id"])


async def _seat_account(conn: Connection, subscription_id: str, seat_id: str) -> str:
    account_id = await _subscription_account(conn, subscription_id)
    if account_id is None:
        raise DirectoryError(
            404, "Unknown subscription", f"subscription '{subscription_id}' does not exist"
        )
    holder = await conn.fetchval(
        "SELECT subscription_id FROM ingest_seats WHERE seat_id = $1", seat_id
    )
    if holder != subscription_id:
        raise DirectoryError(
            404,
            "Unknown seat",
            f"seat '{seat_id}' is not a seat of subscription '{subscription_id}'",
        )
    return account_id
