"""ingest against the real broker and database: commands, usage, idempotency, the Kafka entry."""

from __future__ import annotations

import asyncio
import base64
import random
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import orjson
import pytest
from aiokafka import AIOKafkaProducer

from metering.stack import Stack
from metering.topics import DLQ, EVENTS, USAGE_REPORTS
from schemas.envelope import parse_event
from tests.conftest import ADMIN_TOKEN, METRICS
from tests.integration.kafka_reading import read_until

pytestmark = pytest.mark.integration
AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


KEYS: dict[str, str] = {}
"""Account id -> the key id of its one seat (made by `team`)."""


def usage(account: str, request_id: str, **changes: Any) -> dict[str, Any]:
    """A report for `account`'s seat (see `team`; an account never made has an unknown key)."""
    report = {
        "request_id": request_id,
        "account_id": account,
        "subscription_id": f"sub-{account}",
        "seat_id": f"seat-{account}",
        "key_id": KEYS.get(account, f"key-{account}"),
        "model": "qwen3.6-plus",
        "occurred_at": datetime.now(UTC).isoformat(),
        "input_tokens": 8349,
        "cached_tokens": 40794,
        "output_tokens": 573,
    }
    return {**report, **changes}


def team(ingest: httpx.Client, prefix: str = "acct") -> str:
    """A new account with a subscription started a day ago, one seat and its key."""
    account = f"{prefix}-{uuid.uuid4().hex[:8]}"
    for path, body in _team_commands(account):
        answer = ingest.post(path, json=body)
        assert answer.status_code == 201, answer.text
        if path.endswith("/keys"):
            KEYS[account] = answer.json()["key_id"]
    return account


async def async_team(ingest: httpx.AsyncClient, prefix: str) -> str:
    account = f"{prefix}-{uuid.uuid4().hex[:8]}"
    for path, body in _team_commands(account):
        answer = await ingest.post(path, json=body)
        assert answer.status_code == 201, answer.text
        if path.endswith("/keys"):
            KEYS[account] = answer.json()["key_id"]
    return account


def _team_commands(account: str) -> list[tuple[str, dict[str, Any] | None]]:
    started = (datetime.now(UTC) - timedelta(days=1)).isoformat()
    sub = f"/v1/subscriptions/sub-{account}"
    return [
        (
            "/v1/subscriptions",
            {"account_id": account, "subscription_id": f"sub-{account}", "started_at": started},
        ),
        (f"{sub}/seats", {"seat_id": f"seat-{account}", "tier": "premium", "member": "ana"}),
        (f"{sub}/seats/seat-{account}/keys", None),
    ]


@pytest.fixture
def ingest(services: dict[str, str]) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=services["ingest"], headers=AUTH, timeout=30) as client:
        yield client


def test_plan_commands_answer_like_the_contract(ingest: httpx.Client) -> None:
    account = f"acct-{uuid.uuid4().hex[:8]}"
    sub = {
        "account_id": account,
        "subscription_id": f"sub-{account}",
        "started_at": (datetime.now(UTC) - timedelta(days=3)).isoformat(),
    }
    created = ingest.post("/v1/subscriptions", json=sub)
    assert created.status_code == 201
    again = ingest.post("/v1/subscriptions", json=sub)
    assert again.status_code == 200
    assert again.json() == {"event_id": created.json()["event_id"], "duplicate": True}
    second = ingest.post("/v1/subscriptions", json={**sub, "subscription_id": "other"})
    assert second.status_code == 409
    assert "already has an active subscription" in second.json()["detail"]

    seats = f"/v1/subscriptions/sub-{account}/seats"
    assert (
        ingest.post(
            seats, json={"seat_id": f"seat-{account}", "tier": "standard", "member": "ana"}
        ).status_code
        == 201
    )
    assert (
        ingest.post(
            "/v1/subscriptions/nope/seats", json={"seat_id": "s", "tier": "standard", "member": "m"}
        ).status_code
        == 404
    )
    bad_tier = ingest.post(seats, json={"seat_id": "s2", "tier": "gold", "member": "m"})
    assert bad_tier.status_code == 422
    assert bad_tier.headers["content-type"] == "application/problem+json"
    assert bad_tier.json()["errors"][0]["field"] == "tier"
    assert ingest.patch(f"{seats}/seat-{account}", json={"tier": "premium"}).status_code == 200

    key = ingest.post(f"{seats}/seat-{account}/keys")
    assert key.status_code == 201
    assert key.json()["api_key"].startswith("sk-tp-")
    assert ingest.delete(f"/v1/keys/{key.json()['key_id']}").status_code == 200
    assert ingest.delete("/v1/keys/no-such-key").status_code == 404

    now = datetime.now(UTC)
    pack = {"pack_id": f"pack-{account}", "purchased_at": (now - timedelta(hours=1)).isoformat()}
    assert ingest.post(f"/v1/subscriptions/sub-{account}/packs", json=pack).status_code == 201
    cancel = {"at": now.isoformat()}
    assert ingest.post(f"/v1/subscriptions/sub-{account}/cancel", json=cancel).status_code == 200
    late_pack = {"pack_id": f"pack2-{account}", "purchased_at": datetime.now(UTC).isoformat()}
    ended = ingest.post(f"/v1/subscriptions/sub-{account}/packs", json=late_pack)
    assert ended.status_code == 409
    assert ended.json()["code"] == "subscription_ended"


def test_write_calls_need_the_token_and_never_say_which_part_was_wrong(
    services: dict[str, str],
) -> None:
    body = usage("acct-x", "r-1")
    answers = [
        httpx.post(f"{services['ingest']}/v1/usage", json=body, headers=headers)
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": ADMIN_TOKEN})
    ]
    assert {a.status_code for a in answers} == {401}
    assert len({a.text for a in answers}) == 1


def test_usage_is_accepted_once_and_conflicts_are_named(ingest: httpx.Client) -> None:
    report = usage(team(ingest), "req-1")
    first = ingest.post("/v1/usage", json=report)
    assert first.status_code == 202
    assert first.json()["duplicate"] is False
    repeat = ingest.post("/v1/usage", json=report)
    assert (repeat.status_code, repeat.json()) == (200, {**first.json(), "duplicate": True})
    conflict = ingest.post("/v1/usage", json={**report, "output_tokens": 1})
    assert conflict.status_code == 409
    assert "req-1" in conflict.json()["detail"]


def test_an_accepted_report_is_stored_once_published_without_its_envelope(
    ingest: httpx.Client, stack: Stack
) -> None:
    """A round publishes before it commits, so a report's acceptance row is written already
    published and keeps no envelope (the claim does not even send it: issue 17)."""
    account = team(ingest)
    answer = ingest.post("/v1/usage", json=usage(account, "req-stored"))
    assert answer.status_code == 202
    row = asyncio.run(_acceptance_row(stack, f"usage:{account}", "req-stored"))
    assert row is not None
    assert row["event_id"] == answer.json()["event_id"]
    assert row["envelope"] is None
    assert row["published_at"] is not None


async def _acceptance_row(stack: Stack, scope: str, key: str) -> asyncpg.Record | None:
    conn = await asyncpg.connect(stack.database_url)
    try:
        return await conn.fetchrow(
            "SELECT event_id::text AS event_id, envelope, published_at FROM ingest_accepted "
            "WHERE scope = $1 AND key = $2",
            scope,
            key,
        )
    finally:
        await conn.close()


@pytest.mark.parametrize(
    ("changes", "fields"),
    [
        ({"occurred_at": "2026-11-01T10:00:00"}, ["occurred_at"]),
        ({"input_tokens": -1, "output_tokens": "many"}, ["input_tokens", "output_tokens"]),
        ({"model": "gpt-9"}, ["model"]),
        ({"occurred_at": (datetime.now(UTC) + timedelta(hours=1)).isoformat()}, ["occurred_at"]),
        ({"occurred_at": (datetime.now(UTC) - timedelta(days=30)).isoformat()}, ["occurred_at"]),
        ({"surprise": True}, ["surprise"]),
    ],
)
def test_bad_usage_is_refused_naming_every_field(
    ingest: httpx.Client, changes: dict[str, Any], fields: list[str]
) -> None:
    answer = ingest.post("/v1/usage", json=usage("acct-bad", f"r-{uuid.uuid4()}", **changes))
    assert answer.status_code == 422
    assert answer.headers["content-type"] == "application/problem+json"
    assert [e["field"] for e in answer.json()["errors"]] == fields


def test_batch_answers_each_report_in_order(ingest: httpx.Client) -> None:
    account = team(ingest)
    seen, new = usage(account, "seen"), usage(account, "new")
    ingest.post("/v1/usage", json=seen)
    changed = {**new, "output_tokens": 9}
    reports = [new, {"nonsense": 1}, seen, {**seen, "output_tokens": 7}, new, changed]
    answer = ingest.post("/v1/usage/batch", json={"reports": reports})
    assert answer.status_code == 200
    results = answer.json()["results"]
    statuses = [r["status"] for r in results]
    assert statuses == ["accepted", "invalid", "duplicate", "conflict", "duplicate", "conflict"]
    assert results[4]["event_id"] == results[0]["event_id"]  # a repeat within the batch
    too_many = ingest.post("/v1/usage/batch", json={"reports": [usage(account, "x")] * 1001})
    assert too_many.status_code == 422


async def test_ten_thousand_reports_land_exactly_once(
    services: dict[str, str], stack: Stack
) -> None:
    """Posted in batches, some twice, some conflicting: each distinct report is on the log once."""
    run = uuid.uuid4().hex[:8]
    async with httpx.AsyncClient(base_url=services["ingest"], headers=AUTH, timeout=30) as ingest:
        accounts = [await async_team(ingest, f"load-{run}") for _ in range(20)]
    reports = [usage(accounts[i % 20], f"r-{i}", input_tokens=i) for i in range(10_000)]
    rng = random.Random(7)
    resent = rng.sample(reports, 500)
    conflicting = [{**r, "output_tokens": r["output_tokens"] + 1} for r in rng.sample(reports, 200)]
    stream = reports + resent + conflicting
    rng.shuffle(stream)
    outcome: Counter[str] = Counter()
    async with httpx.AsyncClient(base_url=services["ingest"], headers=AUTH, timeout=30) as ingest:
        for start in range(0, len(stream), 1000):
            batch = {"reports": stream[start : start + 1000]}
            answer = await ingest.post("/v1/usage/batch", json=batch)
            assert answer.status_code == 200
            outcome.update(r["status"] for r in answer.json()["results"])
    assert outcome["accepted"] == 10_000
    assert outcome["duplicate"] + outcome["conflict"] == 700

    records = await read_until(
        stack.kafka_bootstrap_servers,
        EVENTS,
        wanted=lambda r: (
            (r.key or b"").decode() in accounts and b"UsageRecorded" in (r.value or b"")
        ),
        done=lambda found: len(found) >= 10_000,
    )
    events = [parse_event(r.value or b"") for r in records]
    keys = Counter((e.account_id, e.payload.request_id) for e in events)  # type: ignore[union-attr]
    assert len(keys) == 10_000
    assert max(keys.values()) == 1
    assert all(r.key == e.account_id.encode() for r, e in zip(records, events, strict=True))


async def test_the_kafka_entry_accepts_reports_and_dead_letters_the_rest(
    stack: Stack, services: dict[str, str]
) -> None:
    async with httpx.AsyncClient(base_url=services["ingest"], headers=AUTH, timeout=30) as ingest:
        account = await async_team(ingest, "raw")
    good = usage(account, "raw-1")
    messages = [
        orjson.dumps(good),
        orjson.dumps(good),  # a repeat: accepted once
        b"{not json",
        orjson.dumps(usage(account, "raw-2", model="gpt-9")),
    ]
    producer = AIOKafkaProducer(bootstrap_servers=stack.kafka_bootstrap_servers, acks="all")
    await producer.start()
    try:
        for value in messages:
            await producer.send_and_wait(USAGE_REPORTS, value, key=account.encode())
    finally:
        await producer.stop()

    accepted = await read_until(
        stack.kafka_bootstrap_servers,
        EVENTS,
        wanted=lambda r: r.key == account.encode() and b"UsageRecorded" in (r.value or b""),
        done=lambda found: len(found) >= 1,
    )
    assert [parse_event(r.value or b"").payload.request_id for r in accepted] == ["raw-1"]  # type: ignore[union-attr]
    letters = await read_until(
        stack.kafka_bootstrap_servers,
        DLQ,
        wanted=lambda r: r.key == account.encode(),
        done=lambda found: len(found) >= 2,
    )
    bodies = [orjson.loads(r.value or b"") for r in letters]
    assert sorted(base64.b64decode(b["original_value_base64"]) for b in bodies) == sorted(
        messages[2:]
    )
    reasons = " | ".join(b["reason"] for b in bodies)
    assert "unparseable usage report" in reasons
    assert "model 'gpt-9' not found" in reasons
    assert all(b["source_topic"] == USAGE_REPORTS for b in bodies)


def test_metrics_count_results_and_reasons(ingest: httpx.Client) -> None:
    account = team(ingest)
    ingest.post("/v1/usage", json=usage(account, "m-1"))
    ingest.post("/v1/usage", json=usage(account, "m-2", model="gpt-9"))
    ingest.post("/v1/usage", json=usage(account, "m-3", input_tokens=-5))
    text = ingest.get("/metrics", headers=METRICS).text
    for line in (
        'metering_ingest_usage_reports_total{result="accepted"}',
        'metering_ingest_usage_reports_total{result="invalid"}',
        'metering_ingest_rejections_total{reason="unknown_model"}',
        'metering_ingest_rejections_total{reason="malformed"}',
        "metering_ingest_broker_ack_seconds_count",
        "metering_ingest_batch_size_bucket",
    ):
        assert line in text, line
