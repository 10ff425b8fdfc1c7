"""The ledger service as a real process against the real broker and PostgreSQL.

Each test gets its own database (`CREATE DATABASE`), topics and consumer group, so it sees a
clean ledger. The expected ledger is always recomputed independently with the pure core's
`fold()` over the same events, per account, in the order they were produced.
"""

from __future__ import annotations

import asyncio
import base64
import csv
import io
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from metering.core.catalog import REQUEST_ID_MEMORY
from metering.core.fold import fold
from metering.core.ratecard import load_rate_card
from metering.core.state import AccountState
from metering.settings import DEFAULT_RATE_CARD
from metering.stack import Stack
from schemas.envelope import parse_event
from tests.integration.isolated import PARTITIONS, TOKEN, IsolatedEnv, isolated_env
from tests.unit.event_builders import Facts, payloads

pytestmark = pytest.mark.integration

CARD = load_rate_card(DEFAULT_RATE_CARD)
DEADLINE = 120.0
T0 = datetime(2026, 1, 10, 9, 0, tzinfo=UTC)


# -- a clean ledger per test ---------------------------------------------------------------


@pytest.fixture
async def env(stack: Stack, tmp_path: Path) -> AsyncIterator[IsolatedEnv]:
    async with isolated_env(stack, tmp_path, "lt") as isolated:
        yield isolated


# -- load --------------------------------------------------------------------------------


@dataclass
class Load:
    """Messages for the events topic, in production order, and the facts among them."""

    messages: list[tuple[str, bytes]] = field(default_factory=list)
    """(key, value); unparseable values included."""

    def add(self, account_id: str, envelope: dict[str, Any]) -> None:
        self.messages.append((account_id, orjson.dumps(envelope)))

    def poison(self, account_id: str, value: bytes) -> None:
        self.messages.append((account_id, value))

    def facts(self) -> dict[str, list[Any]]:
        """The parseable facts by account, in order, each event id once."""
        by_account: dict[str, list[Any]] = {}
        seen: set[str] = set()
        for _, value in self.messages:
            try:
                event = parse_event(value)
            except ValueError:
                continue
            if event.event_id not in seen:
                seen.add(event.event_id)
                by_account.setdefault(event.account_id, []).append(event)
        return by_account


def make_load(prefix: str, accounts: int, usages_per_account: int, seed: int = 7) -> Load:
    """A team per account (1-3 seats of mixed tiers, a key each, a pack for some, an upgrade
    for some), then usage over two months: heavy accounts run out (shortfall), packs expire,
    months roll over. A few facts that do not fit (unknown key) and a few unparseable
    messages are mixed in."""
    rng = random.Random(seed)
    load = Load()

    def envelope(account: str, event_type: str, at: datetime, **payload: Any) -> dict[str, Any]:
        return {
            "event_id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
            "event_type": event_type,
            "schema_version": 1,
            "occurred_at": at.isoformat(),
            "recorded_at": (at + timedelta(seconds=1)).isoformat(),
            "account_id": account,
            "payload": payload,
        }

    span = timedelta(days=62)
    for a in range(accounts):
        account, sub = f"{prefix}-acct-{a}", f"{prefix}-sub-{a}"
        load.add(
            account,
            envelope(
                account, "SubscriptionActivated", T0, subscription_id=sub, started_at=T0.isoformat()
            ),
        )
        seats = [f"{prefix}-seat-{a}-{s}" for s in range(rng.randint(1, 3))]
        for seat in seats:
            tier = rng.choice(["standard", "advanced", "premium"])
            load.add(
                account,
                envelope(
                    account,
                    "SeatAdded",
                    T0,
                    subscription_id=sub,
                    seat_id=seat,
                    tier=tier,
                    member=f"{seat}@team",
                ),
            )
            load.add(
                account,
                envelope(
                    account,
                    "ApiKeyIssued",
                    T0,
                    subscription_id=sub,
                    seat_id=seat,
                    key_id=f"key-{seat}",
                    key_hash="ab" * 32,
                ),
            )
        if a % 3 == 0:
            bought = T0 + timedelta(days=5)
            load.add(
                account,
                envelope(
                    account,
                    "SharedPackPurchased",
                    bought,
                    subscription_id=sub,
                    pack_id=f"{prefix}-pack-{a}",
                    purchased_at=bought.isoformat(),
                ),
            )
        heavy = a % 4 == 0
        for u in range(usages_per_account):
            at = T0 + timedelta(days=6) + span * u / usages_per_account
            if a % 7 == 0 and u == usages_per_account // 2:
                load.add(
                    account,
                    envelope(
                        account,
                        "SeatTierChanged",
                        at,
                        subscription_id=sub,
                        seat_id=seats[0],
                        tier="premium",
                    ),
                )
            seat = rng.choice(seats)
            key = f"key-{seat}" if rng.random() > 0.002 else "key-unknown"
            load.add(
                account,
                envelope(
                    account,
                    "UsageRecorded",
                    at,
                    request_id=f"req-{a}-{u}",
                    subscription_id=sub,
                    seat_id=seat,
                    key_id=key,
                    model=rng.choice(["qwen3.6-plus", "glm-5"]),
                    input_tokens=rng.randint(1_000, 900_000 if heavy else 60_000),
                    cached_tokens=rng.randint(0, 40_000),
                    output_tokens=rng.randint(0, 4_000),
                    thinking=rng.random() < 0.1,
                    tool_calls={"search": rng.randint(0, 2)},
                    images=0,
                    client="cli",
                ),
            )
            if rng.random() < 0.0005:
                load.poison(account, b'{"event_id": "not json')
    return load


async def produce(bootstrap: str, topic: str, messages: list[tuple[str, bytes]]) -> None:
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", linger_ms=5, max_batch_size=256 * 1024
    )
    await producer.start()
    try:
        for start in range(0, len(messages), 5000):
            sends = [
                await producer.send(topic, value, key=key.encode())
                for key, value in messages[start : start + 5000]
            ]
            await asyncio.gather(*sends)
    finally:
        await producer.stop()


# -- what the ledger holds, and what it should hold ------------------------------------------


@dataclass
class LedgerSnapshot:
    states: dict[str, Any]
    entry_ids: set[str]
    totals: dict[str, tuple[int, int, int]]
    """Per account: price, shortfall and bucket-paid sums of its deductions."""
    archived: int


async def snapshot(db: asyncpg.Connection) -> LedgerSnapshot:
    """What the ledger stored; each account's state as it loads it again (the stored state
    and the request ids of its deductions)."""
    deducted: dict[str, list[tuple[str, datetime]]] = {}
    for r in await db.fetch(
        "SELECT account_id, request_id, occurred_at FROM ledger_entries "
        "WHERE event_type = 'CreditsDeducted'"
    ):
        remembered = (r["request_id"], r["occurred_at"] + REQUEST_ID_MEMORY)
        deducted.setdefault(r["account_id"], []).append(remembered)
    states = {
        r["account_id"]: as_json(
            AccountState.from_dict(orjson.loads(r["state"]), deducted.get(r["account_id"], ()))
        )
        for r in await db.fetch("SELECT account_id, state::text AS state FROM ledger_accounts")
    }
    ids = {r["id"] for r in await db.fetch("SELECT event_id::text AS id FROM ledger_entries")}
    totals = {
        r["account_id"]: (r["price"], r["shortfall"], r["paid"])
        for r in await db.fetch(
            "SELECT account_id, sum(price_micro) AS price, sum(shortfall_micro) AS shortfall, "
            "sum(seat_paid_micro + packs_paid_micro) AS paid FROM ledger_entries "
            "WHERE event_type = 'CreditsDeducted' GROUP BY account_id"
        )
    }
    archived = await db.fetchval("SELECT count(*) FROM ledger_events_archive")
    return LedgerSnapshot(states, ids, totals, archived)


def as_json(state: AccountState) -> Any:
    return orjson.loads(orjson.dumps(state.to_dict()))


def expected(load: Load) -> LedgerSnapshot:
    """The pure core's ledger of the load (seat statuses are quota's, not the ledger's)."""
    states: dict[str, Any] = {}
    ids: set[str] = set()
    totals: dict[str, tuple[int, int, int]] = {}
    archived = 0
    for account, events in load.facts().items():
        state, results = fold(events, CARD)
        archived += len(events)
        states[account] = as_json(state)
        deductions = [r.payload for r in results if r.event_type == "CreditsDeducted"]
        if deductions:
            totals[account] = (
                sum(d.price_micro for d in deductions),
                sum(d.shortfall_micro for d in deductions),
                sum(line["amount_micro"] for d in deductions for line in d.receipt),
            )
        for r in results:
            if r.event_type != "SeatStatusChanged":
                ids.add(r.event_id)
    return LedgerSnapshot(states, ids, totals, archived)


async def applied(db: asyncpg.Connection) -> int:
    return int(await db.fetchval("SELECT coalesce(sum(next_offset), 0) FROM consumer_offsets"))


async def poll(check: Callable[[], Awaitable[bool]], what: str, env: IsolatedEnv) -> None:
    """Until `check()` holds; fails after a generous deadline with the ledger's logs."""
    deadline = time.monotonic() + DEADLINE
    while not await check():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} did not happen within {DEADLINE:.0f} s\n{env.log_tail()}")
        await asyncio.sleep(0.2)


async def wait_until_done(db: asyncpg.Connection, env: IsolatedEnv, total: int) -> None:
    """Every message applied and every outbox row published."""

    async def done() -> bool:
        unpublished = await db.fetchval("SELECT count(*) FROM ledger_outbox")
        return await applied(db) == total and unpublished == 0

    await poll(done, f"applying {total} messages and publishing their results", env)


async def wait_ready(url: str, env: IsolatedEnv) -> None:
    async with httpx.AsyncClient(timeout=2) as client:

        async def ready() -> bool:
            try:
                return (await client.get(f"{url}/readyz")).status_code == 200
            except httpx.HTTPError:
                return False

        await poll(ready, f"ledger at {url} ready", env)


async def read_topic(
    bootstrap: str, topic: str, partitions: int = PARTITIONS
) -> list[tuple[bytes | None, bytes]]:
    """Every message of `topic`, from the beginning to the current end."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        out: list[tuple[bytes | None, bytes]] = []
        while [tp for tp, end in ends.items() if await consumer.position(tp) < end]:
            for records in (await consumer.getmany(timeout_ms=1000)).values():
                out += [(r.key, r.value) for r in records if r.value is not None]
        return out
    finally:
        await consumer.stop()


@pytest.fixture
async def db(env: IsolatedEnv) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(env.database_url)
    try:
        yield conn
    finally:
        await conn.close()


def assert_same_ledger(actual: LedgerSnapshot, wanted: LedgerSnapshot) -> None:
    assert actual.archived == wanted.archived
    assert actual.totals == wanted.totals
    assert actual.entry_ids == wanted.entry_ids
    assert actual.states.keys() == wanted.states.keys()
    differing = [a for a in wanted.states if actual.states[a] != wanted.states[a]]
    assert differing == []


# -- the tests ---------------------------------------------------------------------------


async def test_50k_usage_events_equal_the_pure_fold(
    env: IsolatedEnv, db: asyncpg.Connection
) -> None:
    load = make_load(env.name, accounts=100, usages_per_account=500)
    bootstrap = env.stack.kafka_bootstrap_servers
    await produce(bootstrap, env.events_topic, load.messages)
    _, url = env.start("ledger")
    await wait_ready(url, env)
    await wait_until_done(db, env, len(load.messages))

    wanted = expected(load)
    assert sum(len(events) for events in load.facts().values()) >= 50_000
    assert_same_ledger(await snapshot(db), wanted)
    shortfall = sum(s for _, s, _ in wanted.totals.values())
    assert shortfall > 0, "the load must drive some accounts past their credits"

    published = {
        orjson.loads(v)["event_id"] for _, v in await read_topic(bootstrap, env.ledger_topic)
    }
    assert published == wanted.entry_ids
    poison = [v for _, v in load.messages if not v.startswith(b'{"event_id":"')]
    letters = [orjson.loads(v) for _, v in await read_topic(bootstrap, env.dlq_topic, 1)]
    assert sorted(base64.b64decode(d["original_value_base64"]) for d in letters) == sorted(poison)
    rejected = await db.fetchval("SELECT count(*) FROM ledger_entries WHERE reason = 'unknown_key'")
    assert rejected > 0

    async with httpx.AsyncClient(base_url=url) as client:
        metrics = (await client.get("/metrics")).text
    for name in (
        "metering_ledger_events_applied_total",
        "metering_ledger_credits_deducted_micro_total",
        "metering_ledger_shortfall_micro_total",
        "metering_ledger_batch_size_bucket",
        "metering_ledger_transaction_seconds_bucket",
        "metering_ledger_consumer_lag",
        "metering_ledger_outbox_backlog",
        "metering_ledger_dead_letters_total",
        'metering_ledger_facts_rejected_total{reason="unknown_key"}',
    ):
        assert name in metrics, name
    assert_replays_identical(env, len(load.messages) - len(poison))


def assert_replays_identical(env: IsolatedEnv, events: int, duplicates: int = 0) -> None:
    """The audit replay from both sources of the log finds the ledger identical."""
    for source in ("archive", "kafka"):
        status, output, report = env.replay(env.logs / f"{source}.json", "--source", source)
        assert (status, report.get("differences")) == (0, []), output
        assert report["events"] == events
    assert report["duplicates_skipped"] == duplicates


async def test_every_event_published_twice_gives_the_same_ledger(
    env: IsolatedEnv, db: asyncpg.Connection
) -> None:
    load = make_load(env.name, accounts=20, usages_per_account=300, seed=11)
    doubled = _with_late_copies(load.messages, random.Random(3))
    await produce(env.stack.kafka_bootstrap_servers, env.events_topic, doubled)
    _, url = env.start("ledger")
    await wait_ready(url, env)
    await wait_until_done(db, env, len(doubled))
    assert_same_ledger(await snapshot(db), expected(load))
    unparseable = sum(1 for _, v in load.messages if not v.startswith(b'{"event_id":"'))
    events = len(load.messages) - unparseable
    assert_replays_identical(env, events, duplicates=events)


def _with_late_copies(
    messages: list[tuple[str, bytes]], rng: random.Random
) -> list[tuple[str, bytes]]:
    """Every message twice: the copy a random number of places later (so in later batches
    or in the same one), never before its original."""
    keyed = [((i, 0), m) for i, m in enumerate(messages)]
    keyed += [((i + rng.randint(0, 2000), 1), m) for i, m in enumerate(messages)]
    return [m for _, m in sorted(keyed, key=lambda item: item[0])]


async def test_sigkill_at_random_points_loses_and_doubles_nothing(
    env: IsolatedEnv, db: asyncpg.Connection
) -> None:
    """Killed at least 10 times while it still had events to apply, then left to finish.

    The load is large enough for a ledger that applies it several times faster than round
    one's did (60,000 events): one that ran out of load first fails with that message."""
    load = make_load(env.name, accounts=60, usages_per_account=1000, seed=5)
    total = len(load.messages)
    await produce(env.stack.kafka_bootstrap_servers, env.events_topic, load.messages)
    rng = random.Random(17)
    kills_mid_load = incarnations = 0
    while kills_mid_load < 10:
        assert incarnations < 25, "the load ran out before 10 kills landed in it"
        incarnations += 1
        before = await applied(db)
        assert before < total, "the load ran out before 10 kills landed in it"
        process, _ = env.start("ledger")

        async def progressed(since: int = before) -> bool:
            return await applied(db) > since

        await poll(progressed, "progress after a restart", env)
        await asyncio.sleep(rng.uniform(0, 0.3))  # mid-batch, mid-commit or mid-publish
        process.send_signal(signal.SIGKILL)
        process.wait()
        kills_mid_load += await applied(db) < total
    env.start("ledger")
    await wait_until_done(db, env, total)
    assert_same_ledger(await snapshot(db), expected(load))


async def test_a_second_replica_stopped_mid_run_leaves_the_same_ledger(
    env: IsolatedEnv, db: asyncpg.Connection
) -> None:
    load = make_load(env.name, accounts=40, usages_per_account=500, seed=13)
    half = len(load.messages) // 2
    first, url_first = env.start("ledger")
    _, url_second = env.start("ledger")
    await wait_ready(url_first, env)
    await wait_ready(url_second, env)  # both hold partitions (readiness says so)
    bootstrap = env.stack.kafka_bootstrap_servers
    await produce(bootstrap, env.events_topic, load.messages[:half])

    async def both_applied_some() -> bool:
        return all([await _applied_by(url) > 0 for url in (url_first, url_second)])

    await poll(both_applied_some, "both replicas applying events", env)
    first.send_signal(signal.SIGTERM)
    assert first.wait(30) == 0
    await produce(bootstrap, env.events_topic, load.messages[half:])
    await wait_until_done(db, env, len(load.messages))
    assert_same_ledger(await snapshot(db), expected(load))


async def _applied_by(url: str) -> float:
    """Events a replica applied, from its metrics."""
    async with httpx.AsyncClient(base_url=url) as client:
        text = (await client.get("/metrics")).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("metering_ledger_events_applied_total{")
    )


async def test_quote_usage_and_statement_over_http(
    env: IsolatedEnv, db: asyncpg.Connection
) -> None:
    facts = Facts(f"{env.name}-acct")
    start = T0
    events = [
        *facts.team(start, ("s1", "standard"), ("s2", "advanced")),
        facts.buy_pack(start + timedelta(days=1), "p1"),
        facts.usage(
            start + timedelta(days=2),
            "s1",
            input_tokens=8_349,
            cached_tokens=40_794,
            output_tokens=573,
        ),
        facts.usage(
            start + timedelta(days=3),
            "s2",
            model="glm-5",
            credits=0,
            input_tokens=10_000,
            tool_calls={"search": 2},
        ),
        facts.usage(start + timedelta(days=4), "s1", credits=26_000),
        facts.usage(start + timedelta(days=35), "s2", credits=10, request_id="=1+2"),
    ]
    await produce(
        env.stack.kafka_bootstrap_servers,
        env.events_topic,
        [(facts.account_id, e.model_dump_json().encode()) for e in events],
    )
    _, url = env.start("ledger")
    await wait_ready(url, env)
    await wait_until_done(db, env, len(events))
    deductions = payloads(fold(events, CARD)[1], "CreditsDeducted")
    auth = {"Authorization": f"Bearer {TOKEN}"}

    async with httpx.AsyncClient(base_url=url, headers=auth) as client:
        seed = {
            "model": "qwen3.6-plus",
            "input_tokens": 8349,
            "cached_tokens": 40794,
            "output_tokens": 573,
            "at": "2026-05-01T00:00:00Z",
        }
        quote = (await client.post("/v1/quote", json=seed)).json()
        assert quote["credits"] == "3.18"
        assert [c["credits"] for c in quote["components"]] == ["1.67", "0.82", "0.69"]
        assert (
            await client.post("/v1/quote", json=seed, headers={"Authorization": ""})
        ).status_code == 401
        unknown = await client.post("/v1/quote", json={"model": "nope"})
        assert unknown.status_code == 404
        assert unknown.headers["content-type"] == "application/problem+json"
        assert unknown.json()["detail"] == "model 'nope' not found or not supported"
        assert (await client.post("/v1/quote", json={"model": "qwen3.6-plus"})).status_code == 200

        usage = "/v1/subscriptions/sub-1/usage"
        first = (await client.get(usage, params={"limit": 3})).json()
        older = {"limit": 3, "cursor": first["next_cursor"]}
        second = (await client.get(usage, params=older)).json()
        rows = first["rows"] + second["rows"]
        assert second["next_cursor"] is None
        assert [r["request_id"] for r in rows] == [d.request_id for d in reversed(deductions)]
        big = rows[1]
        assert [(p["product"], p["credits"]) for p in big["paid_from"]] == [
            ("seat_quota", "24996.82"),
            ("shared_pack", "1003.18"),
        ]
        assert (big["credits"], big["shortfall"]) == ("26000", "0")
        only_s2 = (await client.get(usage, params={"seat_id": "s2", "model": "glm-5"})).json()
        assert [r["tool_calls"] for r in only_s2["rows"]] == [{"search": 2}]
        january = {"from": "2026-01-12T12:00:00Z", "to": "2026-02-10T09:00:00Z"}
        assert len((await client.get(usage, params=january)).json()["rows"]) == 2
        days = {"from": "2026-01-13", "to": "2026-02-10"}  # a date alone: its midnight UTC
        assert len((await client.get(usage, params=days)).json()["rows"]) == 2
        naive = await client.get(usage, params={"from": "2026-01-13T00:00:00"})
        assert (naive.status_code, naive.json()["detail"]) == (422, "from must have a time zone")
        as_csv = await client.get(usage, headers={"Accept": "text/csv"})
        assert as_csv.headers["content-type"].startswith("text/csv")
        lines = as_csv.text.splitlines()
        assert lines[0].startswith("deducted_at,request_id,seat_id")
        assert len(lines) == 1 + len(deductions)
        assert "seat_quota:s1:2026-01=24996.82; shared_pack:p1=1003.18" in lines[2]
        assert (await client.get(usage, params={"format": "csv"})).text == as_csv.text
        assert (await client.get(usage, params={"cursor": "x"})).status_code == 422
        assert (await client.get("/v1/subscriptions/nope/usage")).status_code == 404
        assert (await client.get(usage, headers={"Authorization": ""})).status_code == 401

        # the totals of a filter: the sums of every row the list shows for it, all pages
        totals = f"{usage}/totals"
        for params in ({}, {"seat_id": "s2", "model": "glm-5"}, january, days, {"seat_id": "s1"}):
            shown = (await client.get(usage, params={**params, "limit": 1000})).json()["rows"]
            summed = await client.get(totals, params=params)
            assert summed.status_code == 200, summed.text
            assert summed.json() == sums_of(shown), params
        assert (await client.get(totals)).json()["requests"] == len(deductions) > 3
        assert (await client.get(totals)).json()["shared_packs"] == "1003.18"
        nothing = (await client.get(totals, params={"seat_id": "s9"})).json()
        assert (nothing["requests"], nothing["credits"]) == (0, "0")
        assert (await client.get("/v1/subscriptions/nope/usage/totals")).status_code == 404
        assert (await client.get(totals, headers={"Authorization": ""})).status_code == 401
        inverted = {"from": "2026-02-10", "to": "2026-01-13"}
        for path in (usage, totals):
            refused = await client.get(path, params=inverted)
            assert (refused.status_code, refused.json()["code"]) == (422, "inverted_range")
            naive_too = await client.get(path, params={"to": "2026-01-13T00:00:00"})
            assert naive_too.json()["detail"] == "to must have a time zone"

        statement = (
            await client.get("/v1/subscriptions/sub-1/statement", params={"month": "2026-01"})
        ).json()
        assert statement["period_start"].startswith("2026-01-10T09:00:00")
        assert statement["opening"] == {"seat": "125000", "shared": "0", "total": "125000"}
        assert statement["added"] == {"seat": "0", "shared": "625000", "total": "625000"}
        assert statement["deducted"]["shared"] == "1003.18"
        assert (statement["requests"], statement["shortfall"]) == (3, "0")
        assert [(p["pack_id"], p["closing"]) for p in statement["packs"]] == [("p1", "623996.82")]
        assert {s["seat_id"]: s["used"] for s in statement["seats"]}["s1"] == "25000"
        assert [m["model"] for m in statement["models"]] == ["glm-5", "qwen3.6-plus"]
        february = (
            await client.get("/v1/subscriptions/sub-1/statement", params={"month": "2026-02"})
        ).json()
        assert february["opening"]["shared"] == "623996.82"
        assert february["requests"] == 1
        before = await client.get("/v1/subscriptions/sub-1/statement", params={"month": "2025-12"})
        assert before.status_code == 422

        # a spreadsheet opening the export runs no formula (OWASP CSV injection)
        exported = list(csv.DictReader(io.StringIO(as_csv.text)))
        assert exported[0]["request_id"] == "'=1+2"

        # every bad input is a 4xx problem, never a 500 (nor a 200 cut short)
        extreme = [
            {"from": "0001-01-01T00:00:00+01:00"},
            {"to": "9999-12-31T23:59:59-14:00"},
            {"cursor": base64.urlsafe_b64encode(b'["2026-01-01T00:00:00Z", "x"]').decode()},
            {"seat_id": "s\x001"},
        ]
        bad = [
            *[(usage, params) for params in extreme],
            *[(usage, {**params, "format": "csv"}) for params in extreme],
            *[(totals, params) for params in extreme if "cursor" not in params],
            ("/v1/subscriptions/sub-1/statement", {"month": "9999-12"}),
            ("/v1/subscriptions/sub%00-1/usage", {}),
        ]
        for path, params in bad:
            answer = await client.get(path, params=params)
            assert 400 <= answer.status_code < 500, (path, params, answer.text)
            assert answer.headers["content-type"] == "application/problem+json", answer.text
            assert answer.json()["code"], answer.text


def sums_of(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """What `GET …/usage/totals` must answer for a filter whose rows are `rows`."""

    def credits(values: list[str]) -> str:
        total = sum((Decimal(v) for v in values), Decimal(0))
        return format(total.normalize(), "f") if total else "0"

    paid = [p for row in rows for p in row["paid_from"]]
    return {
        "requests": len(rows),
        "credits": credits([r["credits"] for r in rows]),
        "seat_quota": credits([p["credits"] for p in paid if p["product"] == "seat_quota"]),
        "shared_packs": credits([p["credits"] for p in paid if p["product"] == "shared_pack"]),
        "shortfall": credits([r["shortfall"] for r in rows]),
        **{
            name: sum(r[name] for r in rows)
            for name in ("input_tokens", "cached_tokens", "output_tokens", "images")
        },
    }


def test_a_bad_rate_card_stops_the_ledger_with_its_message(stack: Stack, tmp_path: Path) -> None:
    card = tmp_path / "card.yaml"
    card.write_text("versions: []\n")
    ledger = subprocess.run(
        [sys.executable, "-m", "ledger"],
        env={**os.environ, **stack.environ(), "RATE_CARD_PATH": str(card)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ledger.returncode != 0
    assert f"RATE_CARD_PATH: {card}" in ledger.stderr


async def test_one_hostile_event_among_1000_stops_nothing(
    env: IsolatedEnv, db: asyncpg.Connection
) -> None:
    """design.md §4a: a fact that fails to apply is rejected with its reason, identically in
    the ledger and quota, and the partition goes on. Round one's ledger failed every batch
    after `output_tokens: 10**16` (its price overflows a 64-bit column) and stayed ready."""
    load = make_load(env.name, accounts=20, usages_per_account=50, seed=11)
    hostile_account = f"{env.name}-acct-3"
    hostile = {
        "event_id": str(uuid.uuid4()),
        "event_type": "UsageRecorded",
        "schema_version": 1,
        "occurred_at": (T0 + timedelta(days=7)).isoformat(),
        "recorded_at": (T0 + timedelta(days=7)).isoformat(),
        "account_id": hostile_account,
        "payload": {
            "request_id": "hostile",
            "subscription_id": f"{env.name}-sub-3",
            "seat_id": f"{env.name}-seat-3-0",
            "key_id": f"key-{env.name}-seat-3-0",
            "model": "qwen3.6-plus",
            "input_tokens": 0,
            "cached_tokens": 0,
            "output_tokens": 10**16,
            "thinking": False,
            "tool_calls": {},
            "images": 0,
        },
    }
    middle = len(load.messages) // 2
    load.messages.insert(middle, (hostile_account, orjson.dumps(hostile)))
    assert len(load.messages) > 1000
    await produce(env.stack.kafka_bootstrap_servers, env.events_topic, load.messages)
    _, ledger_url = env.start("ledger")
    _, quota_url = env.start("quota")
    await wait_ready(ledger_url, env)
    await wait_ready(quota_url, env)

    async def both_done() -> bool:
        rows = await db.fetch(
            "SELECT consumer_group, sum(next_offset) AS n FROM consumer_offsets "
            "WHERE topic = $1 GROUP BY consumer_group",
            env.events_topic,
        )
        return len(rows) == 2 and all(row["n"] == len(load.messages) for row in rows)

    await poll(both_done, "ledger and quota applying every message", env)
    wanted = expected(load)
    assert_same_ledger(await snapshot(db), wanted)
    reason = await db.fetchval(
        "SELECT reason FROM ledger_entries WHERE source_event_id = $1", hostile["event_id"]
    )
    assert reason == "unpriceable_usage"
    ledger_states = {
        r["account_id"]: r["state"]
        for r in await db.fetch("SELECT account_id, state::text AS state FROM ledger_accounts")
    }
    quota_states = {
        r["account_id"]: r["state"]
        for r in await db.fetch("SELECT account_id, state::text AS state FROM quota_accounts")
    }

    def without_statuses(text: str) -> Any:
        """The ledger does not publish seat statuses (quota does): compare the rest."""
        state = orjson.loads(text)
        for sub in state["subscriptions"].values():
            for seat in sub["seats"].values():
                seat.pop("status", None)
                seat.pop("status_reason", None)
        return state

    assert {a: without_statuses(s) for a, s in ledger_states.items()} == {
        a: without_statuses(s) for a, s in quota_states.items()
    }
    async with httpx.AsyncClient() as client:
        for url in (ledger_url, quota_url):
            assert (await client.get(f"{url}/readyz")).status_code == 200
