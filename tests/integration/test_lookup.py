"""Where did my fact go: the ledger's `GET /v1/events/{id}` and `GET .../requests/{id}`, through
HTTP against the session's services, for a usage that is applied, a fact the ledger's fold
rejects, and ids nothing knows."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime

import httpx
import pytest
from aiokafka import AIOKafkaProducer

from metering.stack import Stack
from metering.topics import EVENTS
from tests.conftest import ADMIN_TOKEN
from tests.integration.test_quota import make_team, until
from tests.unit.event_builders import Facts

pytestmark = pytest.mark.integration
AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@pytest.fixture
def ingest(services: dict[str, str]) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=services["ingest"], headers=AUTH, timeout=30) as client:
        yield client


@pytest.fixture
def ledger(services: dict[str, str]) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=services["ledger"], headers=AUTH, timeout=30) as client:
        yield client


def settled(answer: httpx.Response) -> bool:
    return answer.status_code == 200 and answer.json()["status"] != "accepted"


def test_an_applied_usage_is_found_by_event_id_and_request_id(
    ingest: httpx.Client, ledger: httpx.Client
) -> None:
    team = make_team(ingest, seats=1)
    request_id = f"req-{uuid.uuid4().hex}"
    report = {
        "request_id": request_id,
        "account_id": team.account,
        "subscription_id": team.subscription,
        "seat_id": team.seat(1),
        "key_id": team.keys[team.seat(1)][0],
        "model": "qwen3.6-plus",
        "occurred_at": datetime.now(UTC).isoformat(),
        "input_tokens": 8349,
        "cached_tokens": 40794,
        "output_tokens": 573,
    }
    posted = ingest.post("/v1/usage", json=report)
    assert posted.status_code == 202, posted.text
    event_id = posted.json()["event_id"]

    found = until(lambda: ledger.get(f"/v1/events/{event_id}"), settled)
    assert found.status_code == 200, found.text
    body = found.json()
    assert {k: body[k] for k in ("event_id", "event_type", "account_id", "status")} == {
        "event_id": event_id,
        "event_type": "UsageRecorded",
        "account_id": team.account,
        "status": "applied",
    }
    assert (body["request_id"], body["rejection"]) == (request_id, None)
    assert body["recorded_at"]
    [entry] = body["entries"]
    assert (entry["event_type"], entry["price"], entry["shortfall"]) == (
        "CreditsDeducted",
        "3.18",
        "0",
    )
    assert [(p["product"], p["credits"]) for p in entry["receipt"]] == [("seat_quota", "3.18")]

    by_request = ledger.get(f"/v1/accounts/{team.account}/requests/{request_id}")
    assert by_request.status_code == 200, by_request.text
    assert by_request.json() == body

    assert ledger.get(f"/v1/events/{event_id}", headers={"Authorization": ""}).status_code == 401


def test_a_fact_the_ledger_rejects_is_found_with_its_reason(
    ledger: httpx.Client, stack: Stack
) -> None:
    """A usage of a subscription no fact made, produced straight to the events topic (ingest
    would refuse it): the ledger's guard rejects it, and both lookups say why."""
    facts = Facts(f"lk-{uuid.uuid4().hex[:10]}")
    request_id = f"req-{uuid.uuid4().hex}"
    event = facts.usage(datetime.now(UTC), sub="sub-nobody-made", request_id=request_id)
    asyncio.run(_produce(stack, facts.account_id, event.model_dump_json().encode()))

    found = until(lambda: ledger.get(f"/v1/events/{event.event_id}"), settled)
    assert found.status_code == 200, found.text
    body = found.json()
    assert (body["status"], body["event_type"], body["request_id"]) == (
        "rejected",
        "UsageRecorded",
        request_id,
    )
    assert body["rejection"]["reason"] == "unknown_subscription"
    assert "sub-nobody-made" in body["rejection"]["detail"]
    assert [e["event_type"] for e in body["entries"]] == ["FactRejected"]

    by_request = ledger.get(f"/v1/accounts/{facts.account_id}/requests/{request_id}")
    assert by_request.status_code == 200, by_request.text
    assert by_request.json() == body


def test_ids_nothing_knows_are_404_with_a_stable_code(ledger: httpx.Client) -> None:
    for path, code in (
        (f"/v1/events/{uuid.uuid4()}", "unknown_event"),
        ("/v1/events/not-an-event-id", "unknown_event"),
        (f"/v1/accounts/nobody/requests/req-{uuid.uuid4().hex}", "unknown_request"),
    ):
        answer = ledger.get(path)
        assert answer.status_code == 404, (path, answer.text)
        assert answer.headers["content-type"] == "application/problem+json"
        assert answer.json()["code"] == code


async def _produce(stack: Stack, key: str, value: bytes) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=stack.kafka_bootstrap_servers, acks="all")
    await producer.start()
    try:
        await producer.send_and_wait(EVENTS, value, key=key.encode())
    finally:
        await producer.stop()
