"""A migrated database of a test module's own, and connections whose work is rolled back:
for the store contracts (tests/*_store_contract.py) run against PostgreSQL."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from metering.db import migrate_url
from metering.stack import Stack


async def migrated_database(stack: Stack, prefix: str) -> str:
    """The URL of a new database on the stack's server, with every migration applied."""
    name = f"{prefix}{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(stack.database_url)
    try:
        await admin.execute(f"CREATE DATABASE {name}")
    finally:
        await admin.close()
    url = urlunsplit(urlsplit(stack.database_url)._replace(path=f"/{name}"))
    await migrate_url(url)
    return url


@asynccontextmanager
async def rolled_back(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    """A connection inside a transaction that is rolled back at the end."""
    conn = await asyncpg.connect(database_url)
    transaction = conn.transaction()
    await transaction.start()
    try:
        yield conn
    finally:
        await transaction.rollback()
        await conn.close()
