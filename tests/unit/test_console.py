"""The console's pages against stand-ins for ledger and quota (httpx.MockTransport): what the
credential may read is rendered for people, what the APIs refuse is never shown."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from console import formatting, terminal
from console.app import COOKIE, build_app
from console.settings import ConsoleSettings
from metering import cli

TEAM = "tt-team-token"
MEMBER = "sk-tp-member-key"
SOON = (datetime.now(UTC) + timedelta(days=3, hours=2)).isoformat()

SEAT = {
    "subscription_id": "sub-1",
    "seat_id": "seat-1",
    "member": "ana",
    "status": "suspended",
    "reason": "quota_exhausted",
    "tier": "standard",
    "quota": "25000",
    "used": "25000",
    "remaining": "0",
    "shared_remaining": "0",
    "resets_at": SOON,
}
OVERVIEW = {
    "subscription_id": "sub-1",
    "status": "active",
    "utilization_percent": "37.5",
    "quota": "25000",
    "used": "9375.5",
    "remaining": "15624.5",
    "month_start": "2026-11-01T00:00:00Z",
    "month_end": SOON,
    "seats": [SEAT],
    "packs": [
        {
            "pack_id": "pack-1",
            "purchased_at": "2026-11-02T00:00:00Z",
            "expires_at": SOON,
            "used": "0",
            "remaining": "625000",
            "expires_in_seconds": 1,
        }
    ],
}
ROW = {
    "deducted_at": "2026-11-29T10:00:00Z",
    "request_id": "req-1",
    "event_id": "e1",
    "seat_id": "seat-1",
    "key_id": "k1",
    "model": "qwen3.6-plus",
    "tier": "standard",
    "input_tokens": 8349,
    "cached_tokens": 40794,
    "output_tokens": 573,
    "thinking": False,
    "images": 0,
    "tool_calls": {},
    "coefficient": "1",
    "rate_card_version": "v1",
    "credits": "3.18",
    "paid_from": [{"product": "seat_quota", "bucket_id": "seat-1", "credits": "3.18"}],
    "shortfall": "0",
}


TOTALS = {
    "requests": 1234,
    "credits": "98765.43",
    "seat_quota": "98000",
    "shared_packs": "760.43",
    "shortfall": "5",
    "input_tokens": 1_000_000,
    "cached_tokens": 200_000,
    "output_tokens": 34_567,
    "images": 0,
}
"""The ledger's totals of a filter: far more than the one row a page shows."""

ASKED: list[httpx.Request] = []
"""Every request the stand-ins answered (cleared by the `console` fixture)."""


def handler(request: httpx.Request) -> httpx.Response:
    ASKED.append(request)
    token = request.headers.get("authorization", "").removeprefix("Bearer ")
    path = request.url.path
    if path == "/v1/me" or path.startswith("/v1/me/"):
        if token != MEMBER:
            return httpx.Response(401, json={"code": "unauthorized"})
    elif token != TEAM:
        return httpx.Response(401, json={"code": "unauthorized"})
    if path == "/v1/me":
        return httpx.Response(200, json=SEAT)
    if path == "/v1/subscriptions/sub-1/overview":
        return httpx.Response(200, json=OVERVIEW)
    if path in ("/v1/subscriptions/sub-1/usage/totals", "/v1/me/usage/totals"):
        if request.url.params.get("from") == "bad":
            return httpx.Response(422, json={"errors": [{"field": "from", "message": "bad"}]})
        return httpx.Response(200, json=TOTALS)
    if path in ("/v1/subscriptions/sub-1/usage", "/v1/me/usage"):
        if request.url.params.get("format") == "csv":
            return httpx.Response(
                200,
                text="request_id,credits\nreq-1,3.18\n",
                headers={"content-type": "text/csv; charset=utf-8"},
            )
        if request.url.params.get("from") == "bad":
            return httpx.Response(422, json={"errors": [{"field": "from", "message": "bad"}]})
        return httpx.Response(200, json={"rows": [ROW], "next_cursor": None})
    return httpx.Response(404, json={"code": "unknown_subscription"})


@pytest.fixture
def console() -> Iterator[TestClient]:
    settings = ConsoleSettings(ledger_url="http://ledger", quota_url="http://quota")
    ASKED.clear()
    with TestClient(build_app(settings, httpx.MockTransport(handler))) as client:
        yield client


def test_team_sign_in_sets_a_strict_http_only_cookie_and_shows_the_overview(
    console: TestClient,
) -> None:
    answer = console.post(
        "/signin", data={"credential": TEAM, "subscription_id": "sub-1"}, follow_redirects=False
    )
    assert answer.status_code == 303
    assert answer.headers["location"] == "/subscriptions/sub-1"
    cookie = answer.headers["set-cookie"]
    assert "HttpOnly" in cookie
    assert "SameSite=strict" in cookie
    assert "Path=/" in cookie
    page = console.get("/subscriptions/sub-1")
    assert page.status_code == 200
    assert '<meta http-equiv="refresh" content="2">' in page.text
    assert "37.50 %" in page.text
    assert "9,375.50" in page.text
    assert "625,000.00" in page.text
    assert "in 3 d 2 h" in page.text or "in 3 d 1 h" in page.text
    assert "UTC</time>" in page.text


def test_another_teams_subscription_is_not_found(console: TestClient) -> None:
    console.cookies.set(COOKIE, TEAM)
    page = console.get("/subscriptions/sub-2")
    assert page.status_code == 404
    assert "Not found" in page.text


def test_a_refused_credential_signs_out(console: TestClient) -> None:
    refused = console.post("/signin", data={"credential": "tt-wrong", "subscription_id": "sub-1"})
    assert refused.status_code == 401
    console.cookies.set(COOKIE, "tt-wrong")
    page = console.get("/subscriptions/sub-1")
    assert page.status_code == 401
    assert "Please sign in" in page.text


def test_usage_details_totals_and_csv(console: TestClient) -> None:
    console.cookies.set(COOKIE, TEAM)
    page = console.get("/subscriptions/sub-1/usage", params={"model": "qwen3.6-plus"})
    assert page.status_code == 200
    assert "40,794" in page.text
    # the totals are the ledger's sums over the whole filter, not of the rows read
    assert '<strong id="total-requests">1,234</strong>' in page.text
    assert '<strong id="total-credits">98,765.43</strong>' in page.text
    assert '<span id="total-tokens">1,234,567</span>' in page.text
    assert '<span id="total-shortfall">5.00</span>' in page.text
    usage_reads = [r.url for r in ASKED if r.url.path == "/v1/subscriptions/sub-1/usage"]
    assert [(u.params["limit"], u.params["model"]) for u in usage_reads] == [("50", "qwen3.6-plus")]
    [totals] = [r.url for r in ASKED if r.url.path.endswith("/totals")]
    assert dict(totals.params) == {"model": "qwen3.6-plus"}
    assert 'href="/subscriptions/sub-1/usage.csv?model=qwen3.6-plus"' in page.text
    csv = console.get("/subscriptions/sub-1/usage.csv", params={"model": "qwen3.6-plus"})
    assert csv.text == "request_id,credits\nreq-1,3.18\n"
    assert "attachment" in csv.headers["content-disposition"]
    bad = console.get("/subscriptions/sub-1/usage", params={"from": "bad"})
    assert bad.status_code == 200
    assert "from: bad" in bad.text


def test_member_page_shows_its_own_seat_and_why_it_is_suspended(console: TestClient) -> None:
    answer = console.post("/signin", data={"credential": MEMBER}, follow_redirects=False)
    assert answer.headers["location"] == "/me"
    page = console.get("/me")
    assert page.status_code == 200
    assert "used up" in page.text
    assert "25,000.00" in page.text
    assert console.get("/subscriptions/sub-1").status_code == 401


def test_formatting() -> None:
    assert formatting.credits("24996.820000") == "24,996.82"
    assert formatting.credits("0.005") == "0.01"
    assert formatting.count(1234567) == "1,234,567"
    now = datetime(2026, 1, 1, tzinfo=UTC)
    assert formatting.countdown("2026-01-01T00:00:40Z", now) == "in 40 s"
    assert formatting.countdown("2025-12-31T00:00:00Z", now) == "passed"
    assert formatting.utc_text("2026-01-01T01:02:03+01:00") == "2026-01-01 00:02:03 UTC"


def test_metering_usage_prints_the_filters_totals_from_the_ledger(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`metering usage` shows the ledger's totals of the filter, however few rows it prints."""
    ASKED.clear()
    base = {"LEDGER_URL": "http://ledger", "QUOTA_URL": "http://quota"}
    for name, value in {**base, "METERING_ENV_FILE": "/nonexistent"}.items():
        monkeypatch.setenv(name, value)

    def get(url: str, **options: Any) -> httpx.Response:
        request = httpx.Request("GET", url, params=options["params"], headers=options["headers"])
        return handler(request)

    monkeypatch.setattr(terminal.httpx, "get", get)
    args = ["usage", "--subscription", "sub-1", "--model", "qwen3.6-plus", "--token", TEAM]
    shown = CliRunner().invoke(cli.app, args)
    assert shown.exit_code == 0, shown.output
    assert "req-1" in shown.output
    assert "1,234 requests, 98,765.43 credits for this filter" in shown.output
    as_json = CliRunner().invoke(cli.app, [*args, "--json"])
    assert json.loads(as_json.output)["totals"] == TOTALS
    [totals, _] = [r.url for r in ASKED if r.url.path.endswith("/totals")]
    assert dict(totals.params) == {"model": "qwen3.6-plus"}
