"""ingest's operator reads of the plan registry and team tokens (issue #18).

- `GET /v1/accounts/{account_id}/subscriptions`, `GET /v1/subscriptions/{id}/seats`,
  `GET /v1/subscriptions/{id}/seats/{seat_id}/keys`: lists from ingest's registry (a key's
  id and times, never its secret).
- `POST /v1/accounts/{account_id}/tokens`: a team token, which reads and exports that
  account's data only from ledger and quota (metering/scopes.py); shown once, kept as a keyed
  hash. `DELETE /v1/tokens/{token_id}` revokes it (within `scopes.CACHE_SECONDS`).

Every call needs the admin token. Team tokens are access, not facts: they are not events.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import datetime

import asyncpg
from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse, Response

from ingest.api import PROBLEMS, Id
from metering.apikeys import key_hash
from metering.http import bearer_guard, problem
from metering.scopes import new_team_token
from metering.settings import Settings
from schemas.base import Contract, Identifier, Tier, Timestamp


class TeamTokenCreate(Contract):
    expires_at: Timestamp | None = None
    """When the token stops working; none: until revoked."""


class TeamTokenCreated(Contract):
    token_id: str
    account_id: Identifier
    token: str
    """The secret (`tt-…`), shown this once: only its keyed hash is kept."""
    issued_at: Timestamp
    expires_at: Timestamp | None


class TeamTokenRevoked(Contract):
    token_id: str
    account_id: Identifier
    revoked_at: Timestamp


class SubscriptionEntry(Contract):
    subscription_id: Identifier
    account_id: Identifier
    started_at: Timestamp
    expires_at: Timestamp | None
    cancelled_at: Timestamp | None


class SubscriptionList(Contract):
    subscriptions: list[SubscriptionEntry]


class SeatEntry(Contract):
    seat_id: Identifier
    tier: Tier
    added_at: Timestamp
    removed_at: Timestamp | None


class SeatList(Contract):
    seats: list[SeatEntry]


class KeyEntry(Contract):
    key_id: Identifier
    issued_at: Timestamp
    revoked_at: Timestamp | None


class KeyList(Contract):
    keys: list[KeyEntry]


def access_router(
    settings: Settings,
    key_hash_secret: str,
    pool: Callable[[], asyncpg.Pool],
    clock: Callable[[], datetime],
) -> APIRouter:
    admin = Depends(bearer_guard(settings.tokens("metering_admin_token")))
    router = APIRouter(prefix="/v1", responses=PROBLEMS, dependencies=[admin])

    @router.get(
        "/accounts/{account_id}/subscriptions",
        tags=["plan"],
        summary="An account's subscriptions, oldest first",
        response_model=SubscriptionList,
    )
    async def get_account_subscriptions(account_id: Id) -> Response:
        async with pool().acquire() as conn:
            rows = await conn.fetch(
                "SELECT subscription_id, account_id, started_at, expires_at, cancelled_at "
                "FROM ingest_subscriptions WHERE account_id = $1 "
                "ORDER BY started_at, subscription_id",
                account_id,
            )
        if not rows:
            return _unknown_account(account_id)
        body = SubscriptionList(subscriptions=[SubscriptionEntry(**dict(r)) for r in rows])
        return _json(body)

    @router.get(
        "/subscriptions/{subscription_id}/seats",
        tags=["plan"],
        summary="A subscription's seats (removed ones too, with `removed_at`)",
        response_model=SeatList,
    )
    async def get_subscription_seats(subscription_id: Id) -> Response:
        async with pool().acquire() as conn:
            known = await conn.fetchval(
                "SELECT 1 FROM ingest_subscriptions WHERE subscription_id = $1", subscription_id
            )
            rows = await conn.fetch(
                "SELECT seat_id, tier, added_at, removed_at FROM ingest_seats "
                "WHERE subscription_id = $1 ORDER BY added_at, seat_id",
                subscription_id,
            )
        if not known:
            return problem(
                404,
                "Not found",
                f"no subscription has id '{subscription_id}'",
                code="unknown_subscription",
            )
        return _json(SeatList(seats=[SeatEntry(**dict(r)) for r in rows]))

    @router.get(
        "/subscriptions/{subscription_id}/seats/{seat_id}/keys",
        tags=["plan"],
        summary="A seat's API keys: ids and times, never the secret",
        response_model=KeyList,
    )
    async def get_seat_keys(subscription_id: Id, seat_id: Id) -> Response:
        async with pool().acquire() as conn:
            known = await conn.fetchval(
                "SELECT 1 FROM ingest_seats WHERE subscription_id = $1 AND seat_id = $2",
                subscription_id,
                seat_id,
            )
            rows = await conn.fetch(
                "SELECT key_id, issued_at, revoked_at FROM ingest_keys "
                "WHERE subscription_id = $1 AND seat_id = $2 ORDER BY issued_at, key_id",
                subscription_id,
                seat_id,
            )
        if not known:
            return problem(
                404,
                "Not found",
                f"subscription '{subscription_id}' has no seat '{seat_id}'",
                code="unknown_seat",
            )
        return _json(KeyList(keys=[KeyEntry(**dict(r)) for r in rows]))

    @router.post(
        "/accounts/{account_id}/tokens",
        status_code=201,
        tags=["access"],
        summary="Issue a team token: reads and exports this account's data only; shown once",
        response_model=TeamTokenCreated,
    )
    async def post_team_token(account_id: Id, body: TeamTokenCreate | None = None) -> Response:
        now = clock()
        expires_at = body.expires_at if body else None
        if expires_at is not None and expires_at <= now:
            return problem(
                422,
                "Expiry in past",
                "expires_at must be later than now",
                code="expiry_in_past",
                errors=[{"field": "expires_at", "message": "must be later than now"}],
            )
        token = new_team_token()
        token_id = f"tok-{uuid.uuid4().hex[:16]}"
        async with pool().acquire() as conn:
            known = await conn.fetchval(
                "SELECT 1 FROM ingest_subscriptions WHERE account_id = $1 LIMIT 1", account_id
            )
            if not known:
                return _unknown_account(account_id)
            await conn.execute(
                "INSERT INTO team_tokens "
                "(token_id, account_id, token_hash, issued_at, expires_at) "
                "VALUES ($1, $2, $3, $4, $5)",
                token_id,
                account_id,
                key_hash(token, key_hash_secret),
                now,
                expires_at,
            )
        created = TeamTokenCreated(
            token_id=token_id,
            account_id=account_id,
            token=token,
            issued_at=now,
            expires_at=expires_at,
        )
        return _json(created, 201)

    @router.delete(
        "/tokens/{token_id}",
        tags=["access"],
        summary="Revoke a team token (ledger and quota refuse it within 5 seconds)",
        response_model=TeamTokenRevoked,
    )
    async def delete_team_token(token_id: Id) -> Response:
        async with pool().acquire() as conn:
            row = await conn.fetchrow(
                "UPDATE team_tokens SET revoked_at = coalesce(revoked_at, $2) "
                "WHERE token_id = $1 RETURNING account_id, revoked_at",
                token_id,
                clock(),
            )
        if row is None:
            return problem(
                404, "Not found", f"no team token has id '{token_id}'", code="unknown_token"
            )
        revoked = TeamTokenRevoked(
            token_id=token_id, account_id=row["account_id"], revoked_at=row["revoked_at"]
        )
        return _json(revoked)

    return router


def _unknown_account(account_id: str) -> JSONResponse:
    return problem(
        404, "Not found", f"account '{account_id}' has no subscription", code="unknown_account"
    )


def _json(body: Contract, status: int = 200) -> Response:
    return Response(body.model_dump_json(), status_code=status, media_type="application/json")
