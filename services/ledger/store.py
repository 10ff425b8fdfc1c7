"""Where the ledger's projection reads and writes: the `ledger_*` tables behind one Protocol.

`LedgerStore` is everything the projection (services/ledger/projection.py) asks of storage
within one batch's transaction, and the usage totals the API sums in the database;
`PostgresLedgerStore` is it over an open connection (the consumer's transaction), and
`MemoryLedgerStore` its in-memory twin for the policy's unit tests.
tests/ledger_store_contract.py holds the one test class both must pass.

The tables (metering/migrations/0003_ledger.sql and later):

- ``ledger_events_archive``: every applied fact event as it came off the topic, partitioned
  by month of ``recorded_at`` (a month's partition must exist before its rows are copied in);
- ``ledger_entries``: the ledger's results (`ENTRY_COLUMNS`), append-only;
- ``ledger_accounts``: each account's folded state without its request ids, and a version
  that every write must advance by exactly one (a fence against a second writer);
- ``ledger_subscriptions``: which account holds a subscription (the first activation wins);
- ``ledger_outbox``: the results still to publish (metering/outbox.py relays them).

`LedgerReads` holds the reads of the ledger's API (usage details, statements) and of the
audit replay (metering/replay.py); `ledger/lookup.py` keeps the "where did my fact go" reads,
which join ingest's table.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Collection, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

import asyncpg

from metering.core.catalog import REQUEST_ID_MEMORY
from metering.core.state import AccountState
from metering.db import Connection
from metering.outbox import Outbox
from metering.publishing import Outgoing
from metering.snapshots import RememberedIds, load_snapshot, request_ids_by_account

OUTBOX = Outbox("ledger_outbox")

ARCHIVE_COLUMNS = [
    "event_id",
    "recorded_at",
    "account_id",
    "event_type",
    "topic",
    "partition",
    "offset",
    "key",
    "value",
]

ENTRY_COLUMNS = [
    "event_id",
    "event_type",
    "source_event_id",
    "account_id",
    "occurred_at",
    "subscription_id",
    "seat_id",
    "key_id",
    "request_id",
    "model",
    "tier",
    "price_micro",
    "seat_paid_micro",
    "packs_paid_micro",
    "shortfall_micro",
    "seat_remaining_micro",
    "shared_remaining_micro",
    "rate_card_version",
    "coefficient",
    "pack_id",
    "unused_micro",
    "reason",
    "input_tokens",
    "cached_tokens",
    "output_tokens",
    "images",
    "body",
]
"""`body` is the result's JSON as published, as text (migration 0012; rows written before keep
theirs in `body_jsonb`: read `BODY`). The usage counts are a deduction's `payload.usage`."""

BODY = "coalesce(body, body_jsonb::text)"
"""A ledger entry's body as text, whichever column holds it (migration 0012)."""


@dataclass(frozen=True)
class UsageFilter:
    """Which deductions the usage details show: a subscription's, from `since` (inclusive)
    to `until` (exclusive) by their usage's time, of one seat and one model if given."""

    subscription_id: str
    since: datetime | None
    until: datetime | None
    seat_id: str | None
    model: str | None

    def selects(self, entry: dict[str, Any]) -> bool:
        """The twin of `_DEDUCTIONS` over a `ledger_entries` row (`ENTRY_COLUMNS`)."""
        occurred_at: datetime = entry["occurred_at"]
        return (
            entry["event_type"] == "CreditsDeducted"
            and entry["subscription_id"] == self.subscription_id
            and (self.since is None or occurred_at >= self.since)
            and (self.until is None or occurred_at < self.until)
            and (self.seat_id is None or entry["seat_id"] == self.seat_id)
            and (self.model is None or entry["model"] == self.model)
        )


USAGE_COUNTS = ("input_tokens", "cached_tokens", "output_tokens", "images")
"""The usage counts the totals add up (a deduction's `payload.usage`, also kept as columns)."""


@dataclass(frozen=True)
class UsageTotals:
    """The sums over the deductions of a `UsageFilter`: credits in micro-credits."""

    requests: int = 0
    price_micro: int = 0
    seat_paid_micro: int = 0
    packs_paid_micro: int = 0
    shortfall_micro: int = 0
    input_tokens: int = 0
    cached_tokens: int = 0
    output_tokens: int = 0
    images: int = 0


_DEDUCTIONS = """
WHERE subscription_id = $1 AND event_type = 'CreditsDeducted'
  AND ($2::timestamptz IS NULL OR occurred_at >= $2)
  AND ($3::timestamptz IS NULL OR occurred_at < $3)
  AND ($4::text IS NULL OR seat_id = $4)
  AND ($5::text IS NULL OR model = $5)
"""
"""The deductions of a `UsageFilter` ($1 to $5), for the usage details and their totals."""


def _usage_count_sum(name: str) -> str:
    """The sum of one usage count: its column, or (rows written before migration 0012) the
    count in the row's jsonb body, as the usage rows show it."""
    return (
        f"coalesce(sum(coalesce({name}, (body_jsonb #>> '{{payload,usage,{name}}}')::bigint)), "
        f"0)::bigint AS {name}"
    )


_USAGE_TOTALS = f"""
SELECT count(*) AS requests,
       coalesce(sum(price_micro), 0)::bigint AS price_micro,
       coalesce(sum(seat_paid_micro), 0)::bigint AS seat_paid_micro,
       coalesce(sum(packs_paid_micro), 0)::bigint AS packs_paid_micro,
       coalesce(sum(shortfall_micro), 0)::bigint AS shortfall_micro,
       {", ".join(_usage_count_sum(name) for name in USAGE_COUNTS)}
FROM ledger_entries
"""
"""The sums of `UsageTotals`, in one pass over the deductions' index range."""


class StaleAccountState(RuntimeError):
    """An account's stored state changed under us (another writer): reload and retry."""


@dataclass(frozen=True)
class StoredAccount:
    """An account's stored state (its request ids rebuilt from its entries) and version."""

    state: AccountState
    version: int


@dataclass(frozen=True)
class AccountWrite:
    """An account's new state, stored as `version` only over `version - 1`."""

    account_id: str
    state_json: str
    version: int


class LedgerStore(Protocol):
    """What the ledger's projection reads and writes within one batch's transaction (and
    the usage totals the API sums where the entries are)."""

    async def archived(self, event_ids: Collection[str]) -> set[str]:
        """Which of `event_ids` the archive already holds."""

    async def accounts(self, account_ids: Sequence[str]) -> dict[str, StoredAccount]:
        """The stored accounts among `account_ids` (absent: never stored)."""

    async def ensure_archive_month(self, month: datetime) -> None:
        """Make the archive ready for events recorded in the month starting at `month`."""

    async def append(
        self, archive: Sequence[tuple[object, ...]], entries: Sequence[tuple[object, ...]]
    ) -> None:
        """Add archive rows (`ARCHIVE_COLUMNS`) and ledger entries (`ENTRY_COLUMNS`)."""

    async def store_accounts(self, writes: Sequence[AccountWrite]) -> None:
        """Write each account's next version; `StaleAccountState` if any stored version is
        not the one before it (nothing may then be committed). A new row takes any version."""

    async def add_subscriptions(self, held: Sequence[tuple[str, str]]) -> None:
        """Record (subscription id, account id) pairs; a subscription already held keeps
        its account."""

    async def add_outgoing(self, messages: Sequence[Outgoing]) -> None:
        """Queue messages for the outbox relay, in order."""

    async def subscription_account(self, subscription_id: str) -> str | None:
        """The account that holds a subscription (None: the ledger has not seen it)."""

    async def usage_totals(self, where: UsageFilter) -> UsageTotals:
        """The sums over every deduction `where` selects (the rows of the usage details)."""


class PostgresLedgerStore:
    """`LedgerStore` over an open connection, inside the caller's transaction."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    async def archived(self, event_ids: Collection[str]) -> set[str]:
        if not event_ids:
            return set()
        rows = await self._conn.fetch(
            "SELECT event_id::text AS event_id FROM ledger_events_archive "
            "WHERE event_id = ANY($1::uuid[])",
            list(event_ids),
        )
        return {row["event_id"] for row in rows}

    async def accounts(self, account_ids: Sequence[str]) -> dict[str, StoredAccount]:
        if not account_ids:
            return {}
        rows = await self._conn.fetch(
            "SELECT account_id, state::text AS state, version FROM ledger_accounts "
            "WHERE account_id = ANY($1::text[])",
            list(account_ids),
        )
        request_ids = await self._remembered_request_ids([row["account_id"] for row in rows])
        return {
            row["account_id"]: StoredAccount(
                load_snapshot(row["state"], request_ids.get(row["account_id"], ())),
                row["version"],
            )
            for row in rows
        }

    async def _remembered_request_ids(self, account_ids: list[str]) -> RememberedIds:
        """The request ids each account still remembers (their usage's time plus
        `REQUEST_ID_MEMORY` is past its clock): what its stored state leaves out."""
        if not account_ids:
            return {}
        rows = await self._conn.fetch(
            "SELECT e.account_id, e.request_id, e.occurred_at + $2::interval AS remember_until "
            "FROM ledger_entries e JOIN ledger_accounts a USING (account_id) "
            "WHERE e.account_id = ANY($1::text[]) AND e.event_type = 'CreditsDeducted' "
            "AND e.occurred_at > (a.state::json->>'clock')::timestamptz - $2::interval",
            account_ids,
            REQUEST_ID_MEMORY,
        )
        return request_ids_by_account(rows)

    async def ensure_archive_month(self, month: datetime) -> None:
        await self._conn.execute("SELECT ledger_archive_ensure_month($1)", month)

    async def append(
        self, archive: Sequence[tuple[object, ...]], entries: Sequence[tuple[object, ...]]
    ) -> None:
        await self._conn.copy_records_to_table(
            "ledger_events_archive", records=archive, columns=ARCHIVE_COLUMNS
        )
        await self._conn.copy_records_to_table(
            "ledger_entries", records=entries, columns=ENTRY_COLUMNS
        )

    async def store_accounts(self, writes: Sequence[AccountWrite]) -> None:
        if not writes:
            return
        written = await self._conn.fetchval(
            """
            WITH written AS (
                INSERT INTO ledger_accounts AS a (account_id, state, version)
                SELECT account_id, state, version
                FROM unnest($1::text[], $2::text[], $3::bigint[]) AS s(account_id, state, version)
                ON CONFLICT (account_id) DO UPDATE
                    SET state = EXCLUDED.state, version = EXCLUDED.version, updated_at = now()
                    WHERE a.version = EXCLUDED.version - 1
                RETURNING 1
            )
            SELECT count(*) FROM written
            """,
            [w.account_id for w in writes],
            [w.state_json for w in writes],
            [w.version for w in writes],
        )
        if written != len(writes):
            raise StaleAccountState("an account's stored state changed under this batch")

    async def add_subscriptions(self, held: Sequence[tuple[str, str]]) -> None:
        if held:
            await self._conn.execute(
                "INSERT INTO ledger_subscriptions (subscription_id, account_id) "
                "SELECT * FROM unnest($1::text[], $2::text[]) ON CONFLICT DO NOTHING",
                [s for s, _ in held],
                [a for _, a in held],
            )

    async def add_outgoing(self, messages: Sequence[Outgoing]) -> None:
        await OUTBOX.add(self._conn, messages)

    async def subscription_account(self, subscription_id: str) -> str | None:
        account_id: str | None = await self._conn.fetchval(
            "SELECT account_id FROM ledger_subscriptions WHERE subscription_id = $1",
            subscription_id,
        )
        return account_id

    async def usage_totals(self, where: UsageFilter) -> UsageTotals:
        row = await self._conn.fetchrow(
            f"{_USAGE_TOTALS} {_DEDUCTIONS}",
            where.subscription_id,
            where.since,
            where.until,
            where.seat_id,
            where.model,
        )
        assert row is not None  # an aggregate without GROUP BY has one row
        return UsageTotals(**dict(row))


class ArchiveMonthMissing(RuntimeError):
    """An archive row's month has no partition (PostgreSQL refuses such a row too)."""


@dataclass
class MemoryLedgerStore:
    """`LedgerStore` in memory: the tables as plain collections, with PostgreSQL's rules
    (unique event ids, month partitions, the version fence, the first subscription holder).

    Its writes take effect at once; a test that rolls a batch back restores `copy()`."""

    archive: dict[str, dict[str, Any]] = field(default_factory=dict)
    entries: list[dict[str, Any]] = field(default_factory=list)
    states: dict[str, tuple[str, int]] = field(default_factory=dict)
    """account id → (state JSON, version)."""
    subscriptions: dict[str, str] = field(default_factory=dict)
    outbox: list[Outgoing] = field(default_factory=list)
    months: set[datetime] = field(default_factory=set)

    def copy(self) -> MemoryLedgerStore:
        """The tables as they are now (a transaction's starting point)."""
        return MemoryLedgerStore(
            dict(self.archive),
            list(self.entries),
            dict(self.states),
            dict(self.subscriptions),
            list(self.outbox),
            set(self.months),
        )

    async def archived(self, event_ids: Collection[str]) -> set[str]:
        return {event_id for event_id in event_ids if event_id in self.archive}

    async def accounts(self, account_ids: Sequence[str]) -> dict[str, StoredAccount]:
        stored = {}
        for account_id in account_ids:
            if account_id not in self.states:
                continue
            text, version = self.states[account_id]
            clock = load_snapshot(text).clock
            since = None if clock is None else clock - REQUEST_ID_MEMORY
            remembered = [
                (entry["request_id"], entry["occurred_at"] + REQUEST_ID_MEMORY)
                for entry in self.entries
                if entry["account_id"] == account_id
                and entry["event_type"] == "CreditsDeducted"
                and since is not None
                and entry["occurred_at"] > since
            ]
            stored[account_id] = StoredAccount(load_snapshot(text, remembered), version)
        return stored

    async def ensure_archive_month(self, month: datetime) -> None:
        self.months.add(month)

    async def append(
        self, archive: Sequence[tuple[object, ...]], entries: Sequence[tuple[object, ...]]
    ) -> None:
        rows = [dict(zip(ARCHIVE_COLUMNS, row, strict=True)) for row in archive]
        for row in rows:
            recorded_at: Any = row["recorded_at"]
            if month_start(recorded_at) not in self.months:
                raise ArchiveMonthMissing(f"no archive partition for {recorded_at}")
            if row["event_id"] in self.archive:
                raise ValueError(f"event {row['event_id']} is archived already")
        self.archive.update((str(row["event_id"]), row) for row in rows)
        self.entries += [dict(zip(ENTRY_COLUMNS, row, strict=True)) for row in entries]

    async def store_accounts(self, writes: Sequence[AccountWrite]) -> None:
        for w in writes:
            stored = self.states.get(w.account_id)
            if stored is not None and stored[1] != w.version - 1:
                raise StaleAccountState("an account's stored state changed under this batch")
        for w in writes:
            self.states[w.account_id] = (w.state_json, w.version)

    async def add_subscriptions(self, held: Sequence[tuple[str, str]]) -> None:
        for subscription_id, account_id in held:
            self.subscriptions.setdefault(subscription_id, account_id)

    async def add_outgoing(self, messages: Sequence[Outgoing]) -> None:
        self.outbox += messages

    async def subscription_account(self, subscription_id: str) -> str | None:
        return self.subscriptions.get(subscription_id)

    async def usage_totals(self, where: UsageFilter) -> UsageTotals:
        rows = [e for e in self.entries if where.selects(e)]
        return UsageTotals(
            requests=len(rows),
            price_micro=sum(e["price_micro"] for e in rows),
            seat_paid_micro=sum(e["seat_paid_micro"] for e in rows),
            packs_paid_micro=sum(e["packs_paid_micro"] for e in rows),
            shortfall_micro=sum(e["shortfall_micro"] for e in rows),
            **{name: sum(e[name] for e in rows) for name in USAGE_COUNTS},
        )


def month_start(t: datetime) -> datetime:
    """The first instant (UTC) of `t`'s calendar month: its archive partition."""
    t = t.astimezone(UTC)
    return datetime(t.year, t.month, 1, tzinfo=UTC)


# -- reads: the API and the audit -----------------------------------------------------


_IN_SCOPE = """
WHERE (cardinality($1::text[]) = 0 OR account_id = ANY($1::text[]))
  AND ($2::timestamptz IS NULL OR recorded_at <= $2)
"""

_MONTH_USAGE = """
SELECT seat_id, model, count(*) AS requests, sum(price_micro)::bigint AS price_micro,
       sum(seat_paid_micro)::bigint AS seat_paid_micro,
       sum(packs_paid_micro)::bigint AS packs_paid_micro,
       sum(shortfall_micro)::bigint AS shortfall_micro
FROM ledger_entries
WHERE subscription_id = $1 AND event_type = 'CreditsDeducted'
  AND occurred_at >= $2 AND occurred_at < $3
GROUP BY seat_id, model
"""

_PACK_PAID = """
SELECT line->>'bucket_id' AS pack_id,
       coalesce(sum((line->>'amount_micro')::bigint) FILTER (WHERE e.occurred_at < $2), 0)::bigint
           AS before_start,
       sum((line->>'amount_micro')::bigint)::bigint AS before_end
FROM ledger_entries e,
     jsonb_array_elements(coalesce(e.body_jsonb, e.body::jsonb)->'payload'->'receipt') AS line
WHERE e.subscription_id = $1 AND e.event_type = 'CreditsDeducted' AND e.packs_paid_micro > 0
  AND e.occurred_at >= $4 AND e.occurred_at < $3 AND line->>'bucket' = 'pack'
GROUP BY 1
"""
"""The SQL twin of `metering.core.receipts.paid_by_pack`, summed over a period."""


class LedgerReads:
    """The ledger's read queries, on a connection (in the caller's snapshot, if any)."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    async def subscription_account(self, subscription_id: str) -> str | None:
        return await PostgresLedgerStore(self._conn).subscription_account(subscription_id)

    async def usage_totals(self, where: UsageFilter) -> UsageTotals:
        return await PostgresLedgerStore(self._conn).usage_totals(where)

    async def state_text(self, account_id: str) -> str | None:
        """An account's stored state (`snapshot_json`), without its request ids."""
        text: str | None = await self._conn.fetchval(
            "SELECT state::text FROM ledger_accounts WHERE account_id = $1", account_id
        )
        return text

    async def deduction_bodies(
        self, where: UsageFilter, after: tuple[datetime, str] | None, limit: int
    ) -> list[str]:
        """The JSON bodies of the `CreditsDeducted` entries `where` selects, newest first,
        from after the (time, event id) `after`."""
        rows = await self._conn.fetch(
            f"""
            SELECT {BODY} AS body FROM ledger_entries {_DEDUCTIONS}
              AND ($6::timestamptz IS NULL OR (occurred_at, event_id) < ($6, $7::uuid))
            ORDER BY occurred_at DESC, event_id DESC
            LIMIT $8
            """,
            where.subscription_id,
            where.since,
            where.until,
            where.seat_id,
            where.model,
            after[0] if after else None,
            after[1] if after else None,
            limit,
        )
        return [row["body"] for row in rows]

    async def month_usage(
        self, subscription_id: str, start: datetime, end: datetime
    ) -> list[asyncpg.Record]:
        """Per seat and model: requests, price, seat-paid, pack-paid and shortfall sums."""
        return await self._conn.fetch(_MONTH_USAGE, subscription_id, start, end)

    async def pack_paid(
        self, subscription_id: str, start: datetime, end: datetime, since: datetime
    ) -> list[asyncpg.Record]:
        """Per pack: what it paid before `start` and before `end` (deductions from `since`)."""
        return await self._conn.fetch(_PACK_PAID, subscription_id, start, end, since)

    # the audit replay

    async def archived_count(self, accounts: Sequence[str], until: datetime | None) -> int:
        """How many archived events of `accounts` (all if empty) were recorded by `until`."""
        count = await self._conn.fetchval(
            f"SELECT count(*) FROM ledger_events_archive {_IN_SCOPE}", list(accounts), until
        )
        return int(count)

    async def archived_per_account(
        self, accounts: Sequence[str], until: datetime | None
    ) -> list[tuple[str, int]]:
        """(account id, archived events) of `accounts` (all if empty) recorded by `until`, in
        the database's order of account ids: the order `archived_events` reads them in."""
        rows = await self._conn.fetch(
            f"SELECT account_id, count(*) AS events FROM ledger_events_archive {_IN_SCOPE} "
            "GROUP BY account_id ORDER BY account_id",
            list(accounts),
            until,
        )
        return [(row["account_id"], row["events"]) for row in rows]

    async def archived_events(
        self,
        accounts: Sequence[str],
        until: datetime | None,
        prefetch: int,
        between: tuple[str, str] | None = None,
    ) -> AsyncIterator[asyncpg.Record]:
        """(account_id, value) of those events, per account in the order the ledger applied
        them, through a server-side cursor (in a transaction); with `between`, only of the
        accounts from its first id to its last (both included)."""
        first, last = between or (None, None)
        query = (
            f"SELECT account_id, value FROM ledger_events_archive {_IN_SCOPE} "
            "AND ($3::text IS NULL OR account_id BETWEEN $3 AND $4) "
            'ORDER BY account_id, partition, "offset"'
        )
        cursor = self._conn.cursor(query, list(accounts), until, first, last, prefetch=prefetch)
        async for row in cursor:
            yield row

    async def entries_of(self, accounts: Sequence[str]) -> list[asyncpg.Record]:
        """(account_id, id, source, body) of every entry of `accounts`."""
        return await self._conn.fetch(
            "SELECT account_id, event_id::text AS id, source_event_id::text AS source, "
            f"{BODY} AS body FROM ledger_entries WHERE account_id = ANY($1::text[])",
            list(accounts),
        )

    async def states_of(self, accounts: Sequence[str]) -> dict[str, str]:
        """The stored state of each of `accounts` that has one."""
        rows = await self._conn.fetch(
            "SELECT account_id, state::text AS state FROM ledger_accounts "
            "WHERE account_id = ANY($1::text[])",
            list(accounts),
        )
        return {row["account_id"]: row["state"] for row in rows}

    async def beyond(
        self, replayed: Sequence[str], requested: Sequence[str]
    ) -> tuple[list[str], list[tuple[str, str]]]:
        """The states (account ids) and entries (account id, entry id) of accounts not in
        `replayed`, among `requested` (all if empty)."""
        scope = (
            "NOT account_id = ANY($1::text[]) "
            "AND (cardinality($2::text[]) = 0 OR account_id = ANY($2::text[]))"
        )
        states = await self._conn.fetch(
            f"SELECT account_id FROM ledger_accounts WHERE {scope}", list(replayed), list(requested)
        )
        entries = await self._conn.fetch(
            f"SELECT account_id, event_id::text AS id FROM ledger_entries WHERE {scope}",
            list(replayed),
            list(requested),
        )
        return [r["account_id"] for r in states], [(r["account_id"], r["id"]) for r in entries]

    async def activating_accounts(self, subscription_id: str) -> list[str]:
        """The archived accounts with a `SubscriptionActivated` of `subscription_id`."""
        rows = await self._conn.fetch(
            """
            SELECT DISTINCT account_id FROM ledger_events_archive
            WHERE event_type = 'SubscriptionActivated'
              AND convert_from(value, 'UTF8')::jsonb #>> '{payload,subscription_id}' = $1
            ORDER BY account_id
            """,
            subscription_id,
        )
        return [row["account_id"] for row in rows]
