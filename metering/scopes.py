"""Who may read what: the bearer token of a read call resolved to a scope (issue #18).

- `admin`: the operator's `METERING_ADMIN_TOKEN` or `METERING_READ_TOKEN`: every account.
- `team`: a team token (`tt-…`, issued by ingest per account): that account's data only.
- `member`: a member's own API key (`sk-tp-…`): its own seat only, through the `/v1/me` reads.

ledger and quota share the database with ingest, so both read team tokens (`team_tokens`)
and member keys (`ingest_keys.key_hash`) here, by their keyed hash (`API_KEY_HASH_SECRET`,
the same value in all three services). A resolved token is cached in process for at most
`CACHE_SECONDS`: a revoked team token or key stops working within that bound.

A scope that may not read an object gets the same `404` as an unknown id, so a team cannot
learn which ids other accounts have.
"""

from __future__ import annotations

import hmac
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

import asyncpg
from fastapi import Request

from metering.apikeys import TOKEN_PLAN_PREFIX, key_hash
from metering.http import DocumentedBearer, Unauthorized

TEAM_TOKEN_PREFIX = "tt-"
CACHE_SECONDS = 5.0
"""How long a resolved token is trusted without asking the database again: the bound on how
late a revocation (or an expiry) takes effect."""
CACHE_MAX_ENTRIES = 10_000


def new_team_token() -> str:
    """A fresh team token: the prefix and 256 bits of randomness."""
    return TEAM_TOKEN_PREFIX + secrets.token_urlsafe(32)


@dataclass(frozen=True, slots=True)
class Scope:
    """What one bearer token may read."""

    kind: Literal["admin", "team", "member"]
    account_id: str | None = None
    subscription_id: str | None = None
    seat_id: str | None = None
    key_id: str | None = None

    def reads_account(self, account_id: str | None) -> bool:
        """May this scope read the account's data (subscriptions, usage, facts)?"""
        if self.kind == "admin":
            return True
        return self.kind == "team" and account_id is not None and account_id == self.account_id

    def reads_seat(self, account_id: str | None, seat_id: str | None) -> bool:
        """May this scope read one seat of the account?"""
        if self.kind == "member":
            return account_id == self.account_id and seat_id == self.seat_id
        return self.reads_account(account_id)


ADMIN = Scope("admin")
_Clock = Callable[[], datetime]


class ScopeResolver:
    """Resolves a presented bearer token to its `Scope`, or None when it is not valid."""

    def __init__(
        self,
        operator_tokens: Sequence[str],
        pool: Callable[[], asyncpg.Pool],
        hash_secret: str | None,
        clock: _Clock = lambda: datetime.now(UTC),
        cache_seconds: float = CACHE_SECONDS,
    ) -> None:
        self._operator = [t.encode() for t in operator_tokens if t]
        self._pool = pool
        self._secret = hash_secret
        self._clock = clock
        self._cache_seconds = cache_seconds
        self._cache: dict[str, tuple[float, Scope | None]] = {}

    async def resolve(self, presented: str) -> Scope | None:
        candidate = presented.encode()
        if any([hmac.compare_digest(candidate, token) for token in self._operator]):
            return ADMIN
        if self._secret is None or not presented.startswith((TEAM_TOKEN_PREFIX, TOKEN_PLAN_PREFIX)):
            return None
        hashed = key_hash(presented, self._secret)
        cached = self._cache.get(hashed)
        if cached is not None and cached[0] > time.monotonic():
            return cached[1]
        now = self._clock()
        if presented.startswith(TEAM_TOKEN_PREFIX):
            scope, until = await self._team(hashed, now)
        else:
            scope, until = await self._member(hashed, now)
        if len(self._cache) >= CACHE_MAX_ENTRIES:
            self._cache.clear()
        ttl = self._cache_seconds
        if until is not None:
            ttl = min(ttl, max(0.0, (until - now).total_seconds()))
        self._cache[hashed] = (time.monotonic() + ttl, scope)
        return scope

    async def _team(self, hashed: str, now: datetime) -> tuple[Scope | None, datetime | None]:
        async with self._pool().acquire() as conn:
            row = await conn.fetchrow(
                "SELECT account_id, expires_at FROM team_tokens "
                "WHERE token_hash = $1 AND revoked_at IS NULL",
                hashed,
            )
        if row is None or (row["expires_at"] is not None and row["expires_at"] <= now):
            return None, None
        return Scope("team", account_id=row["account_id"]), row["expires_at"]

    async def _member(self, hashed: str, now: datetime) -> tuple[Scope | None, datetime | None]:
        async with self._pool().acquire() as conn:
            row = await conn.fetchrow(
                """
                SELECT k.key_id, k.account_id, k.subscription_id, k.seat_id,
                       LEAST(k.revoked_at, s.removed_at) AS ends_at
                FROM ingest_keys k JOIN ingest_seats s ON s.seat_id = k.seat_id
                WHERE k.key_hash = $1
                """,
                hashed,
            )
        if row is None or (row["ends_at"] is not None and row["ends_at"] <= now):
            return None, None
        scope = Scope(
            "member",
            account_id=row["account_id"],
            subscription_id=row["subscription_id"],
            seat_id=row["seat_id"],
            key_id=row["key_id"],
        )
        return scope, row["ends_at"]


def scope_guard(
    resolver: ScopeResolver, kinds: frozenset[str] = frozenset({"admin", "team"})
) -> Callable[..., Awaitable[Scope]]:
    """A FastAPI dependency: the caller's scope, or `401` when its token is missing, not
    valid, or not of the `kinds` the route takes (member keys only reach the `/v1/me`
    reads)."""

    async def guard(request: Request, _documented: DocumentedBearer = None) -> Scope:
        scheme, _, presented = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not presented.strip():
            raise Unauthorized
        scope = await resolver.resolve(presented.strip())
        if scope is None or scope.kind not in kinds:
            raise Unauthorized
        return scope

    return guard


MEMBER_ONLY = frozenset({"member"})
