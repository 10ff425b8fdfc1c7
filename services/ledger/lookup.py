"""Where did my fact go: what ingest and the ledger know of one event id or usage request id.

A fact is *accepted* when ingest recorded it (`ingest_accepted`, in the same database; this
module only reads that table, ingest owns it), *applied* once the ledger archived it
(`ledger_events_archive`) without a `FactRejected` entry for it, and *rejected* when the
ledger's guard recorded a `FactRejected` entry for it (`ledger_entries.source_event_id`).

Every SQL statement of these reads is here (`LookupStore`); `fact_status` turns the rows into
the answer and is pure.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import orjson

from ledger.store import BODY
from ledger.usage import paid_from
from metering.core.money import to_decimal_string as credits
from metering.db import Connection
from schemas.api import FactEntry, FactRejection, FactStatus

#: ingest's idempotency scopes of plan commands, and the fact each one records.
_SCOPE_EVENT_TYPES = {
    "subscription": "SubscriptionActivated",
    "seat": "SeatAdded",
    "seat-tier": "SeatTierChanged",
    "key": "ApiKeyIssued",
    "key-revoked": "ApiKeyRevoked",
    "pack": "SharedPackPurchased",
    "cancel": "SubscriptionCancelled",
}
USAGE_SCOPE = "usage:"
"""ingest claims a usage report under scope ``usage:<account_id>`` and key = its request id."""


def parse_event_id(text: str) -> uuid.UUID | None:
    """The UUID an event id names; None when it is not one (no fact can have it)."""
    try:
        return uuid.UUID(text)
    except ValueError:
        return None


def fact_status(
    accepted: Mapping[str, Any] | None,
    archived: Mapping[str, Any] | None,
    entries: Sequence[Mapping[str, Any]],
) -> FactStatus | None:
    """The answer for one event id from its rows; None when nothing knows it.

    `accepted`: its `ingest_accepted` row (scope, key, event_id, account_id, envelope,
    stored_at); `archived`: its `ledger_events_archive` row (event_id, account_id, event_type,
    recorded_at, value); `entries`: the JSON bodies of the `ledger_entries` derived from it.
    """
    if archived is not None:
        envelope = orjson.loads(archived["value"])
        event_id, account_id = str(archived["event_id"]), archived["account_id"]
        event_type: str | None = archived["event_type"]
        recorded_at: datetime = archived["recorded_at"]
    elif accepted is not None:
        envelope = orjson.loads(accepted["envelope"]) if accepted["envelope"] else None
        event_id, account_id = str(accepted["event_id"]), accepted["account_id"]
        event_type = envelope["event_type"] if envelope else _scope_event_type(accepted["scope"])
        recorded_at = (
            datetime.fromisoformat(envelope["recorded_at"]) if envelope else accepted["stored_at"]
        )
    else:
        return None
    rejected = [
        e
        for e in entries
        if e["event_type"] == "FactRejected" and e["payload"]["rejected_event_id"] == event_id
    ]
    status = "accepted" if archived is None else "rejected" if rejected else "applied"
    return FactStatus(
        event_id=event_id,
        event_type=event_type,
        account_id=account_id,
        status=status,
        recorded_at=recorded_at,
        request_id=_request_id(envelope, accepted, entries),
        entries=[_entry(e) for e in entries],
        rejection=(
            FactRejection(
                reason=rejected[0]["payload"]["reason"], detail=rejected[0]["payload"]["detail"]
            )
            if rejected
            else None
        ),
    )


def _scope_event_type(scope: str) -> str | None:
    if scope.startswith(USAGE_SCOPE):
        return "UsageRecorded"
    return _SCOPE_EVENT_TYPES.get(scope)


def _request_id(
    envelope: Mapping[str, Any] | None,
    accepted: Mapping[str, Any] | None,
    entries: Sequence[Mapping[str, Any]],
) -> str | None:
    if envelope is not None:
        if envelope.get("event_type") != "UsageRecorded":
            return None
        request_id: str = envelope["payload"]["request_id"]
        return request_id
    if accepted is not None and accepted["scope"].startswith(USAGE_SCOPE):
        key: str = accepted["key"]
        return key
    return next(
        (e["payload"]["request_id"] for e in entries if e["event_type"] == "CreditsDeducted"),
        None,
    )


def _entry(body: Mapping[str, Any]) -> FactEntry:
    common = {
        "event_id": body["event_id"],
        "event_type": body["event_type"],
        "occurred_at": datetime.fromisoformat(body["occurred_at"]),
    }
    if body["event_type"] != "CreditsDeducted":
        return FactEntry(**common)
    p = body["payload"]
    return FactEntry(
        **common,
        price=credits(p["price_micro"]),
        receipt=paid_from(p["receipt"]),
        shortfall=credits(p["shortfall_micro"]),
    )


_ACCEPTED = """
SELECT scope, key, event_id, account_id, envelope, stored_at
FROM ingest_accepted WHERE event_id = $1
"""
_ARCHIVED = """
SELECT event_id, account_id, event_type, recorded_at, value
FROM ledger_events_archive WHERE event_id = $1
"""
_ENTRIES = f"""
SELECT {BODY} AS body FROM ledger_entries WHERE source_event_id = $1
ORDER BY occurred_at, event_id
"""
# A usage report's event id: ingest's claim of (account, request id); else (ingest forgot the
# key) the deduction that carries the request id; else a rejected usage whose archived
# payload carries it.
_USAGE_CLAIMED = "SELECT event_id FROM ingest_accepted WHERE scope = $1 AND key = $2"
_USAGE_DEDUCTED = """
SELECT source_event_id FROM ledger_entries
WHERE account_id = $1 AND event_type = 'CreditsDeducted' AND request_id = $2
LIMIT 1
"""
_USAGE_REJECTED = """
SELECT a.event_id
FROM ledger_entries e JOIN ledger_events_archive a ON a.event_id = e.source_event_id
WHERE e.account_id = $1 AND e.event_type = 'FactRejected' AND a.event_type = 'UsageRecorded'
  AND convert_from(a.value, 'UTF8')::jsonb #>> '{payload,request_id}' = $2
LIMIT 1
"""


class LookupStore:
    """The reads behind the lookup endpoints, on one connection (in one snapshot)."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    async def event(self, event_id: uuid.UUID) -> FactStatus | None:
        accepted = await self._conn.fetchrow(_ACCEPTED, event_id)
        archived = await self._conn.fetchrow(_ARCHIVED, event_id)
        rows = await self._conn.fetch(_ENTRIES, event_id)
        return fact_status(
            None if accepted is None else dict(accepted),
            None if archived is None else dict(archived),
            [orjson.loads(r["body"]) for r in rows],
        )

    async def request(self, account_id: str, request_id: str) -> FactStatus | None:
        for query, args in (
            (_USAGE_CLAIMED, (f"{USAGE_SCOPE}{account_id}", request_id)),
            (_USAGE_DEDUCTED, (account_id, request_id)),
            (_USAGE_REJECTED, (account_id, request_id)),
        ):
            event_id = await self._conn.fetchval(query, *args)
            if event_id is not None:
                return await self.event(event_id)
        return None
