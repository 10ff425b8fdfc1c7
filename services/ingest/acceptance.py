"""ingest's acceptance log in PostgreSQL: idempotency and an outbox in one table.

Every fact ingest takes is first *claimed* under its idempotency key (a usage report's account
and request id, or a plan command's key) together with its envelope, then published, then
marked published. So:
- the same key with the same body finds the original event id (a duplicate, never re-counted);
  with another body it is a conflict;
- the memory of seen keys is shared by every replica and survives restarts;
- a fact stored but never acknowledged (a crash, a broker outage) is published again under the
  same event id, by a retry of the caller or by the relay, so consumers can drop repeats.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from datetime import timedelta
from enum import Enum
from typing import NamedTuple
from uuid import UUID

import asyncpg
import orjson

from metering.db import Connection


def body_hash(body: object) -> bytes:
    """A stable digest of a request body (key order does not matter)."""
    return hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).digest()


class Claim(NamedTuple):
    """One fact to accept: its idempotency key, body digest and the envelope that carries it.

    A named tuple, as `Claimed`: one of each is made per usage report, and a frozen
    dataclass's `__init__` cost twice as much (issue 17)."""

    scope: str
    key: str
    body_hash: bytes
    event_id: UUID
    account_id: str
    envelope: bytes
    response: dict[str, object]


class Outcome(Enum):
    NEW = "new"  # claimed now: publish it
    UNCONFIRMED = "unconfirmed"  # claimed earlier, not yet acknowledged: publish it again
    DUPLICATE = "duplicate"  # claimed and acknowledged earlier: answer with the original
    CONFLICT = "conflict"  # the key was used with another body


class Claimed(NamedTuple):
    """What claiming found for one fact; `event_id`, `envelope` and `response` are the stored
    ones (the original's, for a duplicate or an unconfirmed retry)."""

    outcome: Outcome
    event_id: UUID
    account_id: str
    envelope: bytes | None
    response: dict[str, object]


_CLAIM_TEMPLATE = """
WITH incoming AS (
    SELECT * FROM unnest($1::text[], $2::text[], $3::bytea[], $4::uuid[], $5::text[],
                         $6::bytea[], $7::jsonb[]) WITH ORDINALITY
        AS t(scope, key, body_hash, event_id, account_id, envelope, response, ord)
), inserted AS (
    INSERT INTO ingest_accepted (scope, key, body_hash, event_id, account_id, envelope, response,
                                 published_at)
    SELECT DISTINCT ON (scope, key)
           scope, key, body_hash, event_id, account_id, {envelope}, response, {published_at}
    FROM incoming ORDER BY scope, key, ord
    ON CONFLICT (scope, key) DO NOTHING
    RETURNING scope, key
)
SELECT n.key IS NOT NULL AS inserted,
       a.body_hash, a.event_id, a.account_id, a.envelope, a.response, a.published_at
FROM incoming i
LEFT JOIN inserted n USING (scope, key)
LEFT JOIN ingest_accepted a USING (scope, key)
ORDER BY i.ord
"""
"""One row per claim, in order: `inserted`, and the earlier claim's columns where the key was
already taken. A key this statement inserted comes back with only `inserted` (the caller
has its values): most claims are new, and sending each one's columns back and decoding them
cost a tenth of ingest's CPU (issue 17). The earlier claim's columns are NULL when a
concurrent claim committed the key after this statement's snapshot: claim it again."""

_CLAIM = _CLAIM_TEMPLATE.format(envelope="envelope", published_at="NULL")
_CLAIM_PUBLISHED = _CLAIM_TEMPLATE.format(envelope="NULL", published_at="now()")
"""For facts published before their transaction commits: stored as published, no envelope."""


class AcceptanceLog:
    """The `ingest_accepted` table."""

    def __init__(self, pool: Callable[[], asyncpg.Pool]) -> None:
        self._pool = pool

    async def claim(
        self, claims: Sequence[Claim], conn: Connection | None = None, *, published: bool = False
    ) -> list[Claimed]:
        """Claim each fact under its key, in one round trip; results are in input order.

        Within one call a key repeated with the same body is a duplicate of its first
        occurrence, and with another body a conflict, exactly as across calls. Pass `conn`
        to claim inside the caller's transaction; `published` when that transaction commits
        only once the broker acknowledged the new facts (their rows then keep no envelope and
        need no later update).
        """
        executor = conn or self._pool()
        rows = await self._claim_rows(executor, claims, published)
        missing = [i for i, row in enumerate(rows) if _taken_unseen(row)]
        if missing:
            again = await self._claim_rows(executor, [claims[i] for i in missing], published)
            for i, row in zip(missing, again, strict=True):
                rows[i] = row
        first_of: dict[tuple[str, str], Claim] = {}
        claimed = []
        for claim, row in zip(claims, rows, strict=True):
            first = first_of.setdefault((claim.scope, claim.key), claim)
            claimed.append(_claimed(claim, row, first))
        return claimed

    @staticmethod
    async def _claim_rows(
        executor: asyncpg.Pool | Connection, claims: Sequence[Claim], published: bool
    ) -> list[asyncpg.Record]:
        return list(
            await executor.fetch(
                _CLAIM_PUBLISHED if published else _CLAIM,
                [c.scope for c in claims],
                [c.key for c in claims],
                [c.body_hash for c in claims],
                [c.event_id for c in claims],
                [c.account_id for c in claims],
                # a published fact's row keeps no envelope: do not send it (issue 17: the
                # envelopes of a round of usage, ~300 KB, were encoded, sent and decoded for
                # nothing; the claim 47.0 -> 43.5 µs a report)
                [None] * len(claims) if published else [c.envelope for c in claims],
                [orjson.dumps(c.response).decode() for c in claims],
            )
        )

    async def find(self, scope: str, key: str, body: bytes, conn: Connection) -> Claimed | None:
        """What was claimed under a key before, judged against this body; None if nothing."""
        row = await conn.fetchrow(
            "SELECT false AS inserted, body_hash, event_id, account_id, envelope, response, "
            "published_at FROM ingest_accepted WHERE scope = $1 AND key = $2",
            scope,
            key,
        )
        return None if row is None else _judged(body, row)

    async def mark_published(self, event_ids: Sequence[UUID]) -> None:
        """The broker acknowledged these: drop their envelopes, keep their keys."""
        if event_ids:
            await self._pool().execute(
                "UPDATE ingest_accepted SET published_at = now(), envelope = NULL "
                "WHERE event_id = ANY($1::uuid[]) AND published_at IS NULL",
                list(event_ids),
            )

    async def forget_usage(self, older_than: timedelta, limit: int = 10_000) -> int:
        """Forget published usage reports stored longer ago than `older_than`: once no report
        that old can be accepted, no duplicate of it can be either. Returns how many."""
        status = await self._pool().execute(
            "DELETE FROM ingest_accepted WHERE ctid = ANY(ARRAY("
            "SELECT ctid FROM ingest_accepted WHERE stored_at < now() - $1::interval "
            "AND published_at IS NOT NULL AND scope LIKE 'usage:%' LIMIT $2))",
            older_than,
            limit,
        )
        return int(status.split()[-1])

    async def unpublished(self, older_than_seconds: float, limit: int) -> list[Claimed]:
        """Facts stored but not acknowledged for a while: what the relay publishes again."""
        rows = await self._pool().fetch(
            "SELECT event_id, account_id, envelope, response FROM ingest_accepted "
            "WHERE published_at IS NULL AND stored_at < now() - make_interval(secs => $1) "
            "ORDER BY stored_at LIMIT $2",
            older_than_seconds,
            limit,
        )
        return [
            Claimed(Outcome.UNCONFIRMED, r["event_id"], r["account_id"], r["envelope"], {})
            for r in rows
        ]


def _taken_unseen(row: asyncpg.Record) -> bool:
    """The key was not inserted, yet no earlier claim was visible: a concurrent claim
    committed it after the statement's snapshot."""
    return not row["inserted"] and row["event_id"] is None


def _claimed(claim: Claim, row: asyncpg.Record, first: Claim) -> Claimed:
    """What claiming found for `claim`; `first` is the call's first claim of its key (a later
    one is a repeat of it, even where its event id, derived from the body, is the same)."""
    if _taken_unseen(row):
        raise RuntimeError(f"could not claim {claim.scope}/{claim.key}: retry the request")
    if not row["inserted"]:
        return _judged(claim.body_hash, row)
    if first is claim:
        return Claimed(
            Outcome.NEW, claim.event_id, claim.account_id, claim.envelope, claim.response
        )
    outcome = Outcome.CONFLICT if claim.body_hash != first.body_hash else Outcome.DUPLICATE
    return Claimed(outcome, first.event_id, first.account_id, first.envelope, first.response)


def _judged(body: bytes, row: asyncpg.Record) -> Claimed:
    """An earlier claim of the same key, seen by a later one with this body digest."""
    if bytes(row["body_hash"]) != body:
        outcome = Outcome.CONFLICT
    elif row["published_at"] is not None or row["inserted"]:
        outcome = Outcome.DUPLICATE  # of an earlier fact, or of one earlier in this call
    else:
        outcome = Outcome.UNCONFIRMED
    return Claimed(
        outcome, row["event_id"], row["account_id"], row["envelope"], orjson.loads(row["response"])
    )
