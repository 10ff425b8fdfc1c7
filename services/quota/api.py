"""quota's HTTP API: the gateway's authorize, a seat's balance, a team's overview, a member's
own balance (`GET /v1/me`). The reads check the caller's scope (metering/scopes.py): what it
may not read answers `404`, like an unknown id."""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import PlainTextResponse, Response
from fastapi.security import HTTPBearer
from pydantic import ValidationError
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Receive, Scope, Send

from metering import scopes
from metering.apikeys import key_hash
from metering.core.money import to_decimal_string
from metering.core.ratecard import RateCard
from metering.core.state import AccountState
from metering.core.views import SeatView, SubscriptionView, seat_view, subscription_view
from metering.edges import (
    BodyLimits,
    BodyTimeout,
    BodyTooLarge,
    TrustedProxies,
    first_header,
    no_body,
    read_body,
    refuse,
    refused_before_reading,
)
from metering.http import problem, record_request, validation_problem
from quota import metrics
from quota.accounts import AccountIndex
from quota.authorize import Decision, decide, key_holder, presented_key
from quota.ratelimit import FailedKeyLimiter
from schemas.api import (
    AuthorizeAllowed,
    AuthorizeDenied,
    AuthorizeRequest,
    PackBalance,
    Problem,
    SeatBalance,
    SubscriptionOverview,
)
from schemas.base import Contract

_READ_PROBLEMS: dict[int | str, dict[str, Any]] = {
    status: {"model": Problem, "content": {"application/problem+json": {}}} for status in (401, 404)
}
_DENIED = {status: {"model": AuthorizeDenied} for status in (400, 401, 403, 404, 429)}


AUTHORIZE_PATH = "/v1/authorize"
MEMBER_API_KEY = HTTPBearer(
    auto_error=False,
    scheme_name="memberApiKey",
    description="a member's API key (sk-tp-...): authorize answers 401 itself when it is "
    "missing or not valid",
)


def _schema(model: type[Contract]) -> dict[str, object]:
    return model.model_json_schema(ref_template="#/components/schemas/{model}")


class Authorizer:
    """Answers `POST /v1/authorize` from the account index, counting decisions and failed keys.

    Shared by the FastAPI route (the documented operation) and `AuthorizeFront` (what
    serves it in production), so both give the same answer by construction.
    """

    def __init__(
        self,
        index: AccountIndex,
        card: RateCard,
        key_hash_secret: str,
        limiter: FailedKeyLimiter,
        clock: Callable[[], datetime],
        proxies: TrustedProxies | None = None,
    ) -> None:
        self._index = index
        self._card = card
        self._key_hash_secret = key_hash_secret
        self._limiter = limiter
        self._clock = clock
        self._proxies = proxies or TrustedProxies()

    def _hash_key(self, api_key: str) -> str:
        return key_hash(api_key, self._key_hash_secret)

    async def respond(
        self, authorization: str | None, body: Callable[[], Awaitable[bytes]], scope: Scope
    ) -> Response:
        """The answer to one authorize request: the key is checked before the body is read,
        so a caller without a valid key never gets its body parsed (nor, past the body
        limit, read)."""
        started = time.perf_counter()
        api_key = presented_key(authorization)
        now = self._clock()
        holder = key_holder(self._index, api_key, self._hash_key, now)
        if isinstance(holder, Decision):
            decision = holder
        else:
            try:
                request = AuthorizeRequest.model_validate_json(await body())
            except ValidationError as error:
                return validation_problem(error)
            decision = decide(holder, request, now, self._card)
        retry_after = None
        if decision.key_failed:
            retry_after = self._limiter.failed(self._proxies.of_scope(scope), time.monotonic())
        metrics.AUTHORIZE_SECONDS.observe(time.perf_counter() - started)
        if retry_after is not None:
            metrics.AUTHORIZE_DECISION("rate_limited", "too_many_failed_keys").inc()
            return _too_many_failures(retry_after)
        result = "allowed" if decision.status == 200 else "denied"
        metrics.AUTHORIZE_DECISION(result, decision.code).inc()
        return _json(decision.status, decision.body)


class AuthorizeFront:
    """The outermost ASGI layer of quota's app: answers `POST /v1/authorize` itself, ahead of
    Starlette's error middleware, `RequestMetrics`, `BodyLimit` and FastAPI's routing, and
    does for it inline what they would do: count and time it, refuse a body over its limit
    (413) or too slow (408), answer an exception with 500.

    Every model request of every member passes here, and those layers cost about as much as
    the decision itself (~20 of ~50 µs in process, README step 15). A request `BodyLimit`
    would refuse before reading (a NUL in the target, a declared length over the limit) goes
    through them, and to the documented FastAPI route, which answers with the same
    `Authorizer`; so do all other requests.
    """

    def __init__(self, app: ASGIApp, authorizer: Authorizer, limits: BodyLimits) -> None:
        self.app = app
        self.authorizer = authorizer
        self.limit = limits.limit("POST", AUTHORIZE_PATH)
        self.timeout = limits.idle_timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope["path"] != AUTHORIZE_PATH
            or scope["method"] != "POST"
            or refused_before_reading(scope, self.limit) is not None
        ):
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500
        authorization = first_header(scope, b"authorization")
        try:
            limit, timeout = self.limit, self.timeout
            response = await self.authorizer.respond(
                None if authorization is None else authorization.decode("latin-1"),
                lambda: read_body(receive, limit, timeout),
                scope,
            )
        except (BodyTooLarge, BodyTimeout) as refused:
            status = refused.status_code
            await refuse(refused, scope, send)
        except ClientDisconnect:
            pass  # nobody to answer; counted as RequestMetrics counts it (500)
        except Exception:
            await _internal_error(scope, send)  # as Starlette's ServerErrorMiddleware
            raise
        else:
            status = response.status_code
            headers = response.raw_headers
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": response.body})
        finally:
            record_request("quota", "POST", AUTHORIZE_PATH, status, started)


async def _internal_error(scope: Scope, send: Send) -> None:
    await PlainTextResponse("Internal Server Error", status_code=500)(scope, no_body, send)


def quota_router(
    index: AccountIndex,
    authorizer: Authorizer,
    clock: Callable[[], datetime],
    reader: Callable[..., Awaitable[scopes.Scope]],
    member: Callable[..., Awaitable[scopes.Scope]] | None = None,
) -> APIRouter:
    router = APIRouter()
    read_scope = Depends(reader)

    def may_read(
        scope: scopes.Scope, state: AccountState | None, seat_id: str | None = None
    ) -> bool:
        """Whether `scope` may read `state` (an account quota holds), or one seat of it."""
        if state is None:
            return False
        account_id = index.account_id_of(state)
        if seat_id is None:
            return scope.reads_account(account_id)
        return scope.reads_seat(account_id, seat_id)

    @router.post(
        AUTHORIZE_PATH,
        tags=["gateway"],
        summary="May this member API key call this model now?",
        response_model=AuthorizeAllowed,
        responses=_DENIED,  # type: ignore[arg-type]
        dependencies=[Depends(MEMBER_API_KEY)],
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": _schema(AuthorizeRequest)}},
            }
        },
    )
    async def post_authorize(request: Request) -> Response:
        return await authorizer.respond(
            request.headers.get("authorization"), request.body, request.scope
        )

    @router.get(
        "/v1/seats/{seat_id}",
        tags=["console"],
        summary="A seat's status and balances now",
        response_model=SeatBalance,
        responses=_READ_PROBLEMS,
    )
    async def get_seat(seat_id: str, scope: scopes.Scope = read_scope) -> Response:
        now = clock()
        state = index.account_of_seat(seat_id)
        seat = None
        if state is not None and may_read(scope, state):
            seat = seat_view(state, seat_id, now)
        if seat is None:
            return problem(404, "Not Found", f"seat '{seat_id}' is not known")
        return _json(200, _seat_balance(seat))

    @router.get(
        "/v1/subscriptions/{subscription_id}/overview",
        tags=["console"],
        summary="The team overview: utilization, seats and packs now",
        response_model=SubscriptionOverview,
        responses=_READ_PROBLEMS,
    )
    async def get_overview(subscription_id: str, scope: scopes.Scope = read_scope) -> Response:
        now = clock()
        state = index.account_of_subscription(subscription_id)
        view = None
        if state is not None and may_read(scope, state):
            view = subscription_view(state, subscription_id, now)
        if view is None:
            return problem(404, "Not Found", f"subscription '{subscription_id}' is not known")
        return _json(200, _overview(view, now))

    if member is None:
        return router
    member_scope = Depends(member)

    @router.get(
        "/v1/me",
        tags=["console"],
        summary="A member's own seat: balance, status, reason, resets_at (with its API key)",
        response_model=SeatBalance,
        responses=_READ_PROBLEMS,
    )
    async def get_me(scope: scopes.Scope = member_scope) -> Response:
        """The seat of the API key presented (`Authorization: Bearer sk-tp-…`); its usage rows
        are the ledger's `GET /v1/me/usage`."""
        now = clock()
        seat_id = scope.seat_id or ""
        state = index.account_of_seat(seat_id)
        seat = None
        if state is not None and may_read(scope, state, seat_id):
            seat = seat_view(state, seat_id, now)
        if seat is None:
            return problem(404, "Not Found", f"seat '{seat_id}' is not known yet")
        return _json(200, _seat_balance(seat))

    return router


def _too_many_failures(retry_after: float) -> Response:
    seconds = max(1, math.ceil(retry_after))
    body = AuthorizeDenied(
        allowed=False,
        code="too_many_failed_keys",
        message=f"Too many invalid API keys from this client: retry in {seconds} seconds.",
    )
    response = _json(429, body)
    response.headers["Retry-After"] = str(seconds)
    return response


def _json(status: int, body: Contract) -> Response:
    return Response(body.model_dump_json(), status_code=status, media_type="application/json")


def _seat_balance(seat: SeatView) -> SeatBalance:
    return SeatBalance(
        subscription_id=seat.subscription_id,
        seat_id=seat.seat_id,
        member=seat.member,
        status=seat.status,
        reason=seat.reason,
        tier=seat.tier,
        quota=to_decimal_string(seat.quota_micro),
        used=to_decimal_string(seat.used_micro),
        remaining=to_decimal_string(seat.seat_remaining_micro),
        shared_remaining=to_decimal_string(seat.shared_remaining_micro),
        resets_at=seat.resets_at,
    )


def _overview(view: SubscriptionView, now: datetime) -> SubscriptionOverview:
    basis_points = view.utilization_basis_points
    return SubscriptionOverview(
        subscription_id=view.subscription_id,
        status=view.status,
        utilization_percent=f"{basis_points // 100}.{basis_points % 100:02d}",
        quota=to_decimal_string(view.quota_micro),
        used=to_decimal_string(view.used_micro),
        remaining=to_decimal_string(view.remaining_micro),
        month_start=view.month_start,
        month_end=view.month_end,
        seats=[_seat_balance(seat) for seat in view.seats],
        packs=[
            PackBalance(
                pack_id=pack.pack_id,
                purchased_at=pack.purchased_at,
                expires_at=pack.expires_at,
                used=to_decimal_string(pack.used_micro),
                remaining=to_decimal_string(pack.remaining_micro),
                expires_in_seconds=max(0, int((pack.expires_at - now).total_seconds())),
            )
            for pack in view.packs
        ],
    )
