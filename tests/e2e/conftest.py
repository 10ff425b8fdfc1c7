"""The end-to-end harness: the running services, reached only through their public HTTP APIs
(ingest, ledger, quota) and their Kafka topics. Nothing of the services' code is imported.

Expected values live in the scenarios, written out from design.md. The one rule this harness
computes itself is the calendar of design.md §2 (a month is anchored on the subscription's
start, its day clamped to short months), to put a month's end a few seconds from now.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from calendar import monthrange
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import httpx
import pytest
from aiokafka import AIOKafkaConsumer

from tests.conftest import ADMIN_TOKEN

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
DEADLINE_SECONDS = 20.0
"""How long an eventual state (quota's projection, the ledger, a topic) may take to show."""
MODEL = "qwen3.6-plus"
SEED_USAGE = {"input_tokens": 8_349, "cached_tokens": 40_794, "output_tokens": 573}
"""design.md §3's published example: exactly 3.18 credits."""
SEAT_MONTH = 25_000
"""A standard seat's month of credits (design.md §2)."""
CONTEXT = 1_000_000
"""qwen3.6-plus's context window: a request's input (with cached) and its output each fit in
it, or ingest refuses the report (design.md §4a)."""
BATCH = 1_000
"""The most reports `POST /v1/usage/batch` takes at once."""

Json = dict[str, Any]


def requests_costing(credits: int) -> list[Json]:
    """Token counts of qwen3.6-plus requests that cost exactly `credits` in all, each within
    the context window: at most 1,000,000 output tokens (1,200 credits, 1,200 per million)
    and 1,000,000 input tokens (200 credits, 200 per million). Every component is a whole
    number of credits (3 credits are 2,500 output tokens, 1 is 5,000 input tokens), so the
    rate card's rounding up to 0.01 credit changes nothing."""
    usages: list[Json] = []
    left = credits
    while left > 0:
        output = min(left, 1_200) // 3 * 3
        input_ = min(left - output, 200)
        usages.append({"input_tokens": input_ * 5_000, "output_tokens": output * 2_500 // 3})
        left -= output + input_
    assert all(u["input_tokens"] <= CONTEXT and u["output_tokens"] <= CONTEXT for u in usages)
    return usages


def rfc3339(t: datetime) -> str:
    """How the APIs write a UTC time: `2026-01-31T10:00:00Z`."""
    return t.astimezone(UTC).isoformat().replace("+00:00", "Z")


def now() -> datetime:
    """The wall clock the services use, to the second (so times compare as text)."""
    return datetime.now(UTC).replace(microsecond=0)


def add_months(t: datetime, n: int) -> datetime:
    """design.md §2: `t` moved by `n` calendar months, its day clamped to the month's end."""
    year, month0 = divmod(t.year * 12 + t.month - 1 + n, 12)
    return t.replace(year=year, month=month0 + 1, day=min(t.day, monthrange(year, month0 + 1)[1]))


def month_containing(anchor: datetime, t: datetime) -> tuple[datetime, datetime]:
    """Start and end of the month of a subscription started at `anchor` that contains `t`."""
    k = (t.year - anchor.year) * 12 + t.month - anchor.month
    while add_months(anchor, k) > t:
        k -= 1
    return add_months(anchor, k), add_months(anchor, k + 1)


def start_for_month_end(end: datetime) -> datetime:
    """A subscription start one of whose months ends exactly at `end`: the latest earlier
    month that has `end`'s day (a start on the 30th cannot be in February)."""
    back = 1
    while add_months(end, -back).day != end.day:
        back += 1
    return add_months(end, -back)


@dataclass(frozen=True)
class Seat:
    seat_id: str
    key_id: str
    api_key: str


@dataclass
class Team:
    """One account's subscription with its seats and keys, made through ingest's API."""

    ingest: httpx.AsyncClient
    account_id: str
    subscription_id: str
    started_at: datetime
    seats: list[Seat] = field(default_factory=list)

    @property
    def seat(self) -> Seat:
        return self.seats[0]

    async def add_seat(self, tier: str = "standard") -> Seat:
        seat_id = f"seat-{len(self.seats) + 1}-{self.account_id}"
        body = {"seat_id": seat_id, "tier": tier, "member": f"member-{len(self.seats) + 1}"}
        added = await self.ingest.post(f"/v1/subscriptions/{self.subscription_id}/seats", json=body)
        assert added.status_code == 201, added.text
        seat = await self.issue_key(seat_id)
        self.seats.append(seat)
        return seat

    async def issue_key(self, seat_id: str) -> Seat:
        issued = await self.ingest.post(
            f"/v1/subscriptions/{self.subscription_id}/seats/{seat_id}/keys"
        )
        assert issued.status_code == 201, issued.text
        return Seat(seat_id, issued.json()["key_id"], issued.json()["api_key"])

    async def buy_pack(self, pack_id: str, purchased_at: datetime) -> None:
        body = {"pack_id": pack_id, "purchased_at": rfc3339(purchased_at)}
        bought = await self.ingest.post(
            f"/v1/subscriptions/{self.subscription_id}/packs", json=body
        )
        assert bought.status_code == 201, bought.text

    async def change_tier(self, seat: Seat, tier: str) -> None:
        changed = await self.ingest.patch(
            f"/v1/subscriptions/{self.subscription_id}/seats/{seat.seat_id}", json={"tier": tier}
        )
        assert changed.status_code == 200, changed.text

    def report(
        self, seat: Seat, usage: Json | None = None, occurred_at: datetime | None = None
    ) -> Json:
        """A usage report as the gateway sends it (`usage`: the token counts), with a fresh
        request id."""
        return {
            "request_id": f"req-{uuid.uuid4().hex}",
            "account_id": self.account_id,
            "subscription_id": self.subscription_id,
            "seat_id": seat.seat_id,
            "key_id": seat.key_id,
            "model": MODEL,
            "occurred_at": rfc3339(occurred_at or datetime.now(UTC)),
            **(usage or {}),
        }

    async def use(self, seat: Seat, usage: Json, occurred_at: datetime | None = None) -> str:
        """Report one request's usage; returns its request id."""
        report = self.report(seat, usage, occurred_at)
        accepted = await self.ingest.post("/v1/usage", json=report)
        assert accepted.status_code == 202, accepted.text
        return str(report["request_id"])

    async def use_credits(
        self, seat: Seat, credits: int, occurred_at: datetime | None = None
    ) -> list[str]:
        """Report the usage of as many requests as it takes to cost `credits` in all
        (`requests_costing`), in batches, a microsecond apart up to `occurred_at` (now unless
        said), so the ledger lists them in the order sent; their request ids, in that order."""
        usages = requests_costing(credits)
        last = occurred_at or datetime.now(UTC)
        reports = [
            self.report(seat, usage, last - timedelta(microseconds=len(usages) - 1 - n))
            for n, usage in enumerate(usages)
        ]
        for start in range(0, len(reports), BATCH):
            batch = reports[start : start + BATCH]
            answer = await self.ingest.post("/v1/usage/batch", json={"reports": batch})
            assert answer.status_code == 200, answer.text
            statuses = [r["status"] for r in answer.json()["results"]]
            assert statuses == ["accepted"] * len(batch), answer.text
        return [str(r["request_id"]) for r in reports]


async def new_team(
    ingest: httpx.AsyncClient,
    started_at: datetime | None = None,
    tiers: tuple[str, ...] = ("standard",),
    **term: str,
) -> Team:
    """A new account with one subscription (started three days ago unless said) and a seat of
    each tier, each with one key."""
    account_id = f"e2e-{uuid.uuid4().hex[:12]}"
    team = Team(ingest, account_id, f"sub-{account_id}", started_at or now() - timedelta(days=3))
    body = {
        "account_id": account_id,
        "subscription_id": team.subscription_id,
        "started_at": rfc3339(team.started_at),
        **term,
    }
    created = await ingest.post("/v1/subscriptions", json=body)
    assert created.status_code == 201, created.text
    for tier in tiers:
        await team.add_seat(tier)
    return team


# -- asking until an eventual state shows --------------------------------------------------


async def eventually(
    ask: Callable[[], Awaitable[httpx.Response]], wanted: Callable[[httpx.Response], bool]
) -> httpx.Response:
    """Ask until the answer is the wanted one or the deadline passes; the last answer."""
    give_up = time.monotonic() + DEADLINE_SECONDS
    while True:
        answer = await ask()
        if wanted(answer) or time.monotonic() > give_up:
            return answer
        await asyncio.sleep(0.1)


def status_is(code: int) -> Callable[[httpx.Response], bool]:
    return lambda answer: answer.status_code == code


async def authorize(
    quota: httpx.AsyncClient, api_key: str | None, model: str = MODEL, **fields: Any
) -> httpx.Response:
    """The gateway's question to quota (`POST /v1/authorize`)."""
    headers = {} if api_key is None else {"Authorization": f"Bearer {api_key}"}
    return await quota.post("/v1/authorize", json={"model": model, **fields}, headers=headers)


async def authorized(quota: httpx.AsyncClient, api_key: str, code: int) -> Json:
    """The body of the first answer to `api_key` with status `code` (fails after the deadline)."""
    answer = await eventually(lambda: authorize(quota, api_key), status_is(code))
    assert answer.status_code == code, answer.text
    body: Json = answer.json()
    return body


async def usage_rows(ledger: httpx.AsyncClient, team: Team, count: int) -> list[Json]:
    """The subscription's usage details (newest first, at most one page of 1,000), once the
    ledger has `count` rows."""
    assert count <= BATCH
    answer = await eventually(
        lambda: ledger.get(
            f"/v1/subscriptions/{team.subscription_id}/usage", params={"limit": BATCH}
        ),
        lambda a: a.status_code == 200 and len(a.json()["rows"]) >= count,
    )
    assert answer.status_code == 200, answer.text
    rows: list[Json] = answer.json()["rows"]
    assert len(rows) == count, rows
    return rows


async def statement(ledger: httpx.AsyncClient, team: Team, month: str) -> Json:
    """The ledger's statement of the subscription month starting in calendar `month`."""
    answer = await eventually(
        lambda: ledger.get(
            f"/v1/subscriptions/{team.subscription_id}/statement", params={"month": month}
        ),
        status_is(200),
    )
    assert answer.status_code == 200, answer.text
    body: Json = answer.json()
    return body


# -- topics --------------------------------------------------------------------------------


async def topic_messages(
    bootstrap_servers: str,
    topic: str,
    key: str,
    enough: Callable[[list[Json]], bool],
    settle_seconds: float = 0.5,
) -> list[Json]:
    """The JSON messages under `key` on `topic` from its beginning, once `enough` holds for them
    and nothing new came for `settle_seconds` (so an unwanted extra is seen too).

    A consumer without a group: no join to wait for, and nothing read from `end_offsets()`
    (the embedded broker's is unreliable)."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap_servers,
        group_id=None,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    found: list[Json] = []
    try:
        give_up = time.monotonic() + DEADLINE_SECONDS
        quiet_since = time.monotonic()
        while time.monotonic() < give_up:
            batches = await consumer.getmany(timeout_ms=100)
            new = [
                json.loads(record.value)
                for records in batches.values()
                for record in records
                if record.key == key.encode() and record.value is not None
            ]
            if new:
                found.extend(new)
                quiet_since = time.monotonic()
            elif enough(found) and time.monotonic() - quiet_since >= settle_seconds:
                break
    finally:
        await consumer.stop()
    return found


def once_each(envelopes: list[Json]) -> list[Json]:
    """Envelopes without repeats (topics are written at least once; the event id is stable)."""
    unique: dict[str, Json] = {}
    for envelope in envelopes:
        unique.setdefault(envelope["event_id"], envelope)
    return list(unique.values())


async def seat_statuses(
    bootstrap_servers: str, seat_id: str, count: int
) -> list[tuple[str, str, str | None]]:
    """(status, reason, resets_at) of the seat's changes on `metering.seat-status.v1`, once
    `count` have arrived (and any extra that follows quickly)."""
    messages = await topic_messages(
        bootstrap_servers,
        "metering.seat-status.v1",
        seat_id,
        lambda found: len(once_each(found)) >= count,
    )
    return [
        (p["status"], p["reason"], p["resets_at"])
        for p in (e["payload"] for e in once_each(messages))
    ]


# -- fixtures ------------------------------------------------------------------------------


class _Broker(Protocol):
    kafka_bootstrap_servers: str


@pytest.fixture(scope="session")
def broker(stack: _Broker) -> str:
    """The session broker's bootstrap servers, for reading and writing topics."""
    return stack.kafka_bootstrap_servers


@pytest.fixture(scope="session")
async def ingest(services: dict[str, str]) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=services["ingest"], headers=ADMIN, timeout=30) as client:
        yield client


@pytest.fixture(scope="session")
async def ledger(services: dict[str, str]) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=services["ledger"], headers=ADMIN, timeout=30) as client:
        yield client


def gateway_client(services: dict[str, str]) -> httpx.AsyncClient:
    """quota as the gateway calls it: from a client address of its own (`X-Forwarded-For`), so
    refused keys of one scenario never count against another's failed-key allowance."""
    address = f"10.{uuid.uuid4().int % 250}.{uuid.uuid4().int % 250}.{uuid.uuid4().int % 250}"
    return httpx.AsyncClient(
        base_url=services["quota"], headers={"X-Forwarded-For": address}, timeout=30
    )


@pytest.fixture
async def quota(services: dict[str, str]) -> AsyncIterator[httpx.AsyncClient]:
    async with gateway_client(services) as client:
        yield client


@pytest.fixture
async def team(ingest: httpx.AsyncClient) -> Team:
    """A fresh account: a subscription started three days ago, one standard seat, one key."""
    return await new_team(ingest)
