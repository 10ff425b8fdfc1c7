"""The ledger's HTTP API: quotes, usage details and their totals, monthly statements and
fact lookups.

Every call needs a bearer token (the admin or the read token, or a team token for its own
account's data: metering/scopes.py): the usage and statements are the team's data, and the
operator-set prices of the rate card are commercial ones. A member's API key reads its own
seat's usage (`GET /v1/me/usage`). What a scope may not read answers `404`, like an unknown id.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import asyncpg
import orjson
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from ledger.lookup import LookupStore, parse_event_id
from ledger.store import LedgerReads, UsageFilter
from ledger.store import UsageTotals as Sums
from ledger.usage import (
    BadCursor,
    csv_header,
    csv_rows,
    decode_cursor,
    encode_cursor,
    in_utc,
    usage_row,
)
from metering.core.money import to_decimal_string as credits
from metering.core.pricing import UnpriceableUsage, price, priced_usage
from metering.core.ratecard import NoRateCardInForce, RateCard
from metering.db import Connection
from metering.http import problem
from metering.scopes import Scope
from metering.snapshots import load_snapshot
from metering.statement import (
    MonthOutsideSubscription,
    PackPaid,
    SeatModelUsage,
    build_statement,
    subscription_month,
)
from schemas.api import (
    FactStatus,
    Problem,
    QuoteComponent,
    QuoteRequest,
    QuoteResponse,
    Statement,
    UsagePage,
    UsageRow,
    UsageTotals,
)

CSV_PAGE = 1000
_PROBLEMS: dict[int | str, dict[str, Any]] = {
    status: {"model": Problem, "content": {"application/problem+json": {}}}
    for status in (401, 404, 422)
}


@dataclass(frozen=True)
class UsageQuery:
    since: datetime | None
    until: datetime | None
    model: str | None
    cursor: str | None
    limit: int
    format: Literal["json", "csv"] | None


def ledger_router(
    card: RateCard,
    pool: Callable[[], asyncpg.Pool],
    reader: Callable[..., Awaitable[Scope]],
    member: Callable[..., Awaitable[Scope]],
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> APIRouter:
    router = APIRouter(responses=_PROBLEMS, tags=["ledger"])
    read_scope, member_scope = Depends(reader), Depends(member)

    @router.post("/v1/quote", response_model=QuoteResponse, summary="Price a request")
    async def quote(body: QuoteRequest, _scope: Scope = read_scope) -> Response:
        at = body.at or clock()
        try:
            model = card.in_force(at).models.get(body.model)
            if model is None:
                return problem(
                    404, "Model not found", f"model '{body.model}' not found or not supported"
                )
            priced = price(model, priced_usage(body))
        except (NoRateCardInForce, UnpriceableUsage) as error:
            return problem(422, "Cannot price", str(error))
        answer = QuoteResponse(
            model=priced.model,
            at=at,
            credits=credits(priced.total_micro),
            components=[
                QuoteComponent(
                    name=c["name"], quantity=c["quantity"], credits=credits(c["credits_micro"])
                )
                for c in priced.components
            ],
            rate_card_version=priced.rate_card_version,
            coefficient=priced.coefficient,
        )
        return Response(answer.model_dump_json(), media_type="application/json")

    @router.get(
        "/v1/subscriptions/{subscription_id}/usage",
        response_model=UsagePage,
        summary="Usage details: one row per deduction, newest first",
        responses={200: {"content": {"text/csv": {}}}},
    )
    async def usage(
        request: Request,
        subscription_id: str,
        scope: Scope = read_scope,
        since: Annotated[datetime | None, Query(alias="from")] = None,
        until: Annotated[datetime | None, Query(alias="to")] = None,
        seat_id: str | None = None,
        model: str | None = None,
        cursor: str | None = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        format: Literal["json", "csv"] | None = None,
    ) -> Response:
        """JSON pages of `limit` rows; as CSV (`format=csv` or `Accept: text/csv`) every row
        from `cursor` on, streamed. `from` is inclusive, `to` exclusive; a date alone
        (`2026-11-29`) means its midnight UTC."""
        query = UsageQuery(since, until, model, cursor, limit, format)
        return await _usage(request, scope, subscription_id, seat_id, query)

    @router.get(
        "/v1/me/usage",
        response_model=UsagePage,
        summary="A member's own usage: its seat's rows, newest first (with its API key)",
        responses={200: {"content": {"text/csv": {}}}},
    )
    async def my_usage(
        request: Request,
        scope: Scope = member_scope,
        since: Annotated[datetime | None, Query(alias="from")] = None,
        until: Annotated[datetime | None, Query(alias="to")] = None,
        model: str | None = None,
        cursor: str | None = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        format: Literal["json", "csv"] | None = None,
    ) -> Response:
        """The usage rows of the caller's own seat (`Authorization: Bearer sk-tp-…`), with
        the same filters, pages and CSV as a subscription's usage."""
        query = UsageQuery(since, until, model, cursor, limit, format)
        assert scope.subscription_id is not None
        return await _usage(request, scope, scope.subscription_id, scope.seat_id, query)

    @router.get(
        "/v1/subscriptions/{subscription_id}/usage/totals",
        response_model=UsageTotals,
        summary="Totals of the usage details: the sums over every row the filter selects",
    )
    async def usage_totals(
        request: Request,
        subscription_id: str,
        scope: Scope = read_scope,
        since: Annotated[datetime | None, Query(alias="from")] = None,
        until: Annotated[datetime | None, Query(alias="to")] = None,
        seat_id: str | None = None,
        model: str | None = None,
    ) -> Response:
        """Requests, credits (and what paid them), shortfall and usage counts of every row
        `GET /v1/subscriptions/{subscription_id}/usage` lists for the same filters, summed
        by the database without reading the rows out."""
        return await _totals(request, scope, subscription_id, seat_id, since, until, model)

    @router.get(
        "/v1/me/usage/totals",
        response_model=UsageTotals,
        summary="A member's own usage totals (with its API key)",
    )
    async def my_usage_totals(
        request: Request,
        scope: Scope = member_scope,
        since: Annotated[datetime | None, Query(alias="from")] = None,
        until: Annotated[datetime | None, Query(alias="to")] = None,
        model: str | None = None,
    ) -> Response:
        """The totals of `GET /v1/me/usage` for the same filters: the caller's own seat."""
        assert scope.subscription_id is not None
        return await _totals(
            request, scope, scope.subscription_id, scope.seat_id, since, until, model
        )

    async def _totals(
        request: Request,
        scope: Scope,
        subscription_id: str,
        seat_id: str | None,
        since: datetime | None,
        until: datetime | None,
        model: str | None,
    ) -> Response:
        where = _usage_filter(request, subscription_id, since, until, seat_id, model)
        if isinstance(where, Response):
            return where
        async with pool().acquire() as conn:
            account_id = await _account_of(conn, subscription_id)
            if account_id is None or not scope.reads_seat(account_id, seat_id):
                return _unknown_subscription(subscription_id)
            sums = await LedgerReads(conn).usage_totals(where)
        return Response(_totals_body(sums).model_dump_json(), media_type="application/json")

    async def _usage(
        request: Request,
        scope: Scope,
        subscription_id: str,
        seat_id: str | None,
        query: UsageQuery,
    ) -> Response:
        cursor, limit, format = query.cursor, query.limit, query.format
        where = _usage_filter(
            request, subscription_id, query.since, query.until, seat_id, query.model
        )
        if isinstance(where, Response):
            return where
        try:
            after = decode_cursor(cursor) if cursor else None
        except BadCursor as error:
            return problem(422, "Invalid request", str(error))
        async with pool().acquire() as conn:
            account_id = await _account_of(conn, subscription_id)
            if account_id is None or not scope.reads_seat(account_id, seat_id):
                return _unknown_subscription(subscription_id)
            if format == "csv" or (
                format is None and "text/csv" in request.headers.get("accept", "")
            ):
                # The first page is read before the answer starts: what the filters or the
                # database refuse is a 4xx/5xx problem, never a 200 cut short.
                first = await _deductions(conn, where, after, CSV_PAGE)
                return StreamingResponse(
                    _csv_pages(pool, where, first),
                    media_type="text/csv; charset=utf-8",
                    headers={
                        "Content-Disposition": f'attachment; filename="usage-{subscription_id}.csv"'
                    },
                )
            rows = await _deductions(conn, where, after, limit + 1)
        more = len(rows) > limit
        rows = rows[:limit]
        page = UsagePage(
            rows=rows,
            next_cursor=encode_cursor(rows[-1].deducted_at, rows[-1].event_id) if more else None,
        )
        return Response(page.model_dump_json(), media_type="application/json")

    @router.get(
        "/v1/subscriptions/{subscription_id}/statement",
        response_model=Statement,
        summary="A subscription month's balances and deductions",
    )
    async def statement(
        subscription_id: str,
        month: Annotated[str, Query(pattern=r"^\d{4}-(0[1-9]|1[0-2])$", examples=["2026-05"])],
        scope: Scope = read_scope,
    ) -> Response:
        """The subscription month that starts in calendar `month` (YYYY-MM)."""
        async with (
            pool().acquire() as conn,
            conn.transaction(isolation="repeatable_read", readonly=True),
        ):
            account_id = await _account_of(conn, subscription_id)
            if not scope.reads_account(account_id):
                account_id = None
            state_text = account_id and await LedgerReads(conn).state_text(account_id)
            sub = state_text and load_snapshot(state_text).subscriptions.get(subscription_id)
            if not sub:
                return _unknown_subscription(subscription_id)
            try:
                _, start, end = subscription_month(sub, month)
            except MonthOutsideSubscription as error:
                return problem(422, "Invalid request", str(error))
            except (ValueError, OverflowError):  # a month whose end is past year 9999
                return problem(422, "Invalid request", f"month {month} is out of range")
            reads = LedgerReads(conn)
            usage_rows = await reads.month_usage(subscription_id, start, end)
            packs_since = min((p.purchased_at for p in sub.packs), default=start)
            pack_rows = await reads.pack_paid(subscription_id, start, end, packs_since)
        body = build_statement(
            sub,
            month,
            [SeatModelUsage(**dict(row)) for row in usage_rows],
            {row["pack_id"]: PackPaid(row["before_start"], row["before_end"]) for row in pack_rows},
        )
        return Response(body.model_dump_json(), media_type="application/json")

    @router.get(
        "/v1/events/{event_id}",
        response_model=FactStatus,
        summary="Where did my fact go: accepted, applied or rejected, with its ledger entries",
    )
    async def event(event_id: str, scope: Scope = read_scope) -> Response:
        known = parse_event_id(event_id)
        if known is not None:
            async with pool().acquire() as conn, _snapshot(conn):
                found = await LookupStore(conn).event(known)
            if found is not None and scope.reads_account(found.account_id):
                return Response(found.model_dump_json(), media_type="application/json")
        return problem(404, "Not found", f"no fact has event id '{event_id}'", code="unknown_event")

    @router.get(
        "/v1/accounts/{account_id}/requests/{request_id}",
        response_model=FactStatus,
        summary="Where did my usage report go, by its request id",
    )
    async def request(account_id: str, request_id: str, scope: Scope = read_scope) -> Response:
        found = None
        if scope.reads_account(account_id):
            async with pool().acquire() as conn, _snapshot(conn):
                found = await LookupStore(conn).request(account_id, request_id)
        if found is None:
            return problem(
                404,
                "Not found",
                f"account '{account_id}' has no usage with request id '{request_id}'",
                code="unknown_request",
            )
        return Response(found.model_dump_json(), media_type="application/json")

    return router


def _snapshot(conn: Connection) -> Any:
    """A read-only transaction seeing ingest's and the ledger's tables at one instant."""
    return conn.transaction(isolation="repeatable_read", readonly=True)


def _unknown_subscription(subscription_id: str) -> JSONResponse:
    return problem(404, "Not found", f"subscription '{subscription_id}' is not in the ledger")


async def _account_of(conn: Connection, subscription_id: str) -> str | None:
    return await LedgerReads(conn).subscription_account(subscription_id)


async def _deductions(
    conn: Connection, where: UsageFilter, after: tuple[datetime, str] | None, limit: int
) -> list[UsageRow]:
    bodies = await LedgerReads(conn).deduction_bodies(where, after, limit)
    return [usage_row(orjson.loads(body)) for body in bodies]


async def _csv_pages(
    pool: Callable[[], asyncpg.Pool], where: UsageFilter, rows: list[UsageRow]
) -> AsyncIterator[str]:
    """The header and `rows` (the first page, already read), then the pages after them."""
    yield csv_header()
    while True:
        if rows:
            yield csv_rows(rows)
        if len(rows) < CSV_PAGE:
            return
        after = rows[-1].deducted_at, rows[-1].event_id
        async with pool().acquire() as conn:
            rows = await _deductions(conn, where, after, CSV_PAGE)


def _usage_filter(
    request: Request,
    subscription_id: str,
    since: datetime | None,
    until: datetime | None,
    seat_id: str | None,
    model: str | None,
) -> UsageFilter | Response:
    """The usage details' filter from the query, or the `422` problem of a bad one: a time
    without a zone, outside years 1 to 9999 once in UTC, or a `from` later than `to`."""
    since, until = _midnight_utc(request, "from", since), _midnight_utc(request, "to", until)
    bounds: dict[str, datetime | None] = {"from": since, "to": until}
    for name, value in bounds.items():
        if value is None:
            continue
        if value.tzinfo is None:
            return problem(422, "Invalid request", f"{name} must have a time zone")
        try:
            bounds[name] = in_utc(value)
        except ValueError as error:
            return problem(422, "Invalid request", f"{name}: {error}")
    since, until = bounds["from"], bounds["to"]
    if since is not None and until is not None and since > until:
        return problem(
            422,
            "Inverted range",
            f"from ({since.isoformat()}) is later than to ({until.isoformat()})",
            code="inverted_range",
        )
    return UsageFilter(subscription_id, since, until, seat_id, model)


def _totals_body(sums: Sums) -> UsageTotals:
    return UsageTotals(
        requests=sums.requests,
        credits=credits(sums.price_micro),
        seat_quota=credits(sums.seat_paid_micro),
        shared_packs=credits(sums.packs_paid_micro),
        shortfall=credits(sums.shortfall_micro),
        input_tokens=sums.input_tokens,
        cached_tokens=sums.cached_tokens,
        output_tokens=sums.output_tokens,
        images=sums.images,
    )


def _midnight_utc(request: Request, name: str, value: datetime | None) -> datetime | None:
    """A date alone (`?from=2026-11-29`) is that day's midnight UTC; a time keeps its zone
    (and one without a zone is still refused)."""
    if value is not None and _DATE_ONLY.fullmatch(request.query_params.get(name, "")):
        return value.replace(tzinfo=UTC)
    return value


_DATE_ONLY = re.compile(r"\d{4}-\d{2}-\d{2}")
