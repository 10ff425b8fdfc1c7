"""Access by scope (issue #18), through HTTP only: team tokens, members' own reads, the
operator's plan lists, and, for every read route of ledger and quota (enumerated from their
OpenAPI documents, so a new route cannot be forgotten), no scope reading another account's
or seat's data."""

from __future__ import annotations

import functools
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from tests.conftest import ADMIN_TOKEN

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
DEADLINE = 20.0
REVOCATION_BOUND = 5.0
PUBLIC = {"/healthz", "/readyz", "/metrics", "/problems/{code}"}
"""Routes that hold no account's data: every other read route must check the scope."""
MEMBER_PREFIX = "/v1/me"
"""Routes of a member's own seat (`/v1/me`, `/v1/me/usage`, ...), read with its own key only."""


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def eventually(ask: Callable[[], httpx.Response], ok: Callable[[httpx.Response], bool]) -> Any:
    give_up = time.monotonic() + DEADLINE
    while True:
        answer = ask()
        if ok(answer) or time.monotonic() > give_up:
            return answer
        time.sleep(0.1)


@dataclass
class Team:
    account_id: str
    subscription_id: str
    seat_id: str
    key_id: str
    api_key: str
    request_id: str
    event_id: str


def new_team(ingest: httpx.Client) -> Team:
    run = uuid.uuid4().hex[:10]
    account, sub, seat = f"acc-{run}", f"sub-{run}", f"seat-{run}"
    started = (datetime.now(UTC) - timedelta(days=1)).isoformat()
    body = {"account_id": account, "subscription_id": sub, "started_at": started}
    assert ingest.post("/v1/subscriptions", json=body).status_code == 201
    seat_body = {"seat_id": seat, "tier": "standard", "member": "ana"}
    assert ingest.post(f"/v1/subscriptions/{sub}/seats", json=seat_body).status_code == 201
    key = ingest.post(f"/v1/subscriptions/{sub}/seats/{seat}/keys")
    assert key.status_code == 201, key.text
    request_id = f"req-{run}"
    usage = {
        "request_id": request_id,
        "account_id": account,
        "subscription_id": sub,
        "seat_id": seat,
        "key_id": key.json()["key_id"],
        "model": "qwen3.6-plus",
        "occurred_at": datetime.now(UTC).isoformat(),
        "input_tokens": 8349,
        "cached_tokens": 40794,
        "output_tokens": 573,
    }
    accepted = ingest.post("/v1/usage", json=usage)
    assert accepted.status_code == 202, accepted.text
    return Team(
        account, sub, seat, key.json()["key_id"], key.json()["api_key"], request_id,
        accepted.json()["event_id"],
    )  # fmt: skip


@pytest.fixture(scope="module")
def clients(services: dict[str, str]) -> Iterator[dict[str, httpx.Client]]:
    with (
        httpx.Client(base_url=services["ingest"], headers=ADMIN, timeout=10) as ingest,
        httpx.Client(base_url=services["ledger"], timeout=10) as ledger,
        httpx.Client(base_url=services["quota"], timeout=10) as quota,
    ):
        yield {"ingest": ingest, "ledger": ledger, "quota": quota}


@pytest.fixture(scope="module")
def teams(clients: dict[str, httpx.Client]) -> tuple[Team, Team]:
    """Two teams whose usage both ledger and quota have applied."""
    a, b = new_team(clients["ingest"]), new_team(clients["ingest"])
    for team in (a, b):
        path = f"/v1/accounts/{team.account_id}/requests/{team.request_id}"
        found = eventually(
            functools.partial(clients["ledger"].get, path, headers=ADMIN),
            lambda r: r.status_code == 200 and r.json()["status"] == "applied",
        )
        assert found.status_code == 200, found.text
        seat = eventually(
            functools.partial(clients["quota"].get, f"/v1/seats/{team.seat_id}", headers=ADMIN),
            lambda r: r.status_code == 200 and r.json()["remaining"] != "25000",
        )
        assert seat.status_code == 200, seat.text
    return a, b


def team_token(ingest: httpx.Client, account_id: str, **body: str) -> dict[str, Any]:
    issued = ingest.post(f"/v1/accounts/{account_id}/tokens", json=body or None)
    assert issued.status_code == 201, issued.text
    answer: dict[str, Any] = issued.json()
    assert answer["token"].startswith("tt-")
    assert answer["account_id"] == account_id
    return answer


def read_routes(client: httpx.Client) -> list[tuple[str, list[str]]]:
    """Every GET path of a service's OpenAPI document but the public ones, with its required
    query parameters."""
    document = client.get("/openapi.json").json()
    routes = []
    for path, operations in document["paths"].items():
        if "get" not in operations or path in PUBLIC:
            continue
        required = [
            p["name"]
            for p in operations["get"].get("parameters", [])
            if p["in"] == "query" and p.get("required")
        ]
        routes.append((path, required))
    return routes


def url_of(path: str, required: list[str], team: Team) -> str:
    ids = {
        "account_id": team.account_id,
        "subscription_id": team.subscription_id,
        "seat_id": team.seat_id,
        "event_id": team.event_id,
        "request_id": team.request_id,
    }
    url = path
    for name, value in ids.items():
        url = url.replace("{" + name + "}", value)
    assert "{" not in url, f"{path}: a path parameter this test does not know; add it here"
    query = {"month": datetime.now(UTC).strftime("%Y-%m")}
    unknown = set(required) - set(query)
    assert not unknown, f"{path}: required query parameters this test does not know: {unknown}"
    params = "&".join(f"{name}={query[name]}" for name in required)
    return f"{url}?{params}" if params else url


def test_plan_lists_name_subscriptions_seats_and_keys_never_a_secret(
    clients: dict[str, httpx.Client], teams: tuple[Team, Team]
) -> None:
    ingest, (a, _) = clients["ingest"], teams
    subs = ingest.get(f"/v1/accounts/{a.account_id}/subscriptions")
    assert subs.status_code == 200, subs.text
    assert [s["subscription_id"] for s in subs.json()["subscriptions"]] == [a.subscription_id]
    seats = ingest.get(f"/v1/subscriptions/{a.subscription_id}/seats")
    assert [(s["seat_id"], s["removed_at"]) for s in seats.json()["seats"]] == [(a.seat_id, None)]
    keys = ingest.get(f"/v1/subscriptions/{a.subscription_id}/seats/{a.seat_id}/keys")
    assert keys.status_code == 200, keys.text
    [key] = keys.json()["keys"]
    assert set(key) == {"key_id", "issued_at", "revoked_at"}
    assert key["key_id"] == a.key_id
    assert a.api_key not in keys.text
    assert ingest.get("/v1/accounts/nobody-here/subscriptions").json()["code"] == (
        "unknown_account"
    )
    assert ingest.get("/v1/subscriptions/nope/seats").json()["code"] == "unknown_subscription"
    missing = ingest.get(f"/v1/subscriptions/{a.subscription_id}/seats/nope/keys")
    assert missing.json()["code"] == "unknown_seat"
    for path in ("/v1/accounts/x/subscriptions", "/v1/subscriptions/x/seats"):
        assert ingest.get(path, headers={"Authorization": "Bearer wrong"}).status_code == 401


def test_no_scope_reads_another_accounts_or_seats_data_on_any_read_route(
    clients: dict[str, httpx.Client], teams: tuple[Team, Team]
) -> None:
    a, b = teams
    token = bearer(team_token(clients["ingest"], a.account_id)["token"])
    member = bearer(a.api_key)
    checked = 0
    for service in ("ledger", "quota"):
        client = clients[service]
        for path, required in read_routes(client):
            if path == MEMBER_PREFIX or path.startswith(MEMBER_PREFIX + "/"):
                continue
            own, other = url_of(path, required, a), url_of(path, required, b)
            assert client.get(own, headers=ADMIN).status_code == 200, (service, own)
            assert client.get(own, headers=token).status_code == 200, (service, own)
            refused = client.get(other, headers=token)
            assert refused.status_code == 404, (service, other, refused.text)
            assert b.account_id not in refused.text or path.startswith("/v1/accounts")
            # A member key reads only its own seat, through /v1/me: nothing here.
            for url in (own, other):
                assert client.get(url, headers=member).status_code == 401, (service, url)
            checked += 1
    # ledger: usage, its totals, statement, event, request; quota: seat, overview
    assert checked >= 7


def test_a_member_reads_its_own_seat_and_usage_only(
    clients: dict[str, httpx.Client], teams: tuple[Team, Team]
) -> None:
    a, b = teams
    me = clients["quota"].get("/v1/me", headers=bearer(a.api_key))
    assert me.status_code == 200, me.text
    assert me.json()["seat_id"] == a.seat_id
    assert me.json()["remaining"] == "24996.82"
    assert {"status", "reason", "resets_at"} <= set(me.json())
    usage = clients["ledger"].get("/v1/me/usage", headers=bearer(a.api_key))
    assert usage.status_code == 200, usage.text
    assert [(r["request_id"], r["seat_id"]) for r in usage.json()["rows"]] == [
        (a.request_id, a.seat_id)
    ]
    csv = clients["ledger"].get("/v1/me/usage?format=csv", headers=bearer(a.api_key))
    assert csv.status_code == 200
    assert a.request_id in csv.text
    totals = clients["ledger"].get("/v1/me/usage/totals", headers=bearer(a.api_key))
    assert totals.status_code == 200, totals.text
    assert (totals.json()["requests"], totals.json()["credits"]) == (1, "3.18")
    # Every member route (enumerated from the OpenAPI documents): the member's own key reads
    # it; the operator's and a team's tokens have no seat of their own.
    token = bearer(team_token(clients["ingest"], a.account_id)["token"])
    member_routes = [
        (service, path)
        for service in ("ledger", "quota")
        for path, _ in read_routes(clients[service])
        if path == MEMBER_PREFIX or path.startswith(MEMBER_PREFIX + "/")
    ]
    assert sorted(path for _, path in member_routes) == [
        "/v1/me",
        "/v1/me/usage",
        "/v1/me/usage/totals",
    ]
    for service, path in member_routes:
        own = clients[service].get(path, headers=bearer(a.api_key))
        assert own.status_code == 200, (service, path, own.text)
        assert b.seat_id not in own.text, (service, path)
        for headers in (ADMIN, token, bearer("sk-tp-not-a-key")):
            assert clients[service].get(path, headers=headers).status_code == 401, (service, path)


def test_a_revoked_or_expired_team_token_stops_within_the_bound(
    clients: dict[str, httpx.Client], teams: tuple[Team, Team]
) -> None:
    ingest, (a, _) = clients["ingest"], teams
    issued = team_token(ingest, a.account_id)
    overview = f"/v1/subscriptions/{a.subscription_id}/overview"
    assert clients["quota"].get(overview, headers=bearer(issued["token"])).status_code == 200
    revoked = ingest.delete(f"/v1/tokens/{issued['token_id']}")
    assert revoked.status_code == 200, revoked.text
    time.sleep(REVOCATION_BOUND + 0.5)
    for service, path in (("quota", overview), ("ledger", f"/v1/events/{a.event_id}")):
        refused = clients[service].get(path, headers=bearer(issued["token"]))
        assert refused.status_code == 401, (service, refused.text)
    assert ingest.delete("/v1/tokens/tok-unknown").json()["code"] == "unknown_token"
    soon = (datetime.now(UTC) + timedelta(seconds=2)).isoformat()
    short = team_token(ingest, a.account_id, expires_at=soon)
    assert clients["quota"].get(overview, headers=bearer(short["token"])).status_code == 200
    time.sleep(2.5)
    assert clients["quota"].get(overview, headers=bearer(short["token"])).status_code == 401
    past = ingest.post(
        f"/v1/accounts/{a.account_id}/tokens",
        json={"expires_at": (datetime.now(UTC) - timedelta(minutes=1)).isoformat()},
    )
    assert past.status_code == 422
    assert past.json()["code"] == "expiry_in_past"
    assert ingest.post("/v1/accounts/nobody-here/tokens").json()["code"] == "unknown_account"
