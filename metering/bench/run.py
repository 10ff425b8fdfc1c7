"""The bench's order of play, on one stack and one set of services.

1. The stack (`start_stack`: external, containers or embedded), and a database, topics and
   consumer groups of the run's own on it, so a shared broker or database is not disturbed.
2. (a) the broker's ceiling and (e) the pure fold, while nothing else runs.
3. The three services (`run_services`, one uvicorn worker each) on the run's names, or
   services already running (`--ingest-url` ...); the fleet's subscriptions, seats, keys and
   packs through ingest; then (b) end to end, (c) freshness and (d) authorize.
4. The services stop; (f) replays the ledger's archive they filled.
5. `results.json`, `summary.md` and `throughput_latency.png` in the output directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import secrets
import shutil
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx
import orjson
from aiokafka.admin import AIOKafkaAdminClient

from metering.bench.authorize import AuthorizeResult, authorize_bench, authorize_requests
from metering.bench.broker import BrokerResult, broker_ceiling
from metering.bench.endtoend import (
    BACKLOG_SECONDS,
    SENDERS,
    Applied,
    EndToEndResult,
    FreshnessResult,
    Ingestor,
    Probe,
    ServerSide,
    Services,
    end_to_end,
    freshness,
    metrics_page,
)
from metering.bench.fold_bench import FoldResult, ReplayResult, fold_rate, replay_rate
from metering.bench.load import (
    Reports,
    UsageMix,
    event_log,
    make_fleet,
    provision,
    usage_envelope,
)
from metering.bench.monitor import CpuMonitor, Timeline
from metering.bench.report import Figure, git_commit, machine, write_all
from metering.core.ratecard import RateCard
from metering.db import migrate_url
from metering.dev import run_services, wait_until_ready
from metering.processes import free_port_run
from metering.settings import load_settings
from metering.stack import Stack, start_stack
from metering.topics import EVENTS, TopicSpec, ensure_topics

PARTITIONS = 6
FRESHNESS_TARGET_RATE = 10_000.0
FRESHNESS_SHARE_OF_SUSTAINED = 0.8
"""(c) offers at most this share of (b)'s sustained rate: more would only measure a queue."""


@dataclass(frozen=True)
class Durations:
    """Seconds of each timed phase."""

    broker: float = 10
    burst: float = 10
    sustained: float = 60
    freshness: float = 40
    authorize: float = 15
    """Of each of the two authorize steps (saturation, paced)."""
    fold: float = 10


FULL = Durations()
QUICK = Durations(broker=1, burst=1, sustained=3, freshness=3, authorize=1, fold=0.5)
OUTBOX_WAIT_SECONDS = 30.0
REPLAY_BUDGET_SECONDS = 60.0
"""(f) replays a subset of the accounts when the whole archive would take much longer."""
REPLAY_SHARE_OF_FOLD = 0.2
"""A cautious guess of replay's speed relative to the pure fold, to pick that subset."""


@dataclass(frozen=True)
class Options:
    out: Path
    quick: bool = False
    durations: Durations = FULL
    accounts: int = 50
    seats: int = 4
    fold_events: int = 100_000
    freshness_rate: float = FRESHNESS_TARGET_RATE
    state_dir: Path | None = None
    ingest_url: str | None = None
    ledger_url: str | None = None
    quota_url: str | None = None

    @classmethod
    def quick_defaults(cls, out: Path) -> Options:
        return cls(out=out, quick=True, durations=QUICK, accounts=8, seats=2, fold_events=5_000)

    @property
    def external_services(self) -> bool:
        return bool(self.ingest_url and self.ledger_url and self.quota_url)


@dataclass
class Measured:
    broker: BrokerResult | None = None
    fold: FoldResult | None = None
    end_to_end: EndToEndResult | None = None
    freshness: FreshnessResult | None = None
    authorize: AuthorizeResult | None = None
    authorize_service_us: float | None = None
    outbox_wait: dict[str, float] = field(default_factory=dict)
    replay: ReplayResult | None = None
    stack: dict[str, str] = field(default_factory=dict)
    accounts: list[str] = field(default_factory=list)
    """The run's accounts (the fleet's and the probes')."""
    published: int = 0
    """Events the run appended to the log."""


def run_bench(options: Options, log: Any = print) -> dict[str, Any]:
    """Run every phase and write the results; returns the results document."""
    wall = time.perf_counter()
    timeline = Timeline()
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    state_dir = (options.state_dir or Path(".run") / f"bench-{stamp}").resolve()
    state_dir.mkdir(parents=True, exist_ok=True)
    card = load_settings().rate_card()
    measured = Measured()
    log(f"bench: state and service logs in {state_dir}")
    try:
        with start_stack(state_dir / "stack", events_partitions=PARTITIONS) as stack:
            measured.stack = {
                "broker": {
                    "embedded": "Tansu (embedded)",
                    "container": "Kafka (container)",
                    "external": "KAFKA_BOOTSTRAP_SERVERS (external)",
                }[stack.kafka_origin],
                "database": {
                    "embedded": "PostgreSQL (embedded)",
                    "container": "PostgreSQL (container)",
                    "external": "DATABASE_URL (external)",
                }[stack.database_origin],
            }
            postgres_dir = state_dir / "stack" if stack.database_origin == "embedded" else None
            with CpuMonitor(timeline, postgres_dir) as cpu:
                _measure(options, stack, state_dir, card, timeline, measured, log)
    finally:
        shutil.rmtree(state_dir / "stack", ignore_errors=True)
    cpu_by_phase = cpu.by_phase()
    context = {
        "mode": "quick" if options.quick else "full",
        "wall_seconds": round(time.perf_counter() - wall, 1),
        "machine": machine(),
        "git": git_commit(),
        "stack": measured.stack,
        "notes": notes(measured, options, cpu_by_phase),
    }
    results = write_all(options.out, figures(measured), context, cpu_by_phase, timeline)
    log(f"bench: wrote {options.out}/results.json, summary.md and throughput_latency.png")
    return results


def _measure(
    options: Options,
    stack: Stack,
    state_dir: Path,
    card: RateCard,
    timeline: Timeline,
    measured: Measured,
    log: Any,
) -> None:
    tag = f"bench{uuid.uuid4().hex[:8]}"
    rng = random.Random(20260)
    d = options.durations

    log(f"(a) broker ceiling: aiokafka producing for {d.broker:.0f} s, then consuming")
    messages = _broker_messages(card, rng)
    with timeline.phase("a broker"):
        measured.broker = asyncio.run(
            broker_ceiling(stack.kafka_bootstrap_servers, messages, d.broker, timeline, PARTITIONS)
        )
    log(f"    {measured.broker.ceiling:,.0f} events/s")

    log(f"(e) pure fold: {options.fold_events:,} events, passes for {d.fold:.0f} s")
    fold_fleet = make_fleet(f"{tag}f", options.accounts, options.seats, rng)
    started = datetime(2026, 3, 1, tzinfo=UTC)
    reports = Reports(fold_fleet.seats, UsageMix(card, started, rng), f"{tag}f", rng)
    event_log_ = event_log(fold_fleet, reports, options.fold_events, started, timedelta(days=20))
    with timeline.phase("e fold"):
        measured.fold = fold_rate(event_log_, card, d.fold, timeline)
    del event_log_
    log(f"    {measured.fold.rate:,.0f} events/s")

    if options.external_services:
        assert options.ingest_url
        assert options.ledger_url
        assert options.quota_url
        token = os.environ.get("METERING_ADMIN_TOKEN", "")
        if not token:
            raise RuntimeError("METERING_ADMIN_TOKEN must be set to use running services")
        services = Services(
            options.ingest_url,
            options.ledger_url,
            options.quota_url,
            token,
            os.environ.get("EVENTS_TOPIC", EVENTS),
        )
        asyncio.run(_service_phases(options, services, card, timeline, measured, tag, log))
        database_url = stack.database_url
    else:
        database_url = asyncio.run(_own_database_and_topics(stack, tag))
        token = secrets.token_urlsafe(24)
        env = _service_environ(tag, database_url, token)
        try:
            base_port = free_port_run(3)
            with run_services(stack, state_dir, env, base_port) as running:
                log(f"services: starting ({', '.join(s.url for s in running)})")
                wait_until_ready(running)
                urls = {s.name: s.url for s in running}
                services = Services(
                    urls["ingest"], urls["ledger"], urls["quota"], token, env["EVENTS_TOPIC"]
                )
                asyncio.run(_service_phases(options, services, card, timeline, measured, tag, log))
            _replay(measured, database_url, card, timeline, log)
        finally:
            asyncio.run(_drop_database_and_topics(stack, tag))
        return
    _replay(measured, database_url, card, timeline, log, only_ours=True)


def _replay(
    measured: Measured,
    database_url: str,
    card: RateCard,
    timeline: Timeline,
    log: Any,
    only_ours: bool = False,
) -> None:
    """(f), on every account of the archive, or on enough of the run's own to fill the
    time budget when the whole would take much longer (estimated from the fold's speed)."""
    accounts: list[str] = []
    fold_rate_ = measured.fold.rate if measured.fold else 0.0
    expected = measured.published / max(1.0, fold_rate_ * REPLAY_SHARE_OF_FOLD)
    if only_ours or expected > REPLAY_BUDGET_SECONDS:
        share = min(1.0, REPLAY_BUDGET_SECONDS / expected) if expected else 1.0
        accounts = measured.accounts[: max(1, round(share * len(measured.accounts)))]
    what = f"{len(accounts)} of the run's accounts" if accounts else "every account"
    log(f"(f) replay of the ledger's archive: {what}")
    with timeline.phase("f replay"):
        measured.replay = asyncio.run(replay_rate(database_url, card, timeline, accounts))
    log(f"    {measured.replay.rate:,.0f} events/s")


async def _service_phases(
    options: Options,
    services: Services,
    card: RateCard,
    timeline: Timeline,
    measured: Measured,
    tag: str,
    log: Any,
) -> None:
    d = options.durations
    rng = random.Random(20261)
    auth = {"Authorization": f"Bearer {services.token}"}
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    async with (
        httpx.AsyncClient(
            base_url=services.ingest, headers=auth, timeout=60, limits=limits
        ) as ingest,
        httpx.AsyncClient(timeout=10) as plain,
    ):
        applied = Applied(plain, services, timeline)
        server = ServerSide(plain, services)
        await applied.poll()
        now = datetime.now(UTC)
        fleet = make_fleet(tag, options.accounts, options.seats, rng)
        probe_fleet = make_fleet(f"{tag}p", 1 if options.quick else 2, 4, rng)
        log(f"provisioning {len(fleet.teams)} subscriptions, {len(fleet.seats)} seats and keys")
        with timeline.phase("provision"):
            for f in (fleet, probe_fleet):
                await provision(ingest, f, now - timedelta(days=3))
        mix = UsageMix(card, now, rng)
        ingestor = Ingestor(ingest, Reports(fleet.seats, mix, tag, rng), timeline)
        ingestor.published = fleet.plan_facts + probe_fleet.plan_facts
        measured.accounts = [t.account_id for t in (*fleet.teams, *probe_fleet.teams)]
        async with applied.polling():
            await applied.drained(ingestor.published)
            log(f"(b) end to end: burst {d.burst:.0f} s, catch-up, sustained {d.sustained:.0f} s")
            measured.end_to_end = e2e = await end_to_end(
                ingestor,
                applied,
                timeline,
                d.burst,
                d.sustained,
                burst_backlog=5_000 if options.quick else 60_000,
                server=server,
                log=log,
            )
            log(
                f"    sustained {e2e.sustained.end_to_end_rate:,.0f} events/s "
                f"(ingest burst {e2e.burst.accepted_rate:,.0f}/s)"
            )
            rate = min(
                options.freshness_rate,
                FRESHNESS_SHARE_OF_SUSTAINED * e2e.sustained.end_to_end_rate,
            )
            rate = max(rate, 100.0)
            log(f"(c) freshness at {rate:,.0f} events/s offered, for {d.freshness:.0f} s")
            model = _text_models(card, now)[0]
            probes = [Probe(seat, model, services.quota, ingestor) for seat in probe_fleet.seats]
            measured.freshness = fresh = await freshness(
                ingestor, applied, probes, timeline, rate, d.freshness, server
            )
            log(f"    p50 {fresh.p50_ms:,.0f} ms, p99 {fresh.p99_ms:,.0f} ms")
        measured.published = ingestor.published
        measured.outbox_wait = await _outbox_settles(
            plain, services.ledger, 5.0 if options.quick else OUTBOX_WAIT_SECONDS
        )
        log(f"(d) authorize: saturation {d.authorize:.0f} s, paced {d.authorize:.0f} s")
        requests = authorize_requests(
            services.quota, fleet.seats, _text_models(card, now), count=4000
        )
        before = await _authorize_seconds(plain, services.quota)
        measured.authorize = result = await authorize_bench(
            services.quota, requests, timeline, d.authorize, d.authorize
        )
        after = await _authorize_seconds(plain, services.quota)
        if after[1] > before[1]:
            measured.authorize_service_us = 1e6 * (after[0] - before[0]) / (after[1] - before[1])
        log(
            f"    {result.saturation.rate:,.0f} req/s; at {result.paced.rate:,.0f} req/s "
            f"p50 {result.paced.p50_ms:.1f} ms, p99 {result.paced.p99_ms:.1f} ms"
        )


async def _outbox_settles(
    client: httpx.AsyncClient, ledger: str, within: float
) -> dict[str, float]:
    """Wait (a while) for the ledger's outbox relay to publish what (b) and (c) left, so that
    (d) does not share the CPU with it; returns how long it waited and what was left."""
    started = time.perf_counter()
    while True:
        page = await metrics_page(client, ledger)
        backlog = page.value("metering_ledger_outbox_backlog") or 0.0
        waited = time.perf_counter() - started
        if backlog <= 0 or waited > within:
            return {"seconds": round(waited, 1), "backlog_left": backlog}
        await asyncio.sleep(0.5)


async def _authorize_seconds(client: httpx.AsyncClient, quota: str) -> tuple[float, float]:
    page = await metrics_page(client, quota)
    return (
        page.value("metering_quota_authorize_seconds_sum") or 0.0,
        page.value("metering_quota_authorize_seconds_count") or 0.0,
    )


def _text_models(card: RateCard, at: datetime) -> list[str]:
    return [m.model for m in card.in_force(at).models.values() if m.modality == "text"]


def _broker_messages(card: RateCard, rng: random.Random) -> list[tuple[bytes, bytes]]:
    """Realistic `UsageRecorded` envelopes keyed by account, for the broker's ceiling."""
    fleet = make_fleet("ceiling", 50, 4, rng)
    for seat in fleet.seats:
        seat.key_id = f"{seat.seat_id}-key"
    now = datetime.now(UTC)
    reports = Reports(fleet.seats, UsageMix(card, now, rng), "ceiling", rng)
    out = []
    for seat in reports.pick_seats(5000):
        report = reports.report(seat, now.isoformat())
        out.append((seat.account_id.encode(), orjson.dumps(usage_envelope(report, now))))
    return out


# -- the run's own database, topics and consumer groups -------------------------------------


def _names(tag: str) -> dict[str, str]:
    return {
        "EVENTS_TOPIC": f"{tag}.events",
        "LEDGER_TOPIC": f"{tag}.ledger",
        "SEAT_STATUS_TOPIC": f"{tag}.seat-status",
        "DLQ_TOPIC": f"{tag}.dlq",
    }


def _service_environ(tag: str, database_url: str, token: str) -> dict[str, str]:
    return {
        **_names(tag),
        "DATABASE_URL": database_url,
        "LEDGER_CONSUMER_GROUP": f"{tag}-ledger",
        "QUOTA_CONSUMER_GROUP": f"{tag}-quota",
        "METERING_ADMIN_TOKEN": token,
        "API_KEY_HASH_SECRET": secrets.token_urlsafe(24),
        "EVENTS_PARTITIONS": str(PARTITIONS),
    }


def _database_url(stack: Stack, name: str) -> str:
    return urlunsplit(urlsplit(stack.database_url)._replace(path=f"/{name}"))


async def _own_database_and_topics(stack: Stack, tag: str) -> str:
    admin = await asyncpg.connect(stack.database_url)
    try:
        await admin.execute(f'CREATE DATABASE "{tag}"')
    finally:
        await admin.close()
    database_url = _database_url(stack, tag)
    await migrate_url(database_url)
    names = _names(tag)
    forever = {"retention.ms": "-1"}
    await ensure_topics(
        stack.kafka_bootstrap_servers,
        [
            TopicSpec(names["EVENTS_TOPIC"], PARTITIONS, forever),
            TopicSpec(names["LEDGER_TOPIC"], PARTITIONS, forever),
            TopicSpec(names["SEAT_STATUS_TOPIC"], PARTITIONS, {"cleanup.policy": "compact"}),
            TopicSpec(names["DLQ_TOPIC"], 1, forever),
        ],
    )
    return database_url


async def _drop_database_and_topics(stack: Stack, tag: str) -> None:
    """Leave a shared (external) broker and database as they were."""
    with contextlib.suppress(Exception):
        admin = await asyncpg.connect(stack.database_url)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{tag}" WITH (FORCE)')
        finally:
            await admin.close()
    with contextlib.suppress(Exception):
        kafka = AIOKafkaAdminClient(bootstrap_servers=stack.kafka_bootstrap_servers)
        await kafka.start()
        try:
            await kafka.delete_topics(list(_names(tag).values()))
        finally:
            await kafka.close()


# -- figures -------------------------------------------------------------------------------


def figures(m: Measured) -> list[Figure]:
    out: list[Figure] = []
    ceiling = m.broker.ceiling if m.broker else None

    def ratio(value: float) -> float | None:
        return round(value / ceiling, 3) if ceiling else None

    if m.broker:
        b = m.broker
        out.append(
            Figure(
                "a_broker_ceiling",
                "(a)",
                "Broker ceiling: aiokafka alone, produce (acks=all) then consume; the slower",
                round(b.ceiling),
                "events/s",
                ratio_to_ceiling=1.0,
                details={
                    "produce_events_per_s": round(b.produce_rate),
                    "consume_events_per_s": round(b.consume_rate),
                    "messages": b.messages,
                    "mean_message_bytes": b.mean_bytes,
                    "partitions": b.partitions,
                },
            )
        )
    if m.end_to_end:
        e = m.end_to_end
        s = e.sustained
        value = s.end_to_end_rate
        r = ratio(value)
        out.append(
            Figure(
                "b_end_to_end",
                "(b)",
                "End to end, sustained: POST /v1/usage/batch → ingest → applied by ledger "
                "and quota",
                round(value),
                "events/s",
                target="≥ 20,000 events/s and ≥ 25% of (a)",
                met=value >= 20_000 and (r or 0) >= 0.25,
                ratio_to_ceiling=r,
                details={
                    "window_seconds": round(s.seconds, 1),
                    "ingest_accepted_per_s": round(s.accepted_rate),
                    "ledger_applied_per_s": round(s.ledger_rate),
                    "quota_applied_per_s": round(s.quota_rate),
                    "max_backlog_events": e.max_backlog,
                    "senders": SENDERS,
                    "reports_per_batch": 500,
                    "batch_p50_ms": round(e.batch_p50_ms, 1),
                    "batch_p99_ms": round(e.batch_p99_ms, 1),
                    "report_statuses": e.statuses,
                    "ingest_503": e.ingest_unavailable,
                    "ledger_outbox_backlog_at_end": e.ledger_outbox_backlog,
                    "server_side": e.server,
                    "drain_seconds": round(e.drain_seconds, 1),
                },
            )
        )
        burst = e.burst.accepted_rate
        out.append(
            Figure(
                "b_ingest_burst",
                "(b)",
                "Ingest alone: accepted usage events/s while the consumers fall behind (burst)",
                round(burst),
                "events/s",
                ratio_to_ceiling=ratio(burst),
                details={
                    "burst_seconds": round(e.burst.seconds, 1),
                    "catch_up_ledger_per_s": round(e.catch_up_ledger_rate),
                    "catch_up_quota_per_s": round(e.catch_up_quota_rate),
                },
            )
        )
    if m.freshness:
        f = m.freshness
        at_target = f.offered_rate >= FRESHNESS_TARGET_RATE and f.accepted_rate >= (
            0.95 * f.offered_rate
        )
        details: dict[str, object] = {
            "offered_events_per_s": round(f.offered_rate),
            "accepted_events_per_s": round(f.accepted_rate),
            "applied_events_per_s": round(f.applied.end_to_end_rate),
            "probes": f.probes,
            "probe_timeouts": f.timeouts,
            "probe_errors": f.errors,
            "probe_first_error": f.first_error,
            "probe_authorize_polls_per_s": round(f.polls_per_second),
            "server_side": f.server,
            "max_ms": round(f.max_ms, 1),
            "schedule_behind_max_s": round(f.behind_schedule_seconds, 3),
        }
        out.append(
            Figure(
                "c_freshness_p50",
                "(c)",
                f"Freshness p50: ingest's acceptance → visible in authorize, at "
                f"{f.offered_rate:,.0f} events/s offered",
                round(f.p50_ms, 1),
                "ms",
                details=details,
            )
        )
        out.append(
            Figure(
                "c_freshness_p99",
                "(c)",
                f"Freshness p99, at {f.offered_rate:,.0f} events/s offered",
                round(f.p99_ms, 1),
                "ms",
                target="≤ 250 ms at 10,000 events/s",
                met=f.p99_ms <= 250 and at_target,
                details=details,
            )
        )
    if m.authorize:
        sat, paced = m.authorize.saturation, m.authorize.paced
        offered = paced.offered_rate or 0.0
        details = {
            "saturation_connections": sat.connections,
            "saturation_p50_ms": round(sat.p50_ms, 2),
            "saturation_p99_ms": round(sat.p99_ms, 2),
            "saturation_statuses": sat.statuses,
            "paced_offered_per_s": round(offered),
            "paced_achieved_per_s": round(paced.rate),
            "paced_connections": paced.connections,
            "paced_statuses": paced.statuses,
            "paced_from_send_p50_ms": round(paced.sent_p50_ms or 0.0, 2),
            "paced_from_send_p99_ms": round(paced.sent_p99_ms or 0.0, 2),
            "paced_max_ms": round(paced.max_ms, 2),
            "ledger_outbox_wait_before": m.outbox_wait,
            "server_decision_mean_us": (
                round(m.authorize_service_us, 1) if m.authorize_service_us else None
            ),
        }
        out.append(
            Figure(
                "d_authorize_throughput",
                "(d)",
                "authorize over HTTP, one worker: requests/s at saturation",
                round(sat.rate),
                "req/s",
                target="≥ 5,000 req/s",
                met=sat.rate >= 5000,
                details=details,
            )
        )
        for q, value in (("p50", paced.p50_ms), ("p99", paced.p99_ms)):
            out.append(
                Figure(
                    f"d_authorize_{q}",
                    "(d)",
                    f"authorize latency {q} at {offered:,.0f} req/s offered",
                    round(value, 2),
                    "ms",
                    target="≤ 5 ms at 5,000 req/s" if q == "p99" else None,
                    met=(value <= 5 and offered >= 4999) if q == "p99" else None,
                    details=details,
                )
            )
    if m.fold:
        out.append(
            Figure(
                "e_pure_fold",
                "(e)",
                "Pure fold (metering.core.fold), one core",
                round(m.fold.rate),
                "events/s",
                target="≥ 300,000 events/s",
                met=m.fold.rate >= 300_000,
                details={
                    "events": m.fold.events,
                    "accounts": m.fold.accounts,
                    "passes": m.fold.passes,
                    "seconds": round(m.fold.seconds, 2),
                },
            )
        )
    if m.replay:
        out.append(
            Figure(
                "f_replay",
                "(f)",
                "metering replay from the ledger's archive (read, fold, compare)",
                round(m.replay.rate),
                "events/s",
                target="≥ 100,000 events/s",
                met=m.replay.rate >= 100_000,
                details={
                    "events": m.replay.events,
                    "accounts": m.replay.accounts,
                    "seconds": round(m.replay.seconds, 2),
                    "identical_to_ledger": m.replay.identical,
                    "differences": m.replay.differences,
                },
            )
        )
    return out


def notes(m: Measured, options: Options, cpu: dict[str, dict[str, float]]) -> list[str]:
    out = []
    if m.end_to_end:
        e = m.end_to_end
        out.append(
            f"- (b) {SENDERS} senders post batches of 500 reports (~2% repeats, answered "
            f"`duplicate`) to one ingest worker; in the sustained step a sender waits while "
            f"more than {e.max_backlog:,} events ({BACKLOG_SECONDS:.0f} s of the slower "
            "consumer's catch-up rate) are not yet applied by ledger or quota or not yet "
            "published by the ledger's outbox relay. "
            f"Ingest alone took {e.burst.accepted_rate:,.0f} events/s; with no load, ledger "
            f"then caught up at {e.catch_up_ledger_rate:,.0f} and quota at "
            f"{e.catch_up_quota_rate:,.0f} events/s."
        )
        rate = e.sustained.end_to_end_rate
        shares = cpu.get("b sustained")
        if shares and rate > 0:
            per_event = {g: 1e6 * c / rate for g, c in shares.items() if g != "other"}
            total = sum(per_event.values())
            parts = ", ".join(f"{g} {us:,.0f}" for g, us in per_event.items() if us >= 0.5)
            out.append(
                f"- (b) CPU per event in the sustained step, in µs: {parts}; {total:,.0f} in all, "
                f"so 2 cores carry at most ~{2e6 / total:,.0f} events/s this way "
                f"({shares['other']:.2f} cores went to other processes)."
            )
        if e.ledger_outbox_backlog > 0:
            out.append(
                f"- (b) at the end of the sustained step {e.ledger_outbox_backlog:,.0f} ledger "
                "results were still waiting for the outbox relay."
            )
    if m.freshness:
        f = m.freshness
        lag = f.server.get("quota_projection_lag_seconds", {})
        if lag.get("count"):
            out.append(
                f"- (c) quota's own `projection_lag_seconds` (recorded_at → batch committed) "
                f"in the same window: mean {1000 * (lag['mean'] or 0):,.0f} ms, p50 ≤ "
                f"{lag['p50_at_most']} s, p99 ≤ {lag['p99_at_most']} s (histogram buckets)."
            )
        out.append(
            f"- (c) background load offered {f.offered_rate:,.0f} events/s "
            f"(min of 10,000 and {FRESHNESS_SHARE_OF_SUSTAINED:.0%} of (b)); {f.probes} probes, "
            f"(one every 0.2 s, at most 2 at once), each polling authorize from ingest's answer "
            f"every 5-20 ms ({f.polls_per_second:,.0f} polls/s in all); {f.timeouts} timed out."
        )
    if m.authorize:
        a = m.authorize
        out.append(
            f"- (d) saturation: {a.saturation.connections} keep-alive connections back to back; "
            f"latency: {a.paced.connections} connections on a fixed schedule at "
            f"{a.paced.offered_rate or 0:,.0f} req/s, measured from when each request was due "
            f"(from its send: p99 {a.paced.sent_p99_ms or 0:.2f} ms)."
        )
    if m.replay:
        r = m.replay
        same = "identical to the ledger" if r.identical else f"{r.differences} differences"
        subset = ""
        if r.accounts < len(m.accounts):
            subset = f" (of the run's {len(m.accounts)}, to stay within the time budget)"
        out.append(
            f"- (f) `metering replay` (`replay.replay`, in process) of {r.events:,} events of "
            f"{r.accounts:,} accounts{subset} in {r.seconds:.1f} s: {same}."
        )
    busy = {phase: groups["other"] for phase, groups in cpu.items() if groups["other"] >= 0.2}
    if busy:
        worst = max(busy, key=lambda phase: busy[phase])
        out.append(
            f"- **Other processes took CPU during {len(busy)} phase(s)** (up to "
            f"{busy[worst]:.2f} cores in '{worst}'): those figures are below what this machine "
            "can do; run it again on a quiet machine."
        )
    if options.quick:
        out.append("- Quick run: phases of a few seconds; the figures are indicative only.")
    return out
