"""The console's pages against stand-ins for ledger and quota (httpx.MockTransport): what the
credential may read is rendered for people, what the APIs refuse is never shown, the session
cookie never holds the credential, and no form is taken without its CSRF token."""

from __future__ import annotations

import base64
import json
import re
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import httpx
import pytest
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY
from typer.testing import CliRunner

from console import formatting
from console.app import COOKIE, CSRF_COOKIE, build_app
from console.metrics import OUTCOMES, SIGNIN_RESULTS
from console.session import Sessions
from console.settings import ConsoleSettings
from metering import cli

TEAM = "tt-team-token"
MEMBER = "sk-tp-member-key"
SECRET = "test-console-session-secret"
SESSIONS = Sessions(SECRET.encode(), 12 * 3600)
"""Seals sessions as the console under test does (its CONSOLE_SESSION_SECRET)."""
UPSTREAM_COUNT = "metering_console_upstream_request_duration_seconds_count"
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
    if path == "/v1/subscriptions/sub-down/overview":
        raise httpx.ConnectError("connection refused", request=request)
    if path == "/v1/subscriptions/sub-broken/overview":
        return httpx.Response(500, json={"code": "database_unavailable"})
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


class Answer(Protocol):
    """What the test client answers (starlette's TestClient has an httpx of its own)."""

    @property
    def status_code(self) -> int: ...
    @property
    def text(self) -> str: ...
    @property
    def headers(self) -> Any: ...


def settings(**changes: Any) -> ConsoleSettings:
    base: dict[str, Any] = {
        "ledger_url": "http://ledger",
        "quota_url": "http://quota",
        "console_session_secret": SECRET,
    }
    return ConsoleSettings(**{**base, **changes})


@pytest.fixture
def console() -> Iterator[TestClient]:
    ASKED.clear()
    with TestClient(build_app(settings(), httpx.MockTransport(handler))) as client:
        yield client


def csrf_token(page: Answer) -> str:
    """The CSRF token of the page's forms."""
    found = re.search(r'name="csrf_token" value="([0-9a-f]+)"', page.text)
    assert found, page.text
    return found.group(1)


def sign_in(console: TestClient, credential: str, subscription_id: str = "") -> Answer:
    """What a person does: open the sign-in page, fill in its form and send it."""
    data = {"credential": credential, "csrf_token": csrf_token(console.get("/"))}
    if subscription_id:
        data["subscription_id"] = subscription_id
    return console.post("/signin", data=data, follow_redirects=False)


def put_cookie(console: TestClient, name: str, value: str | None) -> None:
    """Replace (or, with None, remove) the browser's cookie `name`."""
    console.cookies.delete(name)
    if value is not None:
        console.cookies.set(name, value, domain="testserver.local")


def set_cookie(answer: Answer, name: str) -> str:
    """The `Set-Cookie` header of the answer for cookie `name`."""
    headers: list[str] = answer.headers.get_list("set-cookie")
    [header] = [h for h in headers if h.startswith(f"{name}=")]
    return header


def test_team_sign_in_sets_a_strict_http_only_cookie_and_shows_the_overview(
    console: TestClient,
) -> None:
    answer = sign_in(console, TEAM, "sub-1")
    assert answer.status_code == 303
    assert answer.headers["location"] == "/subscriptions/sub-1"
    for name in (COOKIE, CSRF_COOKIE):
        cookie = set_cookie(answer, name)
        assert "HttpOnly" in cookie
        assert "SameSite=strict" in cookie
        assert "Path=/" in cookie
        assert "Secure" not in cookie  # served over plain HTTP, CONSOLE_SECURE_COOKIE unset
    page = console.get("/subscriptions/sub-1")
    assert page.status_code == 200
    assert '<meta http-equiv="refresh" content="2">' in page.text
    assert "37.50 %" in page.text
    assert "9,375.50" in page.text
    assert "625,000.00" in page.text
    assert "in 3 d 2 h" in page.text or "in 3 d 1 h" in page.text
    assert "UTC</time>" in page.text


def test_another_teams_subscription_is_not_found(console: TestClient) -> None:
    sign_in(console, TEAM, "sub-1")
    page = console.get("/subscriptions/sub-2")
    assert page.status_code == 404
    assert "Not found" in page.text


def test_a_refused_credential_signs_out(console: TestClient) -> None:
    refused = sign_in(console, "tt-wrong", "sub-1")
    assert refused.status_code == 401
    assert COOKIE not in console.cookies
    put_cookie(console, COOKIE, SESSIONS.seal("tt-wrong"))  # revoked since it signed in
    page = console.get("/subscriptions/sub-1")
    assert page.status_code == 401
    assert "Please sign in" in page.text


def test_usage_details_totals_and_csv(console: TestClient) -> None:
    sign_in(console, TEAM, "sub-1")
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
    answer = sign_in(console, MEMBER)
    assert answer.headers["location"] == "/me"
    page = console.get("/me")
    assert page.status_code == 200
    assert "used up" in page.text
    assert "25,000.00" in page.text
    assert console.get("/subscriptions/sub-1").status_code == 401


def test_the_session_cookie_is_sealed_never_the_credential(console: TestClient) -> None:
    answer = sign_in(console, TEAM, "sub-1")
    sealed = console.cookies[COOKIE]
    encoded = base64.urlsafe_b64encode(TEAM.encode()).decode().rstrip("=")
    for shown in (TEAM, TEAM.removeprefix("tt-"), encoded):
        assert shown not in sealed
        assert shown not in answer.headers["set-cookie"]
    assert console.get("/subscriptions/sub-1").status_code == 200

    def with_session(value: str) -> int:
        put_cookie(console, COOKIE, value)
        return console.get("/subscriptions/sub-1").status_code

    other_secret = Sessions(b"another console's secret", 12 * 3600)
    twelve_hours_ago = time.time() - 12 * 3600 - 60
    assert with_session(TEAM) == 401  # the credential itself is no session
    assert with_session(other_secret.seal(TEAM)) == 401
    assert with_session(SESSIONS.seal(TEAM, now=twelve_hours_ago)) == 401  # CONSOLE_SESSION_HOURS
    assert with_session(sealed[:-6] + ("A" if sealed[-6] != "A" else "B") + sealed[-5:]) == 401
    assert with_session(SESSIONS.seal(TEAM)) == 200


def test_a_form_without_its_csrf_token_is_refused(console: TestClient) -> None:
    def posts(path: str, **data: str) -> Answer:
        return console.post(path, data=data, follow_redirects=False)

    token = csrf_token(console.get("/"))
    for forged in ({}, {"csrf_token": ""}, {"csrf_token": "0" * 64}, {"csrf_token": token[:-1]}):
        refused = posts("/signin", credential=TEAM, subscription_id="sub-1", **forged)
        assert refused.status_code == 403, forged
        assert "not sent from this console" in refused.text
        assert COOKIE not in refused.headers.get("set-cookie", "")
    assert not [r for r in ASKED if r.url.path.startswith("/v1/")], "nothing was asked"
    # the token of another browser (another CSRF cookie) is refused too
    with TestClient(build_app(settings(), httpx.MockTransport(handler))) as other:
        theirs = csrf_token(other.get("/"))
    assert theirs != token
    team = {"credential": TEAM, "subscription_id": "sub-1"}
    assert posts("/signin", **team, csrf_token=theirs).status_code == 403
    # a token without its cookie: a page of another site cannot send this browser's cookie
    nonce = console.cookies[CSRF_COOKIE]
    put_cookie(console, CSRF_COOKIE, None)
    assert posts("/signin", **team, csrf_token=token).status_code == 403
    put_cookie(console, CSRF_COOKIE, nonce)

    # signed in, a new CSRF cookie: the sign-in page's token no longer signs out
    assert sign_in(console, TEAM, "sub-1").status_code == 303
    assert console.cookies[CSRF_COOKIE] != nonce
    for forged in ({}, {"csrf_token": token}):
        assert posts("/signout", **forged).status_code == 403
        assert console.get("/subscriptions/sub-1").status_code == 200, "still signed in"
    page = console.get("/subscriptions/sub-1")
    signed_out = posts("/signout", csrf_token=csrf_token(page))
    assert signed_out.status_code == 303
    assert console.get("/subscriptions/sub-1").status_code == 401


def test_cookies_are_secure_behind_https() -> None:
    transport = httpx.MockTransport(handler)
    with TestClient(build_app(settings(console_secure_cookie=True), transport)) as configured:
        assert "Secure" in set_cookie(configured.get("/"), CSRF_COOKIE)
    with TestClient(build_app(settings(), transport), base_url="https://console") as over_https:
        answer = sign_in(over_https, TEAM, "sub-1")
        assert answer.status_code == 303
        for name in (COOKIE, CSRF_COOKIE):
            assert "Secure" in set_cookie(answer, name)


def test_a_form_body_over_the_limit_is_refused_before_it_is_read(console: TestClient) -> None:
    token = csrf_token(console.get("/"))
    huge = {"credential": "x" * 2_000_000, "csrf_token": token}
    refused = console.post("/signin", data=huge)
    assert refused.status_code == 413
    assert refused.json()["code"] == "body_too_large"
    assert not [r for r in ASKED if r.url.path.startswith("/v1/")]


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_metrics_count_pages_upstream_calls_and_sign_ins() -> None:
    transport = httpx.MockTransport(handler)
    app = build_app(settings(metrics_token="scrape-me"), transport)
    signins = {
        (credential, result): sample(
            "metering_console_signins_total", credential=credential, result=result
        )
        for credential in ("team", "member")
        for result in SIGNIN_RESULTS
    }
    calls = {
        (upstream, result): sample(
            "metering_console_upstream_requests_total", upstream=upstream, outcome=result
        )
        for upstream in ("ledger", "quota")
        for result in OUTCOMES
    }
    timed = {u: sample(UPSTREAM_COUNT, upstream=u) for u in ("ledger", "quota")}
    page = {"component": "console", "method": "GET", "route": "/subscriptions/{subscription_id}"}
    pages = sample("metering_http_requests_total", **page, status="200")
    with TestClient(app) as console:
        assert sign_in(console, "tt-wrong", "sub-1").status_code == 401
        assert sign_in(console, TEAM).status_code == 422
        assert sign_in(console, TEAM, "sub-down").status_code == 502
        forged = console.post("/signin", data={"credential": TEAM, "subscription_id": "sub-1"})
        assert forged.status_code == 403
        assert sign_in(console, TEAM, "sub-1").status_code == 303
        assert console.get("/subscriptions/sub-1").status_code == 200
        assert console.get("/subscriptions/sub-1/usage").status_code == 200
        assert console.get("/subscriptions/sub-broken").status_code == 502
        assert sign_in(console, MEMBER).status_code == 303
        assert console.get("/metrics").status_code == 401  # private: METRICS_TOKEN
        scraped = console.get("/metrics", headers={"Authorization": "Bearer scrape-me"})
    assert scraped.status_code == 200
    for name in ("signins_total", "upstream_requests_total", "upstream_request_duration_seconds"):
        assert f"metering_console_{name}" in scraped.text

    def added(before: dict[tuple[str, str], float], name: str, *labels: str) -> dict[Any, float]:
        now = {key: sample(name, **dict(zip(labels, key, strict=True))) for key in before}
        return {key: now[key] - value for key, value in before.items() if now[key] != value}

    assert added(signins, "metering_console_signins_total", "credential", "result") == {
        ("member", "success"): 1,
        ("team", "refused"): 1,
        ("team", "incomplete"): 1,
        ("team", "unavailable"): 1,
        ("team", "forbidden"): 1,
        ("team", "success"): 1,
    }
    # quota: the sign-ins (refused, sub-down, sub-1, the member's), the overview, the usage
    # page's overview, sub-broken; ledger: the usage page's rows and totals
    assert added(calls, "metering_console_upstream_requests_total", "upstream", "outcome") == {
        ("quota", "ok"): 4,
        ("quota", "refused"): 1,
        ("quota", "unreachable"): 1,
        ("quota", "failed"): 1,
        ("ledger", "ok"): 2,
    }
    assert {u: sample(UPSTREAM_COUNT, upstream=u) - n for u, n in timed.items()} == {
        "quota": 7,
        "ledger": 2,
    }
    assert sample("metering_http_requests_total", **page, status="200") == pages + 1


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

    monkeypatch.setattr(httpx, "get", get)
    args = ["usage", "--subscription", "sub-1", "--model", "qwen3.6-plus", "--token", TEAM]
    shown = CliRunner().invoke(cli.app, args)
    assert shown.exit_code == 0, shown.output
    assert "req-1" in shown.output
    assert "1,234 requests, 98,765.43 credits for this filter" in shown.output
    as_json = CliRunner().invoke(cli.app, [*args, "--json"])
    assert json.loads(as_json.output)["totals"] == TOTALS
    [totals, _] = [r.url for r in ASKED if r.url.path.endswith("/totals")]
    assert dict(totals.params) == {"model": "qwen3.6-plus"}
