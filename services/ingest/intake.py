"""Accepting facts: claim under an idempotency key, publish with acknowledgement, confirm.

A caller hears "accepted" only after the broker acknowledged the event (acks=all).

Usage reports are accepted in *rounds* (group commit): every report that arrives while a
round is under way joins the next one, and a round is one transaction: look up the keys,
claim every report under its account and request id, publish the new ones and wait for the
broker's acknowledgements, then commit. A report's event id is derived from its account,
request id and body (`usage_event_id`), so a report the broker took whose commit was then
lost (a crash, a 503) is published again, by the caller's retry, under the same id, and
consumers skip it. One write per report, no later update, one produce round for many requests.

Plan commands are claimed first (with their change to the directory), then published, then
marked published; when the broker does not answer, the command stays claimed under its key
and event id, and a retry or the relay publishes it under that same id. The publishing goes
in rounds too: the facts of commands committed while a round waits for the broker go out
together in the next one.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Generic, Literal, TypeVar

import asyncpg
import orjson
from asyncpg.pgproto.pgproto import UUID as _FastUUID
from faststream.kafka import KafkaBroker

from ingest import metrics
from ingest.acceptance import AcceptanceLog, Claim, Claimed, Outcome, body_hash
from ingest.directory import keys_of
from ingest.rules import FieldProblem, UsageWindow, envelope, usage_envelope, usage_problems
from metering.core.ratecard import RateCard
from metering.db import Connection
from metering.publishing import BrokerUnavailable, Outgoing, publish_all
from schemas.api import UsageReport
from schemas.base import Contract

UsageStatus = Literal["accepted", "duplicate", "conflict", "invalid"]
Clock = Callable[[], datetime]

USAGE_EVENT_NAMESPACE = uuid.UUID("0c2f4a8e-61d3-4b7a-9e15-3f8a2d6c4b91")
ROUND_MAX_REPORTS = 2_000
"""A round takes the waiting requests up to about this many reports (a request is never split)."""
ROUNDS_IN_FLIGHT = 2
"""Rounds under way at once: while one waits for the broker, the next one is being claimed."""
ROUND_FILL_REPORTS = 100
"""A round with fewer reports than this waits for more while another round is under way..."""
ROUND_LINGER_SECONDS = 0.005
"""...but no longer than this: every round is a record batch per partition it touches, and the
embedded broker's fetches cost more with every batch it stores (README, issue 17 step 14)."""

Item = TypeVar("Item")
Answer = TypeVar("Answer")


def usage_event_id(account_id: str, request_id: str, digest: bytes) -> uuid.UUID:
    """The event id of an account's usage report with this body digest: the same report
    always has the same id, so publishing it again (after a lost commit) is harmless, as
    consumers skip an id they have. The body is part of it: a request id used again for
    another report, once every memory of the first has gone, is a new event.

    It is ``uuid5(USAGE_EVENT_NAMESPACE, name)``, computed here without `uuid.uuid5`'s
    intermediate objects (a third of the cost, once per report; tests/unit/test_ingest_rounds.py
    checks it against `uuid.uuid5`). The object is asyncpg's own `UUID`, what it returns for a
    uuid column: a `uuid.UUID` (equal, same hash and text) written in C, made in 0.12 µs
    instead of 1.31 and turned into text (the envelope, the answer) in 0.08 instead of 0.88."""
    name = orjson.dumps([account_id, request_id, digest.hex()])  # no ambiguity
    hashed = bytearray(hashlib.sha1(_NAMESPACE_BYTES + name).digest()[:16])
    hashed[6] = (hashed[6] & 0x0F) | 0x50  # version 5
    hashed[8] = (hashed[8] & 0x3F) | 0x80  # RFC 4122 variant
    return _FastUUID(bytes(hashed))


_NAMESPACE_BYTES = USAGE_EVENT_NAMESPACE.bytes


@dataclass(frozen=True)
class UsageResult:
    """What became of one usage report."""

    status: UsageStatus
    event_id: uuid.UUID | None = None
    problems: list[FieldProblem] = field(default_factory=list)
    """Why an invalid or conflicting report was refused."""


def count_usage(results: Sequence[UsageResult]) -> None:
    """Record one call's results (HTTP or Kafka) in the metrics: counted first, then one
    increment per status and reason (a labelled child's lookup per report cost more)."""
    metrics.BATCH_SIZE.observe(len(results))
    statuses = Counter(result.status for result in results)
    reasons = Counter(problem.reason for result in results for problem in result.problems)
    for status, n in statuses.items():
        metrics.USAGE_REPORTS.labels(status).inc(n)
    for reason, n in reasons.items():
        metrics.REJECTIONS.labels(reason).inc(n)


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
        self._rounds: Rounds[UsageReport, list[UsageResult]] = Rounds(self._usage_round)
        self._publications: Rounds[Claimed, None] = Rounds(self._publication_round)

    async def accept_usage(self, reports: Sequence[UsageReport]) -> list[UsageResult]:
        """Accept a batch of reports in the next round (see the module's docstring)."""
        if not reports:
            return []
        return await self._rounds.submit(reports)

    async def _usage_round(
        self, requests: Sequence[Sequence[UsageReport]]
    ) -> list[list[UsageResult]]:
        """One round: one transaction, one lookup of keys, one claim, one round of acks."""
        now = self._clock()
        async with self._pool().acquire() as conn, conn.transaction():
            keys = await keys_of(conn, [r.key_id for reports in requests for r in reports])
            answers: list[list[UsageResult | None]] = []
            claims: list[Claim] = []
            for reports in requests:
                answer: list[UsageResult | None] = []
                for report in reports:
                    problems = usage_problems(
                        report, self._card, self._window, now, keys.get(report.key_id)
                    )
                    if problems:
                        answer.append(UsageResult("invalid", problems=problems))
                        continue
                    answer.append(None)
                    dumped = report.model_dump(mode="json")
                    digest = body_hash(dumped)
                    event_id = usage_event_id(report.account_id, report.request_id, digest)
                    claims.append(
                        Claim(
                            scope=f"usage:{report.account_id}",
                            key=report.request_id,
                            body_hash=digest,
                            event_id=event_id,
                            account_id=report.account_id,
                            envelope=usage_envelope(
                                report, dumped, event_id=event_id, recorded_at=now
                            ),
                            response={},
                        )
                    )
                answers.append(answer)
            claimed = await self._log.claim(claims, conn, published=True) if claims else []
            await self._publish(claimed, mark=False)
        judged = iter(
            _usage_result(c, report_id=claim.key) for c, claim in zip(claimed, claims, strict=True)
        )
        return [
            [result if result is not None else next(judged) for result in answer]
            for answer in answers
        ]

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
        await self._publications.submit([claimed])
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

    async def _publication_round(self, commands: Sequence[Sequence[Claimed]]) -> list[None]:
        """Publish the facts of the plan commands whose claims committed while the previous
        round waited for the broker, in one produce, and mark them published in one update:
        provisioning's commands (64 teams at once in `make bench`) had each made its own
        one-message record batch, and the embedded broker's fetches cost more with every
        batch it stores (issue 17)."""
        await self._publish([claimed for command in commands for claimed in command])
        return [None] * len(commands)

    async def _publish(self, claimed: Sequence[Claimed], mark: bool = True) -> None:
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
        if mark:
            await self._log.mark_published(list(due))


class Rounds(Generic[Item, Answer]):
    """Group commit: requests that arrive while rounds are under way wait for the next one.

    `submit` queues a request's items and waits for its answer; up to `in_flight` rounds run
    at once, each taking the requests waiting (whole, up to about `max_items` items). While a
    round is under way, the next one starts once `fill` items wait, the round under way ends,
    or `linger` seconds pass, whichever comes first (a lone request on an idle service never
    waits): fewer, fuller rounds when many small requests come at once. A round that fails
    fails each of its requests with its error (a broker outage: every caller is told to
    retry). ingest runs usage reports through rounds of acceptance, and plan commands' facts
    through rounds of publication (one produce for the commands of many teams).
    """

    def __init__(
        self,
        run: Callable[[Sequence[Sequence[Item]]], Awaitable[list[Answer]]],
        in_flight: int = ROUNDS_IN_FLIGHT,
        max_items: int = ROUND_MAX_REPORTS,
        fill: int = ROUND_FILL_REPORTS,
        linger: float = ROUND_LINGER_SECONDS,
    ) -> None:
        self._run = run
        self._waiting: list[tuple[Sequence[Item], asyncio.Future[Answer]]] = []
        self._waiting_items = 0
        self._slots = in_flight
        self._max_items = max_items
        self._fill = fill
        self._linger = linger
        self._under_way = 0
        self._nudge = asyncio.Event()  # enough items wait, or a round ended

    async def submit(self, items: Sequence[Item]) -> Answer:
        answer: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
        answer.add_done_callback(_retrieved)  # a caller that went away leaves no warning
        self._waiting.append((items, answer))
        self._waiting_items += len(items)
        if self._waiting_items >= self._fill:
            self._nudge.set()
        if self._slots:
            self._slots -= 1
            asyncio.get_running_loop().create_task(self._rounds())
        return await asyncio.shield(answer)

    async def _rounds(self) -> None:
        try:
            lingered = False
            while self._waiting:
                if (
                    not lingered
                    and self._under_way
                    and self._waiting_items < self._fill
                    and self._linger > 0
                ):
                    lingered = True
                    self._nudge.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._nudge.wait(), self._linger)
                    continue  # the round that ended may have taken them
                lingered = False
                taken, size = 0, 0
                while taken < len(self._waiting) and (
                    not taken or size + len(self._waiting[taken][0]) <= self._max_items
                ):
                    size += len(self._waiting[taken][0])
                    taken += 1
                round_, self._waiting = self._waiting[:taken], self._waiting[taken:]
                self._waiting_items -= size
                self._under_way += 1
                try:
                    results = await self._run([items for items, _ in round_])
                except BaseException as error:  # every caller of the round hears it
                    for _, answer in round_:
                        if not answer.done():
                            answer.set_exception(error)
                    if not isinstance(error, Exception):
                        raise
                else:
                    for (_, answer), result in zip(round_, results, strict=True):
                        if not answer.done():
                            answer.set_result(result)
                finally:
                    self._under_way -= 1
                    self._nudge.set()
        finally:
            self._slots += 1


def _retrieved(answer: asyncio.Future[Any]) -> None:
    if not answer.cancelled():
        answer.exception()


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
