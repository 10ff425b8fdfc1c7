"""Accepting facts: claim under an idempotency key, publish with acknowledgement, confirm.

A caller hears "accepted" only after the broker acknowledged the event (acks=all). When the
broker does not answer, `BrokerUnavailable` propagates (the API answers 503): the fact stays
claimed under its key and event id, so a retry of the same call, or the relay, publishes it
under that same id and nothing is ever counted twice.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Literal

import asyncpg
from faststream.kafka import KafkaBroker

from ingest import metrics
from ingest.acceptance import AcceptanceLog, Claim, Claimed, Outcome, body_hash
from ingest.directory import KeyRecord, keys_of
from ingest.rules import FieldProblem, UsageWindow, envelope, usage_problems, usage_recorded
from metering.core.ratecard import RateCard
from metering.db import Connection
from metering.publishing import BrokerUnavailable, Outgoing, publish_all
from schemas.api import UsageReport
from schemas.base import Contract

UsageStatus = Literal["accepted", "duplicate", "conflict", "invalid"]
Clock = Callable[[], datetime]


@dataclass(frozen=True)
class UsageResult:
    """What became of one usage report."""

    status: UsageStatus
    event_id: uuid.UUID | None = None
    problems: list[FieldProblem] = field(default_factory=list)
    """Why an invalid or conflicting report was refused."""


def count_usage(results: Sequence[UsageResult]) -> None:
    """Record one call's results (HTTP or Kafka) in the metrics."""
    metrics.BATCH_SIZE.observe(len(results))
    for result in results:
        metrics.USAGE_REPORTS.labels(result.status).inc()
        for problem in result.problems:
            metrics.REJECTIONS.labels(problem.reason).inc()


@dataclass(frozen=True)
class PlanCommand:
    """One plan fact to append, with its idempotency key and its effect on the directory.

    `apply_to_directory` runs inside the accepting transaction; it raises `DirectoryError`
    when the command could not take effect, and returns the account the fact belongs to.
    `recorded_at` is the server's clock at the command: what the registry judged it by, and
    the fact's recording time, so the fold judges it by the same instant.
    """

    scope: str
    key: str
    body: object
    event_type: str
    payload: Contract
    occurred_at: datetime
    recorded_at: datetime
    apply_to_directory: Callable[[Connection], Awaitable[str]]
    response: dict[str, object] = field(default_factory=dict)


@dataclass(frozen=True)
class CommandResult:
    outcome: Outcome
    event_id: uuid.UUID
    response: dict[str, object]


class Intake:
    """ingest's acceptance of usage reports and plan commands.

    `pool` gives the service's pool once it has started: an intake exists before that.
    """

    def __init__(
        self,
        pool: Callable[[], asyncpg.Pool],
        broker: KafkaBroker,
        card: RateCard,
        window: UsageWindow,
        clock: Clock,
        events_topic: str,
    ) -> None:
        self._pool = pool
        self._log = AcceptanceLog(pool)
        self._broker = broker
        self._card = card
        self._window = window
        self._clock = clock
        self._events_topic = events_topic

    async def accept_usage(self, reports: Sequence[UsageReport]) -> list[UsageResult]:
        """Accept a batch of reports: one database round trip, one round of acks."""
        now = self._clock()
        keys = await self._keys_of(reports)
        results: list[UsageResult | None] = []
        claims: list[Claim] = []
        for report in reports:
            key = keys.get(report.key_id)
            problems = usage_problems(report, self._card, self._window, now, key)
            if problems:
                results.append(UsageResult("invalid", problems=problems))
                continue
            results.append(None)
            event_id = uuid.uuid4()
            claims.append(
                Claim(
                    scope=f"usage:{report.account_id}",
                    key=report.request_id,
                    body_hash=body_hash(report.model_dump(mode="json")),
                    event_id=event_id,
                    account_id=report.account_id,
                    envelope=envelope(
                        "UsageRecorded",
                        usage_recorded(report),
                        event_id=event_id,
                        account_id=report.account_id,
                        occurred_at=report.occurred_at,
                        recorded_at=now,
                    ),
                    response={},
                )
            )
        claimed = await self._log.claim(claims) if claims else []
        await self._publish(claimed)
        judged = iter(
            _usage_result(c, report_id=claim.key) for c, claim in zip(claimed, claims, strict=True)
        )
        return [result if result is not None else next(judged) for result in results]

    async def _keys_of(self, reports: Sequence[UsageReport]) -> dict[str, KeyRecord]:
        if not reports:
            return {}
        async with self._pool().acquire() as conn:
            return await keys_of(conn, [r.key_id for r in reports])

    async def accept_command(self, command: PlanCommand) -> CommandResult:
        """Append one plan fact, changing the directory in the same transaction as its claim."""
        digest = body_hash(command.body)
        for attempt in range(2):
            try:
                claimed = await self._claim_command(command, digest)
                break
            except asyncpg.UniqueViolationError:
                if attempt:  # a concurrent command took the same id twice in a row
                    raise
        await self._publish([claimed])
        metrics.PLAN_COMMANDS.labels(command.event_type, claimed.outcome.value).inc()
        return CommandResult(claimed.outcome, claimed.event_id, claimed.response)

    async def _claim_command(self, command: PlanCommand, digest: bytes) -> Claimed:
        async with self._pool().acquire() as conn, conn.transaction():
            earlier = await self._log.find(command.scope, command.key, digest, conn)
            if earlier is not None:
                return earlier
            account_id = await command.apply_to_directory(conn)
            event_id = uuid.uuid4()
            claim = Claim(
                scope=command.scope,
                key=command.key,
                body_hash=digest,
                event_id=event_id,
                account_id=account_id,
                envelope=envelope(
                    command.event_type,
                    command.payload,
                    event_id=event_id,
                    account_id=account_id,
                    occurred_at=command.occurred_at,
                    recorded_at=command.recorded_at,
                ),
                response={"event_id": str(event_id), **command.response},
            )
            [claimed] = await self._log.claim([claim], conn)
            return claimed

    async def forget_old_usage(self) -> int:
        """Forget usage reports no duplicate of which can still be accepted (the lateness
        and skew allowed, plus an hour): ingest's memory of request ids stays bounded."""
        window = self._window
        return await self._log.forget_usage(
            window.max_lateness + window.max_future_skew + timedelta(hours=1)
        )

    async def republish_unconfirmed(self, older_than_seconds: float, limit: int = 500) -> int:
        """The relay's work: publish facts stored but never acknowledged; returns how many."""
        stale = await self._log.unpublished(older_than_seconds, limit)
        await self._publish(stale)
        metrics.RELAYED.inc(len(stale))
        return len(stale)

    async def _publish(self, claimed: Sequence[Claimed]) -> None:
        due = {c.event_id: c for c in claimed if c.outcome in (Outcome.NEW, Outcome.UNCONFIRMED)}
        messages = [
            Outgoing(self._events_topic, c.account_id, c.envelope)
            for c in due.values()
            if c.envelope
        ]
        started = time.perf_counter()
        try:
            await publish_all(self._broker, messages)
        except BrokerUnavailable:
            metrics.BROKER_UNAVAILABLE.inc()
            raise
        if messages:
            metrics.BROKER_ACK_SECONDS.observe(time.perf_counter() - started)
        await self._log.mark_published(list(due))


def _usage_result(claimed: Claimed, report_id: str) -> UsageResult:
    if claimed.outcome is Outcome.CONFLICT:
        return UsageResult(
            "conflict",
            claimed.event_id,
            [
                FieldProblem(
                    "request_id",
                    f"'{report_id}' was already used for a different report "
                    f"(event {claimed.event_id}); a retry must resend the same body",
                    "conflicting_report",
                )
            ],
        )
    if claimed.outcome in (Outcome.DUPLICATE, Outcome.UNCONFIRMED):
        # UNCONFIRMED: claimed earlier (by a concurrent call, or by this caller's attempt that
        # answered 503), published again now under the same id: one charge, one 202 in all
        return UsageResult("duplicate", claimed.event_id)
    return UsageResult("accepted", claimed.event_id)
