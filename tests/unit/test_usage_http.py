"""`POST /v1/usage` and `/v1/usage/batch` over ASGI: ingest's fast path answers byte for byte
as the FastAPI routes it bypasses (the documented operations), for every outcome: accepted,
duplicate, invalid, conflicting, refused tokens, malformed bodies, a broker or a database
that does not answer."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any, cast

import httpx
import orjson
import pytest
from fastapi import FastAPI
from starlette.middleware import Middleware

from ingest.api import UsageFastPath, build_router, install_error_handlers, reporter_guard
from ingest.intake import Intake, UsageResult
from ingest.rules import FieldProblem
from metering.http import Readiness, create_app
from metering.publishing import BrokerUnavailable
from metering.settings import load_settings
from schemas.api import UsageBatchResponse, UsageReport
from tests.unit.test_ingest_rules import report

TOKEN = "gateway-token-" + "g" * 24
SETTINGS = load_settings(
    api_key_hash_secret="s" * 32, metering_admin_token="a" * 32, metering_gateway_token=TOKEN
)
EVENT_ID = uuid.UUID("6f1c2a4e-0b7d-5c3e-9a8f-1d2e3f4a5b6c")


class FakeIntake:
    """Answers every valid report with `outcome` (a status, or an exception to raise)."""

    def __init__(self, outcome: str | Exception) -> None:
        self.outcome = outcome

    async def accept_usage(self, reports: Sequence[UsageReport]) -> list[UsageResult]:
        if isinstance(self.outcome, Exception):
            raise self.outcome
        if self.outcome == "conflict":
            problem = FieldProblem("request_id", "already used for another report", "conflict")
            return [UsageResult("conflict", problems=[problem]) for _ in reports]
        return [UsageResult(self.outcome, EVENT_ID) for _ in reports]  # type: ignore[arg-type]


@contextlib.asynccontextmanager
async def _no_lifespan(_app: FastAPI) -> AsyncIterator[None]:
    yield


def ingest_app(intake: FakeIntake, *, fast_path: bool) -> FastAPI:
    as_intake = cast(Intake, intake)  # it answers the one call the usage routes make
    hot_paths = (
        [Middleware(UsageFastPath, guard=reporter_guard(SETTINGS), intake=lambda: as_intake)]
        if fast_path
        else []
    )
    app = create_app("ingest", _no_lifespan, Readiness(), hot_paths=hot_paths, settings=SETTINGS)
    app.state.intake = intake
    app.include_router(build_router(SETTINGS, "s" * 32, lambda: None))
    install_error_handlers(app)
    return app


REPORT = report().model_dump(mode="json")
INVALID = {**REPORT, "input_tokens": -1}


async def both(path: str, body: bytes, outcome: str | Exception, token: str | None) -> Any:
    """The fast path's answer, once checked equal to the FastAPI route's."""
    headers = {"content-type": "application/json"}
    if token is not None:
        headers["authorization"] = f"Bearer {token}"
    answers = []
    for fast_path in (True, False):
        app = ingest_app(FakeIntake(outcome), fast_path=fast_path)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://ingest") as client:
            answers.append(await client.post(path, content=body, headers=headers))
    fast, routed = answers
    assert (fast.status_code, fast.headers, fast.content) == (
        routed.status_code,
        routed.headers,
        routed.content,
    )
    return fast


CASES: list[tuple[str, str, object, str | Exception, str | None, int, str | None]] = [
    # id, path, body, the intake's outcome, token, status, problem code
    ("accepted", "/v1/usage", REPORT, "accepted", TOKEN, 202, None),
    ("duplicate", "/v1/usage", REPORT, "duplicate", TOKEN, 200, None),
    ("conflict", "/v1/usage", REPORT, "conflict", TOKEN, 409, "conflicting_report"),
    ("invalid", "/v1/usage", INVALID, "accepted", TOKEN, 422, None),
    ("no token", "/v1/usage", REPORT, "accepted", None, 401, None),
    ("wrong token", "/v1/usage", REPORT, "accepted", "nope", 401, None),
    ("not json", "/v1/usage", b"{nope", "accepted", TOKEN, 422, "malformed"),
    ("broker down", "/v1/usage", REPORT, BrokerUnavailable("x"), TOKEN, 503, "broker_unavailable"),
    ("database down", "/v1/usage", REPORT, TimeoutError(), TOKEN, 503, "database_unavailable"),
    ("batch", "/v1/usage/batch", {"reports": [REPORT, INVALID]}, "accepted", TOKEN, 200, None),
    ("batch dup", "/v1/usage/batch", {"reports": [REPORT]}, "duplicate", TOKEN, 200, None),
    ("batch conflict", "/v1/usage/batch", {"reports": [REPORT]}, "conflict", TOKEN, 200, None),
    ("batch shape", "/v1/usage/batch", [REPORT], "accepted", TOKEN, 422, "malformed"),
    ("batch empty", "/v1/usage/batch", {"reports": []}, "accepted", TOKEN, 422, "malformed"),
    ("batch no token", "/v1/usage/batch", {"reports": [REPORT]}, "accepted", None, 401, None),
    (
        "batch broker down",
        "/v1/usage/batch",
        {"reports": [REPORT]},
        BrokerUnavailable("x"),
        TOKEN,
        503,
        "broker_unavailable",
    ),
]


@pytest.mark.parametrize(
    ("path", "body", "outcome", "token", "status", "code"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
async def test_fast_path_answers_as_the_route(
    path: str,
    body: object,
    outcome: str | Exception,
    token: str | None,
    status: int,
    code: str | None,
) -> None:
    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    answer = await both(path, raw, outcome, token)
    assert answer.status_code == status
    if code is not None:
        assert answer.json()["code"] == code
    if path == "/v1/usage/batch" and status == 200:  # written by hand: the contract's shape
        assert answer.json() == UsageBatchResponse.model_validate_json(answer.content).model_dump(
            mode="json"
        )


async def test_other_methods_and_paths_go_on_to_fastapi() -> None:
    app = ingest_app(FakeIntake("accepted"), fast_path=True)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://ingest") as client:
        assert (await client.get("/v1/usage")).status_code == 405
        assert (await client.get("/healthz")).json()["status"] == "ok"
