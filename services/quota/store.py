"""Where quota's projection keeps its snapshots: the `quota_*` tables behind one Protocol.

`QuotaStore` is everything the projection (services/quota/projection.py) reads and writes,
for one consumer group; `PostgresQuotaStore` is it over an open connection (the consumer's
transaction, or one of the projection's own), and `MemoryQuotaStore` its in-memory twin for
unit tests. tests/quota_store_contract.py holds the one test class both must pass.

The tables (metering/migrations/0004_quota.sql and later), each keyed by consumer group:

- ``quota_accounts``: each account's fold state without its request ids, and the partition
  its events are on (to reload exactly the accounts of a partition that moved);
- ``quota_request_ids``: the request ids deducted, each until when it is remembered;
- ``quota_seat_status``: the status last published for each seat;
- ``quota_outbox``: the seat statuses still to publish (metering/outbox.py relays them).
The offsets the group applied are the consumer's (``consumer_offsets``, metering/consumer.py);
the projection reads them here once, at start.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from metering.core.state import AccountState
from metering.db import Connection
from metering.outbox import Outbox
from metering.publishing import Outgoing
from metering.snapshots import RememberedIds, load_snapshot, request_ids_by_account
from quota.seat_status import Published

OUTBOX = Outbox("quota_outbox")


@dataclass(frozen=True)
class StoredAccount:
    account_id: str
    partition: int
    state: AccountState
    """With the request ids it still remembers."""


@dataclass(frozen=True)
class AccountRow:
    """An account's state to store (`snapshot_json`) and the partition of its events."""

    account_id: str
    partition: int
    state_json: str


Deducted = tuple[str, str, datetime]
"""(account id, request id, remembered until)."""

SeatStatuses = dict[str, tuple[str, Published]]
"""seat id → (account id, status last published)."""


class QuotaStore(Protocol):
    """What quota's projection reads and writes, for its consumer group."""

    async def applied_offsets(self, topic: str) -> dict[int, int]:
        """The next offset of each partition of `topic` the group applied."""

    async def accounts(self, partition: int | None = None) -> list[StoredAccount]:
        """The stored accounts of a partition (None: of every partition)."""

    async def statuses(self, account_ids: Sequence[str] | None = None) -> SeatStatuses:
        """The last published status of the seats of these accounts (None: of all)."""

    async def store_accounts(
        self, rows: Sequence[AccountRow], deducted: Sequence[Deducted]
    ) -> None:
        """Write the accounts' states, and add the request ids newly deducted (for an id
        given more than once, or already stored, the last time given wins)."""

    async def store_statuses(self, published: SeatStatuses) -> None:
        """Record the statuses just published."""

    async def add_outgoing(self, messages: Sequence[Outgoing]) -> None:
        """Queue messages for the outbox relay, in order."""

    async def forget_request_ids(self) -> int:
        """Delete the request ids no account remembers any more (remembered until its clock
        or earlier); returns how many."""


class PostgresQuotaStore:
    """`QuotaStore` over an open connection (inside the caller's transaction, if any)."""

    def __init__(self, conn: Connection, group: str) -> None:
        self._conn = conn
        self._group = group

    async def applied_offsets(self, topic: str) -> dict[int, int]:
        rows = await self._conn.fetch(
            "SELECT partition, next_offset FROM consumer_offsets "
            "WHERE consumer_group = $1 AND topic = $2",
            self._group,
            topic,
        )
        return {row["partition"]: row["next_offset"] for row in rows}

    async def accounts(self, partition: int | None = None) -> list[StoredAccount]:
        rows = await self._conn.fetch(
            "SELECT account_id, partition, state::text AS state FROM quota_accounts "
            "WHERE consumer_group = $1 AND ($2::int IS NULL OR partition = $2)",
            self._group,
            partition,
        )
        request_ids = await self._request_ids(
            None if partition is None else [row["account_id"] for row in rows]
        )
        return [
            StoredAccount(
                row["account_id"],
                row["partition"],
                load_snapshot(row["state"], request_ids.get(row["account_id"], ())),
            )
            for row in rows
        ]

    async def _request_ids(self, account_ids: list[str] | None) -> RememberedIds:
        """The request ids each of `account_ids` (None: every account) still remembers."""
        query = (
            "SELECT r.account_id, r.request_id, r.remember_until FROM quota_request_ids r "
            "JOIN quota_accounts a USING (consumer_group, account_id) "
            "WHERE r.consumer_group = $1 "
            "AND r.remember_until > (a.state::json->>'clock')::timestamptz"
        )
        if account_ids is None:
            rows = await self._conn.fetch(query, self._group)
        else:
            rows = await self._conn.fetch(
                query + " AND r.account_id = ANY($2::text[])", self._group, account_ids
            )
        return request_ids_by_account(rows)

    async def statuses(self, account_ids: Sequence[str] | None = None) -> SeatStatuses:
        rows = await self._conn.fetch(
            "SELECT seat_id, account_id, status, reason FROM quota_seat_status "
            "WHERE consumer_group = $1 AND ($2::text[] IS NULL OR account_id = ANY($2::text[]))",
            self._group,
            None if account_ids is None else list(account_ids),
        )
        return {
            row["seat_id"]: (row["account_id"], Published(row["status"], row["reason"]))
            for row in rows
        }

    async def store_accounts(
        self, rows: Sequence[AccountRow], deducted: Sequence[Deducted]
    ) -> None:
        if deducted:  # an id forgotten in memory but not yet pruned here may come back
            latest = {(a, r): until for a, r, until in deducted}
            await self._conn.execute(
                "INSERT INTO quota_request_ids AS r "
                "(consumer_group, account_id, request_id, remember_until) "
                "SELECT $1, * FROM unnest($2::text[], $3::text[], $4::timestamptz[]) "
                "ON CONFLICT (consumer_group, account_id, request_id) "
                "DO UPDATE SET remember_until = EXCLUDED.remember_until",
                self._group,
                [a for a, _ in latest],
                [r for _, r in latest],
                list(latest.values()),
            )
        if not rows:
            return
        await self._conn.execute(
            """
            INSERT INTO quota_accounts AS a (consumer_group, account_id, partition, state)
            SELECT $1, account_id, partition, state
            FROM unnest($2::text[], $3::int[], $4::text[]) AS s(account_id, partition, state)
            ON CONFLICT (consumer_group, account_id) DO UPDATE
                SET partition = EXCLUDED.partition, state = EXCLUDED.state, updated_at = now()
            """,
            self._group,
            [row.account_id for row in rows],
            [row.partition for row in rows],
            [row.state_json for row in rows],
        )

    async def store_statuses(self, published: SeatStatuses) -> None:
        if not published:
            return
        seats = sorted(published)
        await self._conn.execute(
            """
            INSERT INTO quota_seat_status AS s (consumer_group, seat_id, account_id, status, reason)
            SELECT $1, * FROM unnest($2::text[], $3::text[], $4::text[], $5::text[])
            ON CONFLICT (consumer_group, seat_id) DO UPDATE
                SET account_id = EXCLUDED.account_id, status = EXCLUDED.status,
                    reason = EXCLUDED.reason, published_at = now()
            """,
            self._group,
            seats,
            [published[s][0] for s in seats],
            [published[s][1].status for s in seats],
            [published[s][1].reason for s in seats],
        )

    async def add_outgoing(self, messages: Sequence[Outgoing]) -> None:
        await OUTBOX.add(self._conn, messages)

    async def forget_request_ids(self) -> int:
        status = await self._conn.execute(
            "DELETE FROM quota_request_ids r USING quota_accounts a "
            "WHERE r.consumer_group = $1 AND a.consumer_group = r.consumer_group "
            "AND a.account_id = r.account_id "
            "AND r.remember_until <= (a.state::json->>'clock')::timestamptz",
            self._group,
        )
        return int(status.split()[-1])


@dataclass
class MemoryQuotaStore:
    """`QuotaStore` in memory, for one consumer group: the tables as plain collections.

    Its writes take effect at once; a test that rolls a batch back restores `copy()`."""

    offsets: dict[str, dict[int, int]] = field(default_factory=dict)
    """topic → partition → next offset (what the consumer would have written)."""
    states: dict[str, tuple[int, str]] = field(default_factory=dict)
    """account id → (partition, state JSON)."""
    request_ids: dict[tuple[str, str], datetime] = field(default_factory=dict)
    published: SeatStatuses = field(default_factory=dict)
    outbox: list[Outgoing] = field(default_factory=list)

    def copy(self) -> MemoryQuotaStore:
        return MemoryQuotaStore(
            {topic: dict(offsets) for topic, offsets in self.offsets.items()},
            dict(self.states),
            dict(self.request_ids),
            dict(self.published),
            list(self.outbox),
        )

    async def applied_offsets(self, topic: str) -> dict[int, int]:
        return dict(self.offsets.get(topic, {}))

    def _clock(self, account_id: str) -> datetime | None:
        return load_snapshot(self.states[account_id][1]).clock

    async def accounts(self, partition: int | None = None) -> list[StoredAccount]:
        stored = []
        for account_id, (at, text) in self.states.items():
            if partition is not None and at != partition:
                continue
            clock = self._clock(account_id)
            remembered = [
                (request_id, until)
                for (holder, request_id), until in self.request_ids.items()
                if holder == account_id and clock is not None and until > clock
            ]
            stored.append(StoredAccount(account_id, at, load_snapshot(text, remembered)))
        return stored

    async def statuses(self, account_ids: Sequence[str] | None = None) -> SeatStatuses:
        return {
            seat_id: held
            for seat_id, held in self.published.items()
            if account_ids is None or held[0] in account_ids
        }

    async def store_accounts(
        self, rows: Sequence[AccountRow], deducted: Sequence[Deducted]
    ) -> None:
        for account_id, request_id, until in deducted:
            self.request_ids[account_id, request_id] = until
        for row in rows:
            self.states[row.account_id] = (row.partition, row.state_json)

    async def store_statuses(self, published: SeatStatuses) -> None:
        self.published.update(published)

    async def add_outgoing(self, messages: Sequence[Outgoing]) -> None:
        self.outbox += messages

    async def forget_request_ids(self) -> int:
        forgotten = [
            (account_id, request_id)
            for (account_id, request_id), until in self.request_ids.items()
            if account_id in self.states
            and (clock := self._clock(account_id)) is not None
            and until <= clock
        ]
        for held in forgotten:
            del self.request_ids[held]
        return len(forgotten)
