"""ingest's write API (contract.md, "ingest"): usage reports and plan commands."""

from __future__ import annotations

import inspect
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from types import SimpleNamespace
from typing import Annotated, Any, cast

import orjson
from fastapi import APIRouter, Depends, Header, Path, Request
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError
from starlette.types import ASGIApp, Receive, Scope, Send

from ingest import directory
from ingest.acceptance import Outcome
from ingest.intake import (
    CommandResult,
    Intake,
    PlanCommand,
    UsageResult,
    count_usage,
)
from ingest.rules import FieldProblem
from metering.apikeys import key_hash, new_api_key
from metering.db import Connection
from metering.http import bearer_guard, problem
from metering.publishing import BrokerUnavailable
from metering.settings import Settings
from schemas.api import (
    MAX_BATCH,
    ApiKeyCreated,
    FactAccepted,
    PackPurchase,
    Problem,
    SeatCreate,
    SeatUpdate,
    SubscriptionCancel,
    SubscriptionCreate,
    UsageAccepted,
    UsageBatchItem,
    UsageBatchRequest,
    UsageBatchResponse,
    UsageReport,
)
from schemas.base import IDENTIFIER_PATTERN, Contract
from schemas.facts import (
    ApiKeyIssued,
    ApiKeyRevoked,
    SeatAdded,
    SeatRemoved,
    SeatTierChanged,
    SharedPackPurchased,
    SubscriptionActivated,
    SubscriptionCancelled,
)

RETRY_AFTER_SECONDS = "2"
IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        max_length=200,
        description="makes a retried command safe: the same key and body give the same answer",
    ),
]
PROBLEMS: dict[int | str, dict[str, Any]] = {
    status: {"model": Problem, "content": {"application/problem+json": {}}}
    for status in (401, 404, 409, 422, 503)
}


async def intake_of(request: Request) -> Intake:
    """The app's intake. Async on purpose: FastAPI runs a plain `def` dependency in its
    thread pool, a hand-off to another thread on every request (issue 17)."""
    intake: Intake = request.app.state.intake
    return intake


IntakeDep = Annotated[Intake, Depends(intake_of)]
Id = Annotated[str, Path(pattern=IDENTIFIER_PATTERN)]
"""An id in the URL: the same rule as ids in bodies."""


def reporter_guard(settings: Settings) -> Callable[..., Awaitable[None]]:
    """Who may report usage: the admin token or the gateway's."""
    return bearer_guard(settings.tokens("metering_admin_token", "metering_gateway_token"))


def build_router(settings: Settings, key_hash_secret: str, clock: Any) -> APIRouter:
    """The routes; writes need the admin token, usage also takes the gateway's token."""
    admin = Depends(bearer_guard(settings.tokens("metering_admin_token")))
    reporter = Depends(reporter_guard(settings))
    router = APIRouter(prefix="/v1", responses=PROBLEMS)

    @router.post(
        "/usage",
        status_code=202,
        dependencies=[reporter],
        tags=["usage"],
        summary="Report one model call's usage",
        responses={200: {"model": UsageAccepted, "description": "already accepted"}},
        response_model=UsageAccepted,
        openapi_extra=_json_body(UsageReport),
    )
    async def post_usage(request: Request, intake: IntakeDep) -> Response:
        return await answer_usage(request, intake)

    @router.post(
        "/usage/batch",
        dependencies=[reporter],
        tags=["usage"],
        summary=f"Report up to {MAX_BATCH} model calls; one result per report, in order",
        response_model=UsageBatchResponse,
        openapi_extra=_json_body(UsageBatchRequest),
    )
    async def post_usage_batch(request: Request, intake: IntakeDep) -> Response:
        return await answer_usage_batch(request, intake)

    skew = timedelta(seconds=settings.usage_max_future_skew_seconds)
    purchases = directory.PurchaseWindow(
        skew, timedelta(seconds=settings.usage_max_lateness_seconds)
    )

    @router.post(
        "/subscriptions",
        status_code=201,
        dependencies=[admin],
        tags=["plan"],
        summary="Activate a subscription for an account (now, or scheduled to start later)",
    )
    async def post_subscription(body: SubscriptionCreate, intake: IntakeDep) -> Response:
        now = clock()
        if body.started_at > now + MAX_SCHEDULE_AHEAD:
            raise directory.DirectoryError(
                422,
                "Start too far ahead",
                f"started_at may be at most {MAX_SCHEDULE_AHEAD.days} days ahead",
                "start_too_far_ahead",
                "started_at",
            )
        payload = SubscriptionActivated(
            subscription_id=body.subscription_id,
            started_at=body.started_at,
            expires_at=body.expires_at,
        )
        return await _plan(
            intake,
            _plan_command(
                now,
                payload,
                key=body.subscription_id,
                body=body.model_dump(mode="json"),
                change=directory.open_subscription(body, now),
                occurred_at=min(body.started_at, now),
            ),
        )

    @router.post(
        "/subscriptions/{subscription_id}/seats",
        status_code=201,
        dependencies=[admin],
        tags=["plan"],
        summary="Add a seat (one member, one tier); usable from now or the plan's later start",
    )
    async def post_seat(subscription_id: Id, body: SeatCreate, intake: IntakeDep) -> Response:
        now = clock()
        return await _plan(
            intake,
            _plan_command(
                now,
                SeatAdded(subscription_id=subscription_id, **body.model_dump()),
                key=body.seat_id,
                body={"subscription_id": subscription_id, **body.model_dump(mode="json")},
                change=directory.add_seat(subscription_id, body.seat_id, body.tier, now),
            ),
        )

    @router.patch(
        "/subscriptions/{subscription_id}/seats/{seat_id}",
        dependencies=[admin],
        tags=["plan"],
        summary="Change a seat's tier (upgrade now, downgrade from next month)",
    )
    async def patch_seat(
        subscription_id: Id,
        seat_id: Id,
        body: SeatUpdate,
        intake: IntakeDep,
        idempotency_key: IdempotencyKey = None,
    ) -> Response:
        now = clock()
        return await _plan(
            intake,
            _plan_command(
                now,
                SeatTierChanged(subscription_id=subscription_id, seat_id=seat_id, tier=body.tier),
                key=idempotency_key or str(uuid.uuid4()),
                body={"seat_id": seat_id, **body.model_dump(mode="json")},
                change=directory.change_tier(subscription_id, seat_id, body.tier, now),
            ),
        )

    @router.delete(
        "/subscriptions/{subscription_id}/seats/{seat_id}",
        dependencies=[admin],
        tags=["plan"],
        summary="Remove a seat: its keys stop working at once; its history stays",
    )
    async def delete_seat(subscription_id: Id, seat_id: Id, intake: IntakeDep) -> Response:
        now = clock()
        return await _plan(
            intake,
            _plan_command(
                now,
                SeatRemoved(subscription_id=subscription_id, seat_id=seat_id),
                key=seat_id,
                body={"subscription_id": subscription_id, "seat_id": seat_id},
                change=directory.remove_seat(subscription_id, seat_id, now),
            ),
        )

    @router.post(
        "/subscriptions/{subscription_id}/seats/{seat_id}/keys",
        status_code=201,
        dependencies=[admin],
        tags=["plan"],
        summary="Issue an API key for a seat; the secret is shown this once",
        response_model=ApiKeyCreated,
    )
    async def post_key(
        subscription_id: Id,
        seat_id: Id,
        intake: IntakeDep,
        idempotency_key: IdempotencyKey = None,
    ) -> Response:
        now = clock()
        key_id = f"key-{uuid.uuid4().hex[:16]}"
        secret = new_api_key()
        hashed = key_hash(secret, key_hash_secret)
        command = _plan_command(
            now,
            ApiKeyIssued(
                subscription_id=subscription_id,
                seat_id=seat_id,
                key_id=key_id,
                key_hash=hashed,
            ),
            key=idempotency_key or key_id,
            body={"subscription_id": subscription_id, "seat_id": seat_id},
            change=directory.issue_key(subscription_id, seat_id, key_id, now, hashed),
            response={"key_id": key_id},
        )
        result = await _command(intake, command)
        if result.outcome is Outcome.DUPLICATE or result.response.get("key_id") != key_id:
            raise directory.DirectoryError(
                409,
                "Key already issued",
                f"this Idempotency-Key already issued key '{result.response.get('key_id')}'; "
                "its secret was shown once and is not kept: revoke it and issue a new one",
                "key_already_issued",
            )
        created = ApiKeyCreated(event_id=str(result.event_id), key_id=key_id, api_key=secret)
        return JSONResponse(created.model_dump(), status_code=201)

    @router.delete(
        "/keys/{key_id}", dependencies=[admin], tags=["plan"], summary="Revoke an API key"
    )
    async def delete_key(key_id: Id, intake: IntakeDep) -> Response:
        now = clock()
        return await _plan(
            intake,
            _plan_command(
                now,
                ApiKeyRevoked(key_id=key_id),
                key=key_id,
                body={"key_id": key_id},
                change=directory.revoke_key(key_id, now),
            ),
        )

    @router.post(
        "/subscriptions/{subscription_id}/packs",
        status_code=201,
        dependencies=[admin],
        tags=["plan"],
        summary="Buy a shared quota pack (625,000 credits, valid one month from its purchase)",
    )
    async def post_pack(subscription_id: Id, body: PackPurchase, intake: IntakeDep) -> Response:
        now = clock()
        return await _plan(
            intake,
            _plan_command(
                now,
                SharedPackPurchased(subscription_id=subscription_id, **body.model_dump()),
                key=body.pack_id,
                body={"subscription_id": subscription_id, **body.model_dump(mode="json")},
                change=directory.buy_pack(subscription_id, body.purchased_at, now, purchases),
                occurred_at=min(body.purchased_at, now),
            ),
        )

    @router.post(
        "/subscriptions/{subscription_id}/cancel",
        dependencies=[admin],
        tags=["plan"],
        summary="Cancel a subscription now or at a later `at`: its seats are suspended from then",
    )
    async def post_cancel(
        subscription_id: Id, body: SubscriptionCancel, intake: IntakeDep
    ) -> Response:
        now = clock()
        return await _plan(
            intake,
            _plan_command(
                now,
                SubscriptionCancelled(subscription_id=subscription_id, at=body.at),
                key=subscription_id,
                body=body.model_dump(mode="json"),
                change=directory.cancel_subscription(subscription_id, body.at, now, skew),
                occurred_at=min(body.at, now),
            ),
        )

    return router


MAX_SCHEDULE_AHEAD = timedelta(days=366)
"""How far ahead a subscription may be scheduled to start."""


@dataclass(frozen=True)
class PlanRule:
    """How a plan command's fact is claimed and answered."""

    scope: str
    """The namespace of its idempotency key (a seat id and a pack id never collide)."""
    created: bool
    """Whether its first acceptance answers 201 Created (else 200)."""


PLAN_RULES: dict[type[Contract], PlanRule] = {
    SubscriptionActivated: PlanRule("subscription", created=True),
    SeatAdded: PlanRule("seat", created=True),
    SeatTierChanged: PlanRule("seat-tier", created=False),
    SeatRemoved: PlanRule("seat-removed", created=False),
    ApiKeyIssued: PlanRule("key", created=True),
    ApiKeyRevoked: PlanRule("key-revoked", created=False),
    SharedPackPurchased: PlanRule("pack", created=True),
    SubscriptionCancelled: PlanRule("cancel", created=False),
}
"""Each plan fact's command rule; the fact's registry change is ingest/directory.py's."""


def _plan_command(
    now: datetime,
    payload: Contract,
    *,
    key: str,
    body: object,
    change: Callable[[Connection], Awaitable[str]],
    occurred_at: datetime | None = None,
    response: dict[str, object] | None = None,
) -> PlanCommand:
    """The command appending `payload`'s fact, recorded `now` (and, unless told, occurred
    then), under idempotency key `key` with `body`, applying `change` to the registry."""
    return PlanCommand(
        scope=PLAN_RULES[type(payload)].scope,
        key=key,
        body=body,
        event_type=type(payload).__name__,
        payload=payload,
        occurred_at=now if occurred_at is None else occurred_at,
        recorded_at=now,
        apply_to_directory=change,
        response=response or {},
    )


async def _plan(intake: Intake, command: PlanCommand) -> Response:
    """Accept a plan command and answer it as its fact's rule says."""
    return await _command_answer(intake, command, created=PLAN_RULES[type(command.payload)].created)


async def answer_usage(request: Request, intake: Intake) -> Response:
    """`POST /v1/usage`, once the caller's token is checked: the route and `UsageFastPath`
    both answer with this."""
    [result] = await _accept_reports(intake, [await _json(request)])
    if result.status == "invalid":
        return _invalid(result.problems)
    if result.status == "conflict":
        return problem(
            409, "Conflicting report", result.problems[0].message, code="conflicting_report"
        )
    body = UsageAccepted(event_id=str(result.event_id), duplicate=result.status == "duplicate")
    return JSONResponse(body.model_dump(), status_code=200 if body.duplicate else 202)


async def answer_usage_batch(request: Request, intake: Intake) -> Response:
    """`POST /v1/usage/batch`, once the caller's token is checked (the route and
    `UsageFastPath`)."""
    document = await _json(request)
    if not isinstance(document, dict) or set(document) != {"reports"}:
        raise _BadBody('the body must be an object with one field, "reports"')
    reports = document["reports"]
    if not isinstance(reports, list) or not 1 <= len(reports) <= MAX_BATCH:
        raise _BadBody(f'"reports" must be a list of 1 to {MAX_BATCH} usage reports')
    results = await _accept_reports(intake, reports)
    return Response(
        orjson.dumps({"results": [_batch_item(r) for r in results]}),
        media_type="application/json",
    )


USAGE_ROUTES = {"/v1/usage": answer_usage, "/v1/usage/batch": answer_usage_batch}


class UsageFastPath:
    """Pure ASGI middleware answering `POST /v1/usage` and `/v1/usage/batch` before FastAPI's
    routing (quota's `AuthorizeFront` goes further: it stands in front of every middleware).

    Every model call a gateway meters passes here; for a single report FastAPI's routing,
    dependency solving and exception middleware cost about as much as accepting it (issue
    17). It runs the routes' own guard and answer, and maps what they raise with the app's
    own exception handlers, so it answers exactly as the documented routes do; any other
    request goes on to FastAPI.
    """

    def __init__(
        self,
        app: ASGIApp,
        guard: Callable[[Request], Awaitable[None]],
        intake: Callable[[], Intake],
    ) -> None:
        self.app = app
        self.guard = guard
        self.intake = intake
        self.routes = {path: SimpleNamespace(path=path) for path in USAGE_ROUTES}
        """What `RequestMetrics` reads the route template from, as from a matched route."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        answer = USAGE_ROUTES.get(scope["path"]) if scope["type"] == "http" else None
        if answer is None or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        scope["route"] = self.routes[scope["path"]]
        request = Request(scope, receive)
        try:
            await self.guard(request)
            response = await answer(request, self.intake())
        except Exception as error:
            response = await _handled(request, error)
        await response(scope, receive, send)


async def _handled(request: Request, error: Exception) -> Response:
    """The answer the app's exception handlers give for `error` (re-raised when none does:
    the server's error middleware then answers 500)."""
    handlers = request.app.exception_handlers
    for kind in type(error).__mro__:
        handler = handlers.get(kind)
        if handler is not None:
            response = handler(request, error)
            return cast(Response, await response if inspect.isawaitable(response) else response)
    raise error


async def _accept_reports(intake: Intake, documents: list[Any]) -> list[UsageResult]:
    """Validate each report on its own (one bad report does not sink a batch), accept the
    valid ones, and answer for all, in order."""
    parsed: list[UsageReport | list[FieldProblem]] = []
    for document in documents:
        try:
            parsed.append(UsageReport.model_validate(document))
        except ValidationError as error:
            parsed.append(_field_problems(error))
    valid = [p for p in parsed if not isinstance(p, list)]  # (a model's isinstance is slow)
    try:
        accepted = iter(await intake.accept_usage(valid))
    except BrokerUnavailable as error:
        raise _Unavailable from error
    results = [
        UsageResult("invalid", problems=p) if isinstance(p, list) else next(accepted)
        for p in parsed
    ]
    count_usage(results)
    return results


async def _json(request: Request) -> Any:
    try:
        return orjson.loads(await request.body())
    except orjson.JSONDecodeError as error:
        raise _BadBody(f"the body is not JSON: {error}") from None


def _json_body(model: type[Contract]) -> dict[str, Any]:
    """OpenAPI for a JSON body the route parses itself (to answer per field, per report)."""
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


class _Unavailable(Exception):
    """The broker did not acknowledge: answer 503 with Retry-After."""


async def _command(intake: Intake, command: PlanCommand) -> CommandResult:
    try:
        return await intake.accept_command(command)
    except BrokerUnavailable as error:
        raise _Unavailable from error


async def _command_answer(intake: Intake, command: PlanCommand, *, created: bool) -> Response:
    result = await _command(intake, command)
    if result.outcome is Outcome.CONFLICT:
        return problem(
            409,
            "Conflicting command",
            f"'{command.key}' was already used with a different body (event {result.event_id})",
        )
    body = FactAccepted(event_id=str(result.event_id)).model_dump()
    repeated = result.outcome is Outcome.DUPLICATE
    body["duplicate"] = repeated
    return JSONResponse(body, status_code=201 if created and not repeated else 200)


class _BadBody(Exception):
    """The body as a whole is unusable (not JSON, not a batch): 422 without per-field detail."""


def _field_problems(error: ValidationError) -> list[FieldProblem]:
    return [
        FieldProblem(".".join(str(p) for p in e["loc"]) or "body", e["msg"], "malformed")
        for e in error.errors()
    ]


def _problem_fields(problems: list[FieldProblem]) -> dict[str, Any]:
    """The `detail` and `errors` of a problem+json body listing every bad field."""
    return {
        "detail": "invalid fields: " + ", ".join(p.field for p in problems),
        "code": problems[0].reason,
        "errors": [{"field": p.field, "message": p.message, "code": p.reason} for p in problems],
    }


def _invalid(problems: list[FieldProblem]) -> Response:
    return problem(422, "Invalid request", **_problem_fields(problems))


def _batch_item(result: UsageResult) -> dict[str, object]:
    """One report's item of a `UsageBatchResponse`, in the contract's JSON shape.

    An accepted or duplicate report (nearly all) is written out directly: validating and
    dumping a contract model per report cost ingest more than the rest of its answer (issue
    17). tests/unit/test_usage_http.py checks every outcome's item against the contract."""
    event_id = None if result.event_id is None else str(result.event_id)
    if result.status == "invalid":
        problem_: dict[str, object] = {
            "title": "Invalid report",
            "status": 422,
            **_problem_fields(result.problems),
        }
    elif result.status == "conflict":
        problem_ = {
            "title": "Conflicting report",
            "status": 409,
            "detail": result.problems[0].message,
            "code": "conflicting_report",
        }
    else:
        return {"status": result.status, "event_id": event_id, "problem": None}
    item = {"status": result.status, "event_id": event_id, "problem": problem_}
    return UsageBatchItem.model_validate(item).model_dump(mode="json")


def install_error_handlers(app: Any) -> None:
    """problem+json answers for the outcomes the routes raise."""

    async def unavailable(_request: Request, _error: Exception) -> Response:
        response = problem(
            503,
            "Broker unavailable",
            "the event log did not acknowledge in time: the fact may already be recorded. "
            "Retrying with the same request_id (or Idempotency-Key and body) is safe: it is "
            "never counted twice",
            code="broker_unavailable",
        )
        response.headers["Retry-After"] = RETRY_AFTER_SECONDS
        return response

    async def directory_error(_request: Request, error: Exception) -> Response:
        assert isinstance(error, directory.DirectoryError)
        extra: dict[str, Any] = {}
        if error.field is not None:
            extra["errors"] = [{"field": error.field, "message": error.detail, "code": error.code}]
        return problem(error.status, error.title, error.detail, code=error.code, **extra)

    async def bad_body(_request: Request, error: Exception) -> Response:
        return problem(422, "Invalid request", str(error), code="malformed")

    app.add_exception_handler(_Unavailable, unavailable)
    app.add_exception_handler(directory.DirectoryError, directory_error)
    app.add_exception_handler(_BadBody, bad_body)
