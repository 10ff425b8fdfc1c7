"""The adapters one service process holds, and their lifecycle and readiness.

A service builds one `ServiceRuntime`, registers its subscribers on `runtime.broker`, and hands
`runtime.lifespan` to its HTTP app. Start-up migrates the database, opens the pool and starts
the broker; shutdown (SIGTERM through uvicorn) stops the subscribers first, letting the batch
in hand finish, then closes the pool.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Protocol

import asyncpg
from fastapi import FastAPI
from faststream import AckPolicy
from faststream.kafka import KafkaBroker
from faststream.kafka.subscriber.usecase import BatchSubscriber

from metering.db import create_pool, migrate_url
from metering.gc_tuning import tune_for_long_lived_state
from metering.http import Readiness
from metering.kafka import broker_security
from metering.settings import Settings

log = logging.getLogger(__name__)

#: Seconds a stopping subscriber may spend finishing the message or batch in hand.
GRACEFUL_TIMEOUT = 20.0
#: Group membership timings of every consumer: a dead member's partitions move after 6 s.
SESSION_TIMEOUT_MS = 6000
HEARTBEAT_INTERVAL_MS = 1000
#: Bytes the producer gathers per partition into one batch: aiokafka's 16 KiB default holds
#: about ten ledger results, so a relay round of a thousand went out in a hundred batches.
PRODUCER_BATCH_BYTES = 512 * 1024


class Worker(Protocol):
    """A background loop a service runs beside its HTTP API (a raw consumer, an outbox relay).

    Started after the pool and the broker, stopped before them; `ready()` joins the
    "consumers" readiness check.
    """

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def ready(self) -> bool: ...


class ServiceRuntime:
    """Settings, a Kafka broker (producer and subscribers) and a PostgreSQL pool."""

    def __init__(self, service: str, settings: Settings) -> None:
        self.service = service
        self.settings = settings
        self.broker = KafkaBroker(
            settings.kafka_bootstrap_servers,
            client_id=f"metering-{service}",
            acks="all",
            max_batch_size=PRODUCER_BATCH_BYTES,
            allow_auto_create_topics=False,
            graceful_timeout=GRACEFUL_TIMEOUT,
            security=broker_security(settings),
            logger=logging.getLogger("metering.kafka"),
            log_level=logging.DEBUG,
        )
        self._pool: asyncpg.Pool | None = None
        self._workers: list[Worker] = []
        self.readiness = Readiness()
        self.readiness.add("database", self._database_answers)
        self.readiness.add("broker", self._broker_answers)
        self.readiness.add("consumers", self._consumers_assigned)

    def batch_subscriber(
        self, topic: str, group_id: str, ack_policy: AckPolicy = AckPolicy.ACK
    ) -> BatchSubscriber:
        """A consumer-group member reading `topic` in batches from the earliest offset."""
        return self.broker.subscriber(
            topic,
            group_id=group_id,
            batch=True,
            max_records=1000,
            auto_offset_reset="earliest",
            session_timeout_ms=SESSION_TIMEOUT_MS,
            heartbeat_interval_ms=HEARTBEAT_INTERVAL_MS,
            ack_policy=ack_policy,
        )

    def add_worker(self, worker: Worker) -> None:
        """Run `worker` for the life of the service (started in the order added)."""
        self._workers.append(worker)

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise RuntimeError("the database pool is used before the service started")
        return self._pool

    @asynccontextmanager
    async def lifespan(self, _app: FastAPI) -> AsyncIterator[None]:
        applied = await migrate_url(self.settings.database_url)
        if applied:
            log.info("migrations applied", extra={"migrations": applied})
        self._pool = await create_pool(
            self.settings.database_url,
            statement_timeout=self.settings.database_statement_timeout_seconds,
            acquire_timeout=self.settings.database_acquire_timeout_seconds,
        )
        try:
            await self.broker.start()
            for worker in self._workers:
                await worker.start()
            tune_for_long_lived_state()  # after the workers loaded their state
            log.info("service started", extra={"port": self.settings.http_port})
            yield
        finally:
            log.info("service stopping: finishing work in hand")
            for worker in reversed(self._workers):
                await worker.stop()
            await self.broker.stop()
            await self._pool.close()
            self._pool = None
            log.info("service stopped")

    async def _database_answers(self) -> bool:
        return self._pool is not None and await self._pool.fetchval("SELECT 1") == 1

    async def _broker_answers(self) -> bool:
        return await self.broker.ping(timeout=1.0)

    async def _consumers_assigned(self) -> bool:
        """Every subscriber is running and every worker (projections) is ready.

        A side-door subscriber (ingest's Kafka entry) needs no partition of its own to be
        ready: HTTP is the service's job, and a member without one is a standby, so ingest can
        scale beyond the entry topic's partitions. Projection workers do need partitions.
        """
        return all(
            sub.consumer is not None  # type: ignore[attr-defined]
            for sub in self.broker.subscribers
        ) and all(worker.ready() for worker in self._workers)
