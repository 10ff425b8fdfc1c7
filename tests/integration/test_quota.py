"""quota through the real broker: plan facts and usage posted to ingest, decisions and
balances read from quota, seat statuses read from metering.seat-status.v1.

Every test makes its own account, subscription, seats and keys; the session shares the
services, the broker and the database.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from metering.core.calendar import add_months
from metering.stack import Stack
from metering.topics import SEAT_STATUS
from schemas.envelope import parse_seat_status
from tests.conftest import ADMIN_TOKEN, METRICS
from tests.integration.kafka_reading import read_until

pytestmark = pytest.mark.integration
AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
DEADLINE = 60.0
BIG_USAGE = {"input_tokens": 1_000_000, "output_tokens": 1_000_000}
"""1,400 credits of qwen3.6-plus (200 credits per million input tokens, 1,200 per million
output tokens): as much as one request within its context window of 1,000,000 tokens costs."""


@pytest.fixture
def ingest(services: dict[str, str]) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=services["ingest"], headers=AUTH, timeout=30) as client:
        yield client


@pytest.fixture
def quota(services: dict[str, str]) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=services["quota"], timeout=30) as client:
        yield client


@dataclass
class Team:
    """One account's subscription, its seats and their keys, made through ingest."""

    ingest: httpx.Client
    account: str
    started_at: datetime
    keys: dict[str, tuple[str, str]]
    """seat id → (key id, api key)."""

    @property
    def subscription(self) -> str:
        return f"sub-{self.account}"

    def seat(self, n: int) -> str:
        return f"seat-{n}-{self.account}"

    def key(self, n: int) -> str:
        return self.keys[self.seat(n)][1]

    def buy_pack(self, purchased_at: datetime) -> None:
        pack = {"pack_id": f"pack-{uuid.uuid4().hex[:8]}", "purchased_at": purchased_at.isoformat()}
        answer = self.ingest.post(f"/v1/subscriptions/{self.subscription}/packs", json=pack)
        assert answer.status_code == 201, answer.text

    def use(self, n: int, count: int, **tokens: int) -> None:
        key_id = self.keys[self.seat(n)][0]
        reports = [
            {
                "request_id": f"req-{uuid.uuid4().hex}",
                "account_id": self.account,
                "subscription_id": self.subscription,
                "seat_id": self.seat(n),
                "key_id": key_id,
                "model": "qwen3.6-plus",
                "occurred_at": datetime.now(UTC).isoformat(),
                **tokens,
            }
            for _ in range(count)
        ]
        answer = self.ingest.post("/v1/usage/batch", json={"reports": reports})
        assert answer.status_code == 200, answer.text
        assert {r["status"] for r in answer.json()["results"]} == {"accepted"}, answer.text


def make_team(
    ingest: httpx.Client, seats: int = 2, started_at: datetime | None = None, **term: str
) -> Team:
    account = f"q-{uuid.uuid4().hex[:10]}"
    started_at = started_at or datetime.now(UTC).replace(microsecond=0) - timedelta(days=2)
    sub = {"account_id": account, "subscription_id": f"sub-{account}"}
    created = ingest.post(
        "/v1/subscriptions", json={**sub, "started_at": started_at.isoformat(), **term}
    )
    assert created.status_code == 201, created.text
    team = Team(ingest, account, started_at, {})
    for n in range(1, seats + 1):
        seat = {"seat_id": team.seat(n), "tier": "standard", "member": f"member-{n}"}
        added = ingest.post(f"/v1/subscriptions/{team.subscription}/seats", json=seat)
        assert added.status_code == 201, added.text
        issued = ingest.post(f"/v1/subscriptions/{team.subscription}/seats/{team.seat(n)}/keys")
        assert issued.status_code == 201, issued.text
        team.keys[team.seat(n)] = (issued.json()["key_id"], issued.json()["api_key"])
    return team


def authorize(
    quota: httpx.Client, api_key: str | None, model: str = "qwen3.6-plus", **fields: Any
) -> httpx.Response:
    headers = {} if api_key is None else {"Authorization": f"Bearer {api_key}"}
    return quota.post("/v1/authorize", json={"model": model, **fields}, headers=headers)


def until(
    ask: Callable[[], httpx.Response], wanted: Callable[[httpx.Response], bool]
) -> httpx.Response:
    """Ask again until the answer is the wanted one (the projection catches up), or fail."""
    give_up = time.monotonic() + DEADLINE
    while True:
        answer = ask()
        if wanted(answer) or time.monotonic() > give_up:
            return answer
        time.sleep(0.2)


def status_is(code: int) -> Callable[[httpx.Response], bool]:
    return lambda answer: answer.status_code == code


def _rfc3339(t: datetime) -> str:
    return t.astimezone(UTC).isoformat().replace("+00:00", "Z")


async def seat_statuses(stack: Stack, seat_id: str, wanted: list[str]) -> list[tuple[str, str]]:
    """(status, reason) of the seat's messages on the topic, once `wanted` statuses have been
    seen in order; a message relayed twice (the outbox is at least once) counts once."""

    def seen(records: list[Any]) -> list[tuple[str, str]]:
        changes: list[tuple[str, str]] = []
        ids: set[str] = set()
        for record in records:
            event = parse_seat_status(record.value)
            if event.event_id not in ids:
                ids.add(event.event_id)
                changes.append((event.payload.status, event.payload.reason))
        return changes

    def done(records: list[Any]) -> bool:
        statuses = iter(status for status, _ in seen(records))
        return all(w in statuses for w in wanted)

    records = await read_until(
        stack.kafka_bootstrap_servers,
        SEAT_STATUS,
        lambda r: r.key == seat_id.encode(),
        done,
        deadline_seconds=DEADLINE,
    )
    return seen(records)


# -- the end-to-end story ------------------------------------------------------------------


async def test_seat_suspends_when_its_quota_and_the_pack_run_out_and_resumes_with_a_pack(
    ingest: httpx.Client, quota: httpx.Client, stack: Stack
) -> None:
    team = make_team(ingest)
    team.buy_pack(datetime.now(UTC) - timedelta(hours=1))
    full = {"seat": "25000", "shared": "625000", "total": "650000"}
    allowed = until(
        lambda: authorize(quota, team.key(1)),
        lambda a: a.status_code == 200 and a.json()["remaining"] == full,
    )
    assert allowed.json()["remaining"] == full, allowed.text

    # 651,000 credits: the seat's 25,000, the pack's 625,000 and 1,000 more
    team.use(1, 465, **BIG_USAGE)
    suspended = until(lambda: authorize(quota, team.key(1)), status_is(403))
    assert suspended.status_code == 403, suspended.text
    body = suspended.json()
    assert (body["allowed"], body["code"], body["reason"]) == (
        False,
        "seat_suspended",
        "quota_exhausted",
    )
    resets_at = _rfc3339(add_months(team.started_at, 1))
    assert body["resets_at"] == resets_at
    assert f"resets at {resets_at}" in body["message"]
    assert "upgrade the seat's tier or buy a shared quota pack" in body["message"]

    other = authorize(quota, team.key(2))
    assert other.status_code == 200, other.text
    assert other.json()["remaining"] == {"seat": "25000", "shared": "0", "total": "25000"}
    assert other.json()["seat_id"] == team.seat(2)

    team.buy_pack(datetime.now(UTC))
    resumed = until(lambda: authorize(quota, team.key(1)), status_is(200))
    assert resumed.status_code == 200, resumed.text
    assert resumed.json()["remaining"] == {"seat": "0", "shared": "625000", "total": "625000"}

    assert await seat_statuses(stack, team.seat(1), ["active", "suspended", "active"]) == [
        ("active", "seat_added"),
        ("suspended", "quota_exhausted"),
        ("active", "pack_purchased"),
    ]
    assert await seat_statuses(stack, team.seat(2), ["active"]) == [("active", "seat_added")]


def test_seat_and_overview_show_balances_now(ingest: httpx.Client, quota: httpx.Client) -> None:
    team = make_team(ingest)
    team.buy_pack(datetime.now(UTC) - timedelta(hours=1))
    # 25 x 1,200 = 30,000 credits: the seat's 25,000 and 5,000 of the pack
    team.use(1, 25, output_tokens=1_000_000)
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    seat = until(
        lambda: quota.get(f"/v1/seats/{team.seat(1)}", headers=admin),
        lambda a: a.status_code == 200 and a.json()["used"] == "25000",
    ).json()
    month_end = _rfc3339(add_months(team.started_at, 1))
    assert seat == {
        "subscription_id": team.subscription,
        "seat_id": team.seat(1),
        "member": "member-1",
        "status": "active",
        "reason": None,
        "tier": "standard",
        "quota": "25000",
        "used": "25000",
        "remaining": "0",
        "shared_remaining": "620000",
        "resets_at": month_end,
    }
    overview = quota.get(f"/v1/subscriptions/{team.subscription}/overview", headers=admin)
    assert overview.status_code == 200, overview.text
    body = overview.json()
    assert (body["quota"], body["used"], body["remaining"]) == ("675000", "30000", "645000")
    assert body["utilization_percent"] == "4.44"
    assert body["month_end"] == month_end
    assert [s["seat_id"] for s in body["seats"]] == [team.seat(1), team.seat(2)]
    [pack] = body["packs"]
    assert (pack["used"], pack["remaining"]) == ("5000", "620000")
    assert 0 < pack["expires_in_seconds"] <= 31 * 24 * 3600

    assert quota.get(f"/v1/seats/{team.seat(1)}").status_code == 401
    missing = quota.get("/v1/seats/no-such-seat", headers=admin)
    assert missing.status_code == 404
    assert missing.headers["content-type"] == "application/problem+json"
    assert quota.get("/v1/subscriptions/no-such/overview", headers=admin).status_code == 404


# -- every row of design.md §5, over HTTP ----------------------------------------------------


@pytest.fixture(scope="module")
def ready_team(services: dict[str, str]) -> Iterator[Team]:
    """A team whose keys quota already knows, with a third seat's key revoked."""
    with (
        httpx.Client(base_url=services["ingest"], headers=AUTH, timeout=30) as ingest,
        httpx.Client(base_url=services["quota"], timeout=30) as quota,
    ):
        team = make_team(ingest, seats=3)
        revoked = ingest.delete(f"/v1/keys/{team.keys[team.seat(3)][0]}")
        assert revoked.status_code == 200, revoked.text
        until(lambda: authorize(quota, team.key(3)), status_is(401))
        until(lambda: authorize(quota, team.key(1)), status_is(200))
        yield team


ROWS: list[tuple[str, Callable[[Team], str | None], dict[str, Any], int, str, str]] = [
    ("no key", lambda t: None, {}, 401, "missing_api_key", "InvalidApiKey: No API-key provided."),
    (
        "unknown key",
        lambda t: "sk-tp-" + "x" * 43,
        {},
        401,
        "invalid_api_key",
        "InvalidApiKey: Invalid API-key provided.",
    ),
    (
        "revoked key",
        lambda t: t.key(3),
        {},
        401,
        "invalid_api_key",
        "InvalidApiKey: Invalid API-key provided.",
    ),
    (
        "Coding Plan key",
        lambda t: "sk-cp-" + t.key(1).removeprefix("sk-tp-"),
        {},
        401,
        "wrong_plan",
        "invalid access token or token expired",
    ),
    (
        "pay-as-you-go key",
        lambda t: "sk-" + "a" * 32,
        {},
        401,
        "wrong_plan",
        "invalid access token or token expired",
    ),
    (
        "model not in the plan",
        lambda t: t.key(1),
        {"model": "gpt-4o"},
        404,
        "model_not_supported",
        "model 'gpt-4o' not found or not supported",
    ),
    (
        "image model on the text endpoint",
        lambda t: t.key(1),
        {"model": "qwen-image-2.0", "endpoint": "openai"},
        400,
        "image_model_on_text_endpoint",
        "model 'qwen-image-2.0' is an image model: image models use separate APIs, "
        "not the openai-compatible text endpoint",
    ),
    (
        "input longer than the context",
        lambda t: t.key(1),
        {"model": "deepseek-v3.2", "input_tokens": 128_001},
        400,
        "input_length_out_of_range",
        "Range of input length should be [1, 128000]",
    ),
]


@pytest.mark.parametrize(
    ("key_of", "fields", "status", "code", "message"),
    [row[1:] for row in ROWS],
    ids=[row[0] for row in ROWS],
)
def test_refusals_carry_the_products_messages(
    quota: httpx.Client,
    ready_team: Team,
    key_of: Callable[[Team], str | None],
    fields: dict[str, Any],
    status: int,
    code: str,
    message: str,
) -> None:
    answer = authorize(quota, key_of(ready_team), **fields)
    assert answer.status_code == status, answer.text
    assert answer.json() == {
        "allowed": False,
        "code": code,
        "message": message,
        "resets_at": None,
        "reason": None,
    }


def test_cancelled_subscription_suspends_its_seats(
    ingest: httpx.Client, quota: httpx.Client
) -> None:
    team = make_team(ingest, seats=1)
    until(lambda: authorize(quota, team.key(1)), status_is(200))
    cancelled = ingest.post(
        f"/v1/subscriptions/{team.subscription}/cancel", json={"at": datetime.now(UTC).isoformat()}
    )
    assert cancelled.status_code == 200, cancelled.text
    answer = until(lambda: authorize(quota, team.key(1)), status_is(403))
    assert answer.json() == {
        "allowed": False,
        "code": "seat_suspended",
        "message": f"Subscription '{team.subscription}' was cancelled: its seats are suspended. "
        "Renew the subscription to restore service.",
        "resets_at": None,
        "reason": "subscription_cancelled",
    }


async def test_expired_subscription_suspends_its_seats_and_the_timer_says_so(
    ingest: httpx.Client, quota: httpx.Client, stack: Stack
) -> None:
    started_at = datetime.now(UTC).replace(microsecond=0) - timedelta(days=1)
    expires_at = datetime.now(UTC) + timedelta(seconds=8)
    team = make_team(ingest, seats=1, started_at=started_at, expires_at=expires_at.isoformat())
    answer = until(lambda: authorize(quota, team.key(1)), status_is(403))
    assert answer.status_code == 403, answer.text
    assert answer.json()["reason"] == "subscription_expired"
    assert answer.json()["message"] == (
        f"Subscription '{team.subscription}' has expired: its seats are suspended. "
        "Renew the subscription to restore service."
    )
    # no fact arrives after the expiry: only quota's timer can have noticed it
    assert await seat_statuses(stack, team.seat(1), ["active", "suspended"]) == [
        ("active", "seat_added"),
        ("suspended", "subscription_expired"),
    ]


def test_many_failed_keys_from_one_client_are_slowed_down_but_valid_keys_pass(
    quota: httpx.Client, ready_team: Team
) -> None:
    client = {"X-Forwarded-For": f"198.51.100.{uuid.uuid4().int % 250}, 10.0.0.1"}
    bad = {"Authorization": "Bearer sk-tp-guess", **client}
    answers = [quota.post("/v1/authorize", json={"model": "glm-5"}, headers=bad) for _ in range(21)]
    assert [a.status_code for a in answers] == [401] * 20 + [429]
    assert answers[-1].json()["code"] == "too_many_failed_keys"
    assert int(answers[-1].headers["Retry-After"]) >= 1
    valid = {"Authorization": f"Bearer {ready_team.key(1)}", **client}
    assert quota.post("/v1/authorize", json={"model": "glm-5"}, headers=valid).status_code == 200
    metrics = quota.get("/metrics", headers=METRICS).text
    assert 'metering_quota_authorize_decisions_total{code="too_many_failed_keys"' in metrics
    assert "metering_quota_authorize_seconds_bucket" in metrics
    assert "metering_quota_staleness_seconds" in metrics
