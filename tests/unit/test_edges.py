"""The shared HTTP edges over ASGI: private metrics, bounded labels, problems everywhere."""

from __future__ import annotations

import ast
import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from prometheus_client import CollectorRegistry, Counter, generate_latest
from starlette.types import Message, Receive, Scope, Send

from metering.edges import BodyLimit, BodyLimits
from metering.http import Readiness, create_app, problem_code
from metering.metrics import PerSubscription
from metering.problems import CATALOGUE, document
from metering.settings import load_settings

ROOT = Path(__file__).resolve().parents[2]


@contextlib.asynccontextmanager
async def _no_lifespan(_app: FastAPI) -> AsyncIterator[None]:
    yield


def app_with(**settings: object) -> FastAPI:
    return create_app("ledger", _no_lifespan, Readiness(), settings=load_settings(**settings))


async def get(
    app: FastAPI, path: str, *, peer: str = "127.0.0.1", headers: dict[str, str] | None = None
) -> httpx.Response:
    transport = httpx.ASGITransport(app=app, client=(peer, 4711))
    async with httpx.AsyncClient(transport=transport, base_url="http://svc") as client:
        return await client.get(path, headers=headers)


async def test_metrics_need_the_metrics_token_when_one_is_set() -> None:
    app = app_with(metrics_token="s3cret")
    refused = await get(app, "/metrics", peer="192.0.2.5")
    assert refused.status_code == 401
    assert refused.headers["content-type"] == "application/problem+json"
    assert (await get(app, "/metrics", headers={"Authorization": "Bearer nope"})).status_code == 401
    allowed = await get(
        app, "/metrics", peer="192.0.2.5", headers={"Authorization": "Bearer s3cret"}
    )
    assert allowed.status_code == 200
    assert "process_cpu_seconds_total" in allowed.text or "python_info" in allowed.text


async def test_metrics_without_a_token_answer_loopback_callers_only() -> None:
    app = app_with()
    assert (await get(app, "/metrics")).status_code == 200
    assert (await get(app, "/metrics", peer="::1")).status_code == 200
    remote = await get(app, "/metrics", peer="192.0.2.5")
    assert remote.status_code == 403
    assert remote.json()["code"] == "metrics_private"


async def test_metrics_on_their_own_port_are_not_on_the_apis() -> None:
    answer = await get(app_with(metrics_port=9464), "/metrics")
    assert answer.status_code == 404
    assert answer.headers["content-type"] == "application/problem+json"


@pytest.fixture
def per_subscription() -> tuple[PerSubscription, CollectorRegistry]:
    registry = CollectorRegistry()
    counter = Counter("spend_micro", "spend", ["subscription_id", "tier"], registry=registry)
    return PerSubscription(counter), registry


def test_per_subscription_series_are_off_by_default(
    per_subscription: tuple[PerSubscription, CollectorRegistry],
) -> None:
    metric, registry = per_subscription
    metric.labels("sub-1", "standard").inc(5)
    assert b"sub-1" not in generate_latest(registry)


def test_per_subscription_series_stop_at_their_cap(
    per_subscription: tuple[PerSubscription, CollectorRegistry],
) -> None:
    metric, registry = per_subscription
    metric.configure(enabled=True, cap=3)
    for n in range(10):
        metric.labels(f"sub-{n}", "standard").inc()
    metric.labels("sub-0", "premium").inc()  # a known subscription keeps its series
    text = generate_latest(registry).decode()
    assert [f"sub-{n}" in text for n in range(10)] == [True] * 3 + [False] * 7
    assert 'subscription_id="sub-0",tier="premium"' in text
    metric.remove("sub-1", "standard")
    metric.labels("sub-9", "standard").inc()  # room again
    assert "sub-9" in generate_latest(registry).decode()
    with pytest.raises(KeyError):
        metric.remove("sub-5", "standard")


async def test_unknown_routes_and_methods_answer_problems_with_a_code() -> None:
    app = app_with()
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://svc") as client:
        unknown = await client.get("/nope")
        wrong_method = await client.delete("/healthz")
        nul = await client.get("/healthz", params={"x": "a\x00b"})
        too_large = await client.post("/healthz", content=b"x" * (2 * 1024 * 1024))
    for answer, status, code in [
        (unknown, 404, "not_found"),
        (wrong_method, 405, "method_not_allowed"),
        (nul, 400, "bad_request"),
        (too_large, 413, "body_too_large"),
    ]:
        assert answer.status_code == status, answer.text
        assert answer.headers["content-type"] == "application/problem+json"
        assert answer.json()["code"] == code
        assert answer.json()["type"] == f"/problems/{code}"
    assert wrong_method.headers["allow"] == "GET"


async def test_a_problem_type_resolves_to_the_page_of_its_code() -> None:
    app = app_with()
    for code in CATALOGUE:
        page = await get(app, f"/problems/{code}")
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/markdown")
        assert f"`{code}`" in page.text
    assert (await get(app, "/problems/no_such_code")).status_code == 404


def test_docs_problems_md_is_generated_from_the_catalogue() -> None:
    assert (ROOT / "docs" / "problems.md").read_text() == document(), (
        "docs/problems.md is out of date: python -m metering.problems > docs/problems.md"
    )


def _problem_codes(tree: ast.AST) -> set[str]:
    """The codes of the problems a module builds: `problem(status, title, ..., code=...)`,
    `DirectoryError(status, title, detail, code, ...)`, `FieldProblem(field, message, code)`,
    and literal `{"title": ..., "code": ...}` items; a title without a code stands for its
    snake-case default."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            name = getattr(node.func, "id", None) or getattr(node.func, "attr", None)
            texts = [a.value if isinstance(a, ast.Constant) else None for a in node.args]
            keyword = {k.arg: k.value for k in node.keywords}
            if name == "problem" and len(texts) >= 2 and isinstance(texts[1], str):
                code = keyword.get("code")
                if isinstance(code, ast.Constant) and isinstance(code.value, str):
                    found.add(code.value)
                elif code is None:
                    found.add(problem_code(texts[1]))
            elif name == "DirectoryError" and len(texts) >= 4 and isinstance(texts[3], str):
                found.add(texts[3])
            elif name == "FieldProblem" and len(texts) >= 3 and isinstance(texts[2], str):
                found.add(texts[2])
        elif isinstance(node, ast.Dict):
            items = {
                k.value: v.value
                for k, v in zip(node.keys, node.values, strict=True)
                if isinstance(k, ast.Constant) and isinstance(v, ast.Constant)
            }
            title, item_code = items.get("title"), items.get("code")
            if isinstance(title, str) and "status" in items:
                found.add(item_code if isinstance(item_code, str) else problem_code(title))
    return found


def test_every_problem_the_services_answer_is_in_the_catalogue() -> None:
    """Each problem code built in the code has its page (docs/problems.md)."""
    found = set()
    for source in [*(ROOT / "services").rglob("*.py"), *(ROOT / "metering").rglob("*.py")]:
        found |= _problem_codes(ast.parse(source.read_text()))
    found |= {"bad_request", "method_not_allowed", "not_found", "body_too_large", "body_timeout"}
    missing = found - set(CATALOGUE)
    assert not missing, f"add these codes to metering/problems.py: {sorted(missing)}"


def _body_reader(read: list[bytes]) -> Any:
    """An ASGI app that reads the whole body, then answers 200 with its length."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            read.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        body = str(sum(map(len, read))).encode()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": body})

    return app


def _post_scope() -> Scope:
    return {
        "type": "http",
        "method": "POST",
        "path": "/v1/usage",
        "query_string": b"",
        "headers": [(b"transfer-encoding", b"chunked")],
    }


async def _call(limit: BodyLimit, pieces: list[tuple[float, bytes, bool]]) -> list[Message]:
    """Run one request whose body arrives as `pieces` (delay before it, bytes, more to come);
    after the last piece the client sends nothing more."""
    queue = list(pieces)

    async def receive() -> Message:
        if not queue:
            await asyncio.Event().wait()  # the client stalls for good
        delay, body, more = queue.pop(0)
        await asyncio.sleep(delay)
        return {"type": "http.request", "body": body, "more_body": more}

    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    await limit(_post_scope(), receive, send)
    await asyncio.sleep(0)  # the request's task was not left cancelled by the body deadline
    return sent


async def test_a_body_that_stops_arriving_is_refused_with_408() -> None:
    read: list[bytes] = []
    limit = BodyLimit(_body_reader(read), BodyLimits(1000, idle_timeout=0.05))
    sent = await asyncio.wait_for(_call(limit, [(0, b"{", True)]), 5)
    assert sent[0]["status"] == 408
    assert (b"connection", b"close") in sent[0]["headers"]
    assert b'"code":"body_timeout"' in sent[1]["body"]
    assert read == [b"{"]


async def test_a_slow_body_whose_pieces_each_come_in_time_is_read() -> None:
    read: list[bytes] = []
    limit = BodyLimit(_body_reader(read), BodyLimits(1000, idle_timeout=0.1))
    pieces = [(0.04, b"x" * 10, True) for _ in range(5)] + [(0.04, b"y", False)]
    sent = await asyncio.wait_for(_call(limit, pieces), 5)  # 0.24 s in all, > the timeout
    assert sent[0]["status"] == 200
    assert sent[1]["body"] == b"51"
