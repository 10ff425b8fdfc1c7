"""The quota store's contract (tests/quota_store_contract.py) against PostgreSQL: a
migrated database of its own, each test inside a transaction that is rolled back."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from metering.db import migrate_url
from metering.stack import Stack
from quota.store import PostgresQuotaStore
from tests.quota_store_contract import QuotaStoreContract

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
async def database_url(stack: Stack) -> str:
    name = f"qs{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(stack.database_url)
    try:
        await admin.execute(f"CREATE DATABASE {name}")
    finally:
        await admin.close()
    url = urlunsplit(urlsplit(stack.database_url)._replace(path=f"/{name}"))
    await migrate_url(url)
    return url


class TestPostgresQuotaStore(QuotaStoreContract):
    @pytest.fixture
    async def store(self, database_url: str) -> AsyncIterator[PostgresQuotaStore]:
        conn = await asyncpg.connect(database_url)
        transaction = conn.transaction()
        await transaction.start()
        try:
            yield PostgresQuotaStore(conn, "test-group")
        finally:
            await transaction.rollback()
            await conn.close()

    async def outbox(self, store: PostgresQuotaStore) -> list[tuple[str, str, bytes]]:
        rows = await store._conn.fetch("SELECT topic, key, value FROM quota_outbox ORDER BY id")
        return [(row["topic"], row["key"], row["value"]) for row in rows]
