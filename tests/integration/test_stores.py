"""The stores' contracts (tests/*_store_contract.py) against PostgreSQL: one migrated
database of this module's own, each test inside a transaction that is rolled back."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from ledger.store import PostgresLedgerStore
from metering.db import Connection
from metering.stack import Stack
from quota.store import PostgresQuotaStore
from tests.integration.migrated import migrated_database, rolled_back
from tests.ledger_store_contract import LedgerStoreContract
from tests.quota_store_contract import QuotaStoreContract

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
