"""`POST /v1/authorize` over ASGI: the fast path (`AuthorizeFront`) answers byte for byte as
the FastAPI route it bypasses (the documented operation), for every case of the decision
table, and does the edge's work for it (metrics, body limit and timeout, 500)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import datetime
from ipaddress import ip_network
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from prometheus_client import REGISTRY
from starlette.types import Message

from metering.edges import BodyLimits, TrustedProxies
from metering.http import Readiness, create_app
from metering.scopes import ScopeResolver, scope_guard
from quota.api import AuthorizeFront, Authorizer, quota_router
from quota.ratelimit import FailedKeyLimiter
from tests.unit.event_builders import DEFAULT_CARD
from tests.unit.test_quota import CASES, DIRECTORY, NOW, SECRET


@contextlib.asynccontextmanager
async def _no_lifespan(_app: FastAPI) -> AsyncIterator[None]:
    yield


def _no_database() -> Any:
    raise AssertionError("only the operator's token is accepted here: no database is asked")


def quota_app(
    now: datetime,
    *,
    fast_path: bool,
    failed_keys_per_minute: int = 60,
    proxies: TrustedProxies | None = None,
    body_limits: BodyLimits | None = None,
) -> FastAPI:
    limiter = FailedKeyLimiter(failed_keys_per_minute)
    authorizer = Authorizer(DIRECTORY, DEFAULT_CARD, SECRET, limiter, lambda: now, proxies)
    front = (lambda rest, limits: AuthorizeFront(rest, authorizer, limits)) if fast_path else None
    app = create_app("quota", _no_lifespan, Readiness(), front=front, body_limits=body_limits)
    reader = scope_guard(ScopeResolver(["t"], _no_database, hash_secret=None))
    app.include_router(quota_router(DIRECTORY, authorizer, lambda: now, reader))
    return app


async def post(
    app: FastAPI, body: bytes, key: str | None = None, forwarded_for: str | None = None
) -> httpx.Response:
    headers = {"content-type": "application/json"}
    if forwarded_for is not None:
        headers["x-forwarded-for"] = forwarded_for
    if key is not None:
        headers["authorization"] = f"Bearer {key}"
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://quota") as client:
        return await client.post("/v1/authorize", content=body, headers=headers)


async def both(now: datetime, body: bytes, key: str | None = None) -> httpx.Response:
    """The fast path's answer, once checked equal to the FastAPI route's."""
    fast = await post(quota_app(now, fast_path=True), body, key)
    routed = await post(quota_app(now, fast_path=False), body, key)
    assert (fast.status_code, fast.headers, fast.content) == (
        routed.status_code,
        routed.headers,
        routed.content,
    )
    return fast


@pytest.mark.parametrize(
    ("presented", "request_fields", "now", "status", "code"),
    [case[1:6] for case in CASES],
    ids=[case[0] for case in CASES],
)
async def test_fast_path_answers_as_the_route_for_each_case(
    presented: str | None, request_fields: dict[str, Any], now: datetime, status: int, code: str
) -> None:
    body = httpx.Request("POST", "/", json={"model": "qwen3.6-plus", **request_fields}).content
    answer = await both(now, body, presented)
    assert answer.status_code == status
    assert answer.json().get("code", "allowed") == code


@pytest.mark.parametrize(
    "body",
    [b"{}", b'{"model": 7}', b'{"model": "qwen3.6-plus", "input_tokens": -1}'],
    ids=["no model", "model not a string", "negative input tokens"],
)
async def test_fast_path_rejects_invalid_bodies_as_the_route(body: bytes) -> None:
    answer = await both(NOW, body, "sk-tp-packed-2")
    assert answer.status_code == 422
    assert answer.headers["content-type"] == "application/problem+json"


@pytest.mark.parametrize(
    ("body", "message"),
    [(b'{"model": ', "Invalid JSON"), (b"[]", "Input should be an object")],
    ids=["not JSON", "not an object"],
)
async def test_fast_path_names_a_body_that_is_not_a_json_object(body: bytes, message: str) -> None:
    """(FastAPI's own words differ here: the fast path's come from pydantic directly.)"""
    answer = await post(quota_app(NOW, fast_path=True), body, "sk-tp-packed-2")
    assert answer.status_code == 422
    problem = answer.json()
    assert problem["detail"] == "invalid fields: body"
    assert message in problem["errors"][0]["message"]


async def test_fast_path_limits_failed_keys_as_the_route() -> None:
    """One failed key allowed a minute: the second is asked to wait."""
    for fast_path in (True, False):
        app = quota_app(NOW, fast_path=fast_path, failed_keys_per_minute=1)
        first = await post(app, b'{"model": "qwen3.6-plus"}', "sk-tp-nobody")
        second = await post(app, b'{"model": "qwen3.6-plus"}', "sk-tp-nobody")
        assert (first.status_code, second.status_code) == (401, 429)
        assert second.json()["code"] == "too_many_failed_keys"
        assert int(second.headers["retry-after"]) >= 1


async def test_other_requests_pass_through_the_fast_path() -> None:
    transport = httpx.ASGITransport(app=quota_app(NOW, fast_path=True))
    async with httpx.AsyncClient(transport=transport, base_url="http://quota") as client:
        assert (await client.get("/v1/authorize")).status_code == 405
        assert (await client.get("/healthz")).json()["status"] == "ok"
        seat = await client.get("/v1/seats/seat-2packed", headers={"authorization": "Bearer t"})
        assert seat.json()["remaining"] == "25000"


async def failed_key_answers(app: FastAPI, count: int) -> list[int]:
    """`count` wrong keys from one peer, each claiming another client in X-Forwarded-For."""
    body = b'{"model": "qwen3.6-plus"}'
    return [
        (await post(app, body, "sk-tp-guess", f"203.0.{i // 250}.{i % 250}")).status_code
        for i in range(count)
    ]


@pytest.mark.parametrize("fast_path", [True, False], ids=["fast path", "route"])
async def test_a_forged_forwarded_for_does_not_escape_the_failed_key_limit(
    fast_path: bool,
) -> None:
    """By default no forwarded header is believed: the peer is the client."""
    statuses = await failed_key_answers(
        quota_app(NOW, fast_path=fast_path, failed_keys_per_minute=20), 300
    )
    print(f"300 wrong keys, rotating X-Forwarded-For: {statuses.count(429)} answered 429")
    assert statuses[:20] == [401] * 20
    assert statuses.count(429) >= 270


async def test_the_address_a_trusted_proxy_appended_is_the_client() -> None:
    app = quota_app(NOW, fast_path=True, failed_keys_per_minute=20, proxies=TrustedProxies(hops=1))
    assert set(await failed_key_answers(app, 300)) == {401}


@pytest.mark.parametrize(
    ("proxies", "peer", "forwarded", "client"),
    [
        (TrustedProxies(), "10.0.0.1", "6.6.6.6", "10.0.0.1"),
        (TrustedProxies(), "10.0.0.1", None, "10.0.0.1"),
        (TrustedProxies(hops=1), "10.0.0.1", "6.6.6.6, 1.2.3.4", "1.2.3.4"),
        (TrustedProxies(hops=2), "10.0.0.1", "6.6.6.6, 1.2.3.4, 10.0.0.9", "1.2.3.4"),
        (TrustedProxies(hops=2), "10.0.0.1", "1.2.3.4", "10.0.0.1"),
        (
            TrustedProxies(networks=[ip_network("10.0.0.0/8")]),
            "10.0.0.1",
            "6.6.6.6, 1.2.3.4",
            "1.2.3.4",
        ),
        (
            TrustedProxies(networks=[ip_network("10.0.0.0/8")]),
            "10.0.0.1",
            "6.6.6.6, 1.2.3.4, 10.1.1.1",
            "1.2.3.4",
        ),
        (TrustedProxies(networks=[ip_network("10.0.0.0/8")]), "1.2.3.4", "6.6.6.6", "1.2.3.4"),
        (TrustedProxies(networks=[ip_network("10.0.0.0/8")]), "10.0.0.1", "10.2.2.2", "10.2.2.2"),
        (TrustedProxies(networks=[ip_network("10.0.0.0/8")]), "10.0.0.1", "junk, 10.2.2.2", "junk"),
    ],
)
def test_client_address(
    proxies: TrustedProxies, peer: str, forwarded: str | None, client: str
) -> None:
    assert proxies.client_address(peer, forwarded) == client


async def test_the_key_is_checked_before_the_body_is_read() -> None:
    """A caller without a valid key gets its 401 whatever it sent: the body is not parsed."""
    for key, code in [(None, "missing_api_key"), ("sk-tp-nobody", "invalid_api_key")]:
        answer = await both(NOW, b"\x00 not JSON at all", key)
        assert answer.status_code == 401
        assert answer.json()["code"] == code


def _answered(status: int) -> float:
    """How many authorize requests `metering_http_requests_total` counts with `status`."""
    labels = {"component": "quota", "method": "POST", "route": "/v1/authorize"}
    value = REGISTRY.get_sample_value(
        "metering_http_requests_total", {**labels, "status": str(status)}
    )
    return value or 0.0


def _timed() -> float:
    labels = {"component": "quota", "method": "POST", "route": "/v1/authorize"}
    return REGISTRY.get_sample_value("metering_http_request_duration_seconds_count", labels) or 0.0


async def test_the_front_counts_and_times_each_request_as_the_edge_does() -> None:
    counted, timed = _answered(200), _timed()
    answer = await post(
        quota_app(NOW, fast_path=True), b'{"model": "qwen3.6-plus"}', "sk-tp-busy-2"
    )
    assert answer.status_code == 200
    assert (_answered(200), _timed()) == (counted + 1, timed + 1)


async def _chunked(body: bytes) -> AsyncIterator[bytes]:
    yield body  # no Content-Length: the body is counted while it is read


@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "chunked"])
async def test_a_body_over_the_limit_is_refused_as_the_edge_refuses_it(declared: bool) -> None:
    body = b'{"model": "qwen3.6-plus", "client": "' + b"x" * 300 + b'"}'
    answers = []
    for fast_path in (True, False):
        app = quota_app(NOW, fast_path=fast_path, body_limits=BodyLimits(100))
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://quota") as client:
            answers.append(
                await client.post(
                    "/v1/authorize",
                    content=body if declared else _chunked(body),
                    headers={"authorization": "Bearer sk-tp-packed-2"},
                )
            )
    fast, routed = answers
    assert (fast.status_code, fast.headers, fast.content) == (
        routed.status_code,
        routed.headers,
        routed.content,
    )
    assert fast.status_code == 413
    assert fast.json()["code"] == "body_too_large"


async def test_a_nul_in_the_query_is_refused_as_the_edge_refuses_it() -> None:
    transport = httpx.ASGITransport(app=quota_app(NOW, fast_path=True))
    async with httpx.AsyncClient(transport=transport, base_url="http://quota") as client:
        answer = await client.post(
            "/v1/authorize?x=%00", content=b"{}", headers={"authorization": "Bearer k"}
        )
    assert answer.status_code == 400


async def test_a_body_that_stops_arriving_is_refused_with_408_by_the_front() -> None:
    app = quota_app(NOW, fast_path=True, body_limits=BodyLimits(1000, idle_timeout=0.05))
    sent: list[Message] = []

    async def receive() -> Message:
        if not stalled.is_set():
            stalled.set()
            return {"type": "http.request", "body": b"{", "more_body": True}
        await asyncio.Event().wait()  # the client sends nothing more
        raise AssertionError("unreachable")

    async def send(message: Message) -> None:
        sent.append(message)

    stalled = asyncio.Event()
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/v1/authorize",
        "raw_path": b"/v1/authorize",
        "root_path": "",
        "query_string": b"",
        "headers": [(b"authorization", b"Bearer sk-tp-packed-2")],
        "client": ("127.0.0.1", 4711),
    }
    counted = _answered(408)
    await asyncio.wait_for(app(scope, receive, send), 5)
    assert sent[0]["status"] == 408
    assert (b"connection", b"close") in sent[0]["headers"]
    assert b'"code":"body_timeout"' in sent[1]["body"]
    assert _answered(408) == counted + 1


async def test_an_error_behind_the_front_answers_500_and_is_counted() -> None:
    app = quota_app(NOW, fast_path=True)

    async def broken(*_args: Any) -> Any:
        raise RuntimeError("a bug")

    front = app.build_middleware_stack()  # the front, to reach its authorizer
    assert isinstance(front, AuthorizeFront)
    front.authorizer.respond = broken  # type: ignore[method-assign,assignment]
    app.middleware_stack = front
    counted = _answered(500)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://quota") as client:
        answer = await client.post(
            "/v1/authorize", content=b"{}", headers={"authorization": "Bearer sk-tp-packed-2"}
        )
    assert (answer.status_code, answer.text) == (500, "Internal Server Error")
    assert _answered(500) == counted + 1
