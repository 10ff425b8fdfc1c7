"""PostgreSQL access: connection pools and the migration runner.

Migrations are plain SQL files in `metering/migrations/`, named `NNNN_what.sql` and applied in
order, each in its own transaction, recorded in `schema_migrations`. An advisory lock makes
concurrent starts (several replicas, `metering migrate`) safe; applying twice is a no-op.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from importlib import resources
from typing import Any

import asyncpg
from asyncpg.pool import PoolAcquireContext, PoolConnectionProxy

#: A connection of its own or one borrowed from a pool: both run queries and transactions.
Connection = asyncpg.Connection | PoolConnectionProxy

_MIGRATION_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")
_MIGRATION_LOCK = 0x6D65746572  # "meter": the advisory lock key serialising migrations


@dataclass(frozen=True)
class Migration:
    """One SQL file of the migrations folder."""

    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def bundled_migrations() -> list[Migration]:
    """The migrations shipped in the package, in version order."""
    found = []
    for entry in resources.files("metering.migrations").iterdir():
        match = _MIGRATION_NAME.match(entry.name)
        if match:
            found.append(Migration(int(match.group(1)), entry.name, entry.read_text()))
        elif entry.name.endswith(".sql"):
            raise ValueError(f"migration {entry.name!r} is not named NNNN_lowercase_words.sql")
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise ValueError(f"two migrations share a version number: {versions}")
    return found


class MigrationDrift(RuntimeError):
    """An applied migration's file has changed since it ran: the schema is not what it says."""


async def migrate(conn: asyncpg.Connection, migrations: list[Migration] | None = None) -> list[str]:
    """Apply the migrations not yet applied; returns the names applied now."""
    migrations = bundled_migrations() if migrations is None else migrations
    await conn.execute("SELECT pg_advisory_lock($1)", _MIGRATION_LOCK)
    try:
        await conn.execute(
            """CREATE TABLE IF NOT EXISTS schema_migrations (
                   version integer PRIMARY KEY,
                   name text NOT NULL,
                   checksum text NOT NULL,
                   applied_at timestamptz NOT NULL DEFAULT now())"""
        )
        applied = {
            row["version"]: row
            for row in await conn.fetch("SELECT version, name, checksum FROM schema_migrations")
        }
        done = []
        for migration in migrations:
            if migration.version in applied:
                if applied[migration.version]["checksum"] != migration.checksum:
                    raise MigrationDrift(
                        f"migration {migration.name} changed after it was applied; "
                        "add a new migration instead of editing an applied one"
                    )
                continue
            async with conn.transaction():
                await conn.execute(migration.sql)
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                    migration.version,
                    migration.name,
                    migration.checksum,
                )
            done.append(migration.name)
        return done
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _MIGRATION_LOCK)


async def migrate_url(database_url: str) -> list[str]:
    """Connect, migrate, disconnect: what service start-up and `metering migrate` call."""
    conn = await asyncpg.connect(database_url)
    try:
        return await migrate(conn)
    finally:
        await conn.close()


DATABASE_UNAVAILABLE: tuple[type[Exception], ...] = (
    TimeoutError,  # a statement, an acquire or a connect that took longer than allowed
    asyncpg.QueryCanceledError,  # the server's statement_timeout
    asyncpg.PostgresConnectionError,
    asyncpg.ConnectionDoesNotExistError,
    ConnectionError,
)
"""What a stalled or unreachable database raises: the HTTP APIs answer 503 with Retry-After."""


class TimedPool(asyncpg.Pool):
    """A pool whose acquire and release never wait longer than `acquire_timeout` by default.

    asyncpg waits forever unless each call passes a timeout; a stalled database (paused,
    partitioned, out of connections) must cost a request seconds, not minutes. A release that
    times out (a connection still cancelling a timed-out statement) closes that connection.
    """

    def __init__(self, *args: Any, acquire_timeout: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.acquire_timeout = acquire_timeout

    def acquire(self, *, timeout: float | None = None) -> PoolAcquireContext:
        return super().acquire(timeout=self.acquire_timeout if timeout is None else timeout)


async def create_pool(
    database_url: str,
    max_size: int = 10,
    *,
    statement_timeout: float = 10.0,
    acquire_timeout: float = 5.0,
) -> asyncpg.Pool:
    """A connection pool for one service, with statement, connect and acquire timeouts.

    `statement_timeout` is both the client's wait for any statement (asyncpg's
    `command_timeout`: it also covers a server that stopped answering) and the server's
    `statement_timeout`; connecting and acquiring wait at most `acquire_timeout`.
    """
    pool = TimedPool(
        database_url,
        min_size=1,
        max_size=max_size,
        max_queries=50_000,
        max_inactive_connection_lifetime=300.0,
        connect=None,
        setup=None,
        init=None,
        reset=None,
        loop=None,
        connection_class=asyncpg.Connection,
        record_class=asyncpg.Record,
        acquire_timeout=acquire_timeout,
        command_timeout=statement_timeout,
        timeout=acquire_timeout,
        server_settings={"statement_timeout": str(int(statement_timeout * 1000))},
    )
    await pool
    return pool
