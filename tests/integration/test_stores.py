"""The stores' contracts (tests/*_store_contract.py) against PostgreSQL: one migrated
database of this module's own, each test inside a transaction that is rolled back."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import orjson
import pytest

from ledger.lookup import LookupStore
from ledger.store import (
    LedgerReads,
    PostgresLedgerStore,
    UsageFilter,
    UsageTotals,
    month_start,
)
from metering.db import Connection
from metering.stack import Stack
from quota.store import PostgresQuotaStore
from tests.integration.migrated import migrated_database, rolled_back
from tests.ledger_store_contract import T0, LedgerStoreContract
from tests.quota_store_contract import QuotaStoreContract
from tests.unit.event_builders import Facts

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
async def database_url(stack: Stack) -> str:
    return await migrated_database(stack, "st")


@pytest.fixture
async def conn(database_url: str) -> AsyncIterator[Connection]:
    async with rolled_back(database_url) as conn:
        yield conn


async def _outbox(conn: Connection, table: str) -> list[tuple[str, str, bytes]]:
    rows = await conn.fetch(f"SELECT topic, key, value FROM {table} ORDER BY id")
    return [(row["topic"], row["key"], row["value"]) for row in rows]


class TestPostgresLedgerStore(LedgerStoreContract):
    @pytest.fixture
    async def store(self, conn: Connection) -> PostgresLedgerStore:
        return PostgresLedgerStore(conn)

    async def outbox(self, store: PostgresLedgerStore) -> list[tuple[str, str, bytes]]:
        return await _outbox(store._conn, "ledger_outbox")


class TestPostgresQuotaStore(QuotaStoreContract):
    @pytest.fixture
    async def store(self, conn: Connection) -> PostgresQuotaStore:
        return PostgresQuotaStore(conn, "test-group")

    async def outbox(self, store: PostgresQuotaStore) -> list[tuple[str, str, bytes]]:
        return await _outbox(store._conn, "quota_outbox")


async def test_entries_written_before_bodies_were_text_read_the_same(conn: Connection) -> None:
    """Migration 0012 keeps the rows written before it in `body_jsonb`, without the usage
    count columns: every read of an entry (usage rows and totals, pack use, the audit's
    entries, "where did my fact go") must give the same answers for such a row."""
    facts = Facts("acct-old")
    hour = timedelta(hours=1)
    events = [
        *facts.team(T0, ("s1", "standard")),
        facts.usage(T0 + hour, "s1", credits=25_000),
        facts.buy_pack(T0 + 2 * hour, "p1"),
        facts.usage(T0 + 3 * hour, "s1", model="glm-5", input_tokens=900, output_tokens=40),
        facts.usage(T0 + 4 * hour, "s1", model="qwen-image-2.0", images=2),
        facts.usage(T0 + 5 * hour, "s9", credits=1),  # rejected: unknown seat
    ]
    archive, _, entries = LedgerStoreContract._stored(events)
    store = PostgresLedgerStore(conn)
    await store.ensure_archive_month(month_start(T0))
    await store.append(archive, entries)
    reads = LedgerReads(conn)
    everything = UsageFilter("sub-1", None, None, None, None)

    async def answers() -> tuple[UsageTotals, list[Any], list[Any], list[Any], list[Any]]:
        bodies = await reads.deduction_bodies(everything, None, 100)
        return (
            await store.usage_totals(everything),
            [orjson.loads(b) for b in bodies],
            [dict(r) for r in await reads.pack_paid("sub-1", T0, T0 + 30 * 24 * hour, T0)],
            sorted(
                (r["id"], r["source"], orjson.loads(r["body"]))
                for r in await reads.entries_of(["acct-old"])
            ),
            [await LookupStore(conn).event(uuid.UUID(e.event_id)) for e in events[-4:]],
        )

    now = await answers()
    totals, bodies, packs, _, lookups = now
    assert (totals.requests, totals.images) == (3, 2)
    assert totals.input_tokens > 900
    assert len(bodies) == 3
    assert packs
    assert all(lookups)
    rewritten = await conn.execute(
        "UPDATE ledger_entries SET body_jsonb = body::jsonb, body = NULL, input_tokens = NULL, "
        "cached_tokens = NULL, output_tokens = NULL, images = NULL"
    )
    assert rewritten == f"UPDATE {len(entries)}"
    assert await answers() == now
