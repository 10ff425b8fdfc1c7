"""The migration runner against the real PostgreSQL: idempotent, ordered, refuses drift."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest

from metering.db import Migration, MigrationDrift, bundled_migrations, migrate
from metering.stack import Stack

pytestmark = pytest.mark.integration


@pytest.fixture
async def scratch(stack: Stack) -> AsyncIterator[asyncpg.Connection]:
    """A connection whose search_path is a fresh schema, dropped afterwards."""
    conn = await asyncpg.connect(stack.database_url)
    await conn.execute("DROP SCHEMA IF EXISTS migration_test CASCADE; CREATE SCHEMA migration_test")
    await conn.execute("SET search_path TO migration_test")
    try:
        yield conn
    finally:
        await conn.execute("DROP SCHEMA migration_test CASCADE")
        await conn.close()


async def test_applies_in_order_once(scratch: asyncpg.Connection) -> None:
    first = Migration(1, "0001_a.sql", "CREATE TABLE a (x int)")
    second = Migration(2, "0002_b.sql", "INSERT INTO a VALUES (1)")
    assert await migrate(scratch, [first, second]) == ["0001_a.sql", "0002_b.sql"]
    assert await migrate(scratch, [first, second]) == []
    assert await scratch.fetchval("SELECT count(*) FROM a") == 1


async def test_a_failing_migration_leaves_nothing_half_done(scratch: asyncpg.Connection) -> None:
    good = Migration(1, "0001_a.sql", "CREATE TABLE a (x int)")
    bad = Migration(2, "0002_b.sql", "CREATE TABLE b (x int); SELECT no_such_function()")
    with pytest.raises(asyncpg.UndefinedFunctionError):
        await migrate(scratch, [good, bad])
    assert await scratch.fetchval("SELECT to_regclass('b')") is None
    assert await scratch.fetchval("SELECT max(version) FROM schema_migrations") == 1


async def test_an_edited_applied_migration_is_refused(scratch: asyncpg.Connection) -> None:
    await migrate(scratch, [Migration(1, "0001_a.sql", "CREATE TABLE a (x int)")])
    with pytest.raises(MigrationDrift, match=r"0001_a\.sql changed"):
        await migrate(scratch, [Migration(1, "0001_a.sql", "CREATE TABLE a (y int)")])


def test_bundled_migrations_are_numbered_uniquely() -> None:
    versions = [m.version for m in bundled_migrations()]
    assert versions == sorted(set(versions))
    assert versions[0] == 1
