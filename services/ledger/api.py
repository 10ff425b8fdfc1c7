"""The ledger's HTTP API: quotes, usage details, monthly statements and fact lookups.

Every call needs a bearer token (the admin or the read token): the usage and statements
are the team's data, and the operator-set prices of the rate card are commercial ones.
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
from metering.core.pricing import UnpriceableUsage, price
from metering.core.ratecard import NoRateCardInForce, RateCard
from metering.db import Connection
from metering.http import problem
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
)

CSV_PAGE = 1000
_PROBLEMS: dict[int | str, dict[str, Any]] = {
    status: {"model": Problem, "content": {"application/problem+json": {}}}
    for status in (401, 404, 422)
}


@dataclass(frozen=True)
class UsageFilter:
    subscription_id: str
    since: datetime | None
    until: datetime | None
    seat_id: str | None
    model: str | None


def ledger_router(
    card: RateCard,
    pool: Callable[[], asyncpg.Pool],
    guard: Callable[[Request], Awaitable[None]],
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> APIRouter:
    router = APIRouter(dependencies=[Depends(guard)], responses=_PROBLEMS, tags=["ledger"])

    @router.post("/v1/quote", response_model=QuoteResponse, summary="Price a request")
    async def quote(body: QuoteRequest) -> Response:
        at = body.at or clock()
        try:
            model = card.in_force(at).models.get(body.model)
            if model is None:
                return problem(
                    404, "Model not found", f"model '{body.model}' not found or not supported"
                )
            priced = price(model, body)
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
        try:
            after = decode_cursor(cursor) if cursor else None
        except BadCursor as error:
            return problem(422, "Invalid request", str(error))
        where = UsageFilter(subscription_id, bounds["from"], bounds["to"], seat_id, model)
        async with pool().acquire() as conn:
            if await _account_of(conn, subscription_id) is None:
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
    ) -> Response:
        """The subscription month that starts in calendar `month` (YYYY-MM)."""
        async with (
            pool().acquire() as conn,
            conn.transaction(isolation="repeatable_read", readonly=True),
        ):
            account_id = await _account_of(conn, subscription_id)
            state_text = account_id and await conn.fetchval(
                "SELECT state::text FROM ledger_accounts WHERE account_id = $1", account_id
            )
            sub = state_text and load_snapshot(state_text).subscriptions.get(subscription_id)
            if not sub:
                return _unknown_subscription(subscription_id)
            try:
                _, start, end = subscription_month(sub, month)
            except MonthOutsideSubscription as error:
                return problem(422, "Invalid request", str(error))
            except (ValueError, OverflowError):  # a month whose end is past year 9999
                return problem(422, "Invalid request", f"month {month} is out of range")
            usage_rows = await conn.fetch(_MONTH_USAGE, subscription_id, start, end)
            packs_since = min((p.purchased_at for p in sub.packs), default=start)
            pack_rows = await conn.fetch(_PACK_PAID, subscription_id, start, end, packs_since)
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
    async def event(event_id: str) -> Response:
        known = parse_event_id(event_id)
        if known is not None:
            async with pool().acquire() as conn, _snapshot(conn):
                found = await LookupStore(conn).event(known)
            if found is not None:
                return Response(found.model_dump_json(), media_type="application/json")
        return problem(404, "Not found", f"no fact has event id '{event_id}'", code="unknown_event")

    @router.get(
        "/v1/accounts/{account_id}/requests/{request_id}",
        response_model=FactStatus,
        summary="Where did my usage report go, by its request id",
    )
    async def request(account_id: str, request_id: str) -> Response:
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
    account_id: str | None = await conn.fetchval(
        "SELECT account_id FROM ledger_subscriptions WHERE subscription_id = $1", subscription_id
    )
    return account_id


async def _deductions(
    conn: Connection, where: UsageFilter, after: tuple[datetime, str] | None, limit: int
) -> list[UsageRow]:
    rows = await conn.fetch(
        """
        SELECT body::text AS body FROM ledger_entries
        WHERE subscription_id = $1 AND event_type = 'CreditsDeducted'
          AND ($2::timestamptz IS NULL OR occurred_at >= $2)
          AND ($3::timestamptz IS NULL OR occurred_at < $3)
          AND ($4::text IS NULL OR seat_id = $4)
          AND ($5::text IS NULL OR model = $5)
          AND ($6::timestamptz IS NULL OR (occurred_at, event_id) < ($6, $7::uuid))
        ORDER BY occurred_at DESC, event_id DESC
        LIMIT $8
        """,
        where.subscription_id,
        where.since,
        where.until,
        where.seat_id,
        where.model,
        after[0] if after else None,
        after[1] if after else None,
        limit,
    )
    return [usage_row(orjson.loads(row["body"])) for row in rows]


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


_MONTH_USAGE = """
SELECT seat_id, model, count(*) AS requests, sum(price_micro)::bigint AS price_micro,
       sum(seat_paid_micro)::bigint AS seat_paid_micro,
       sum(packs_paid_micro)::bigint AS packs_paid_micro,
       sum(shortfall_micro)::bigint AS shortfall_micro
FROM ledger_entries
WHERE subscription_id = $1 AND event_type = 'CreditsDeducted'
  AND occurred_at >= $2 AND occurred_at < $3
GROUP BY seat_id, model
"""

_PACK_PAID = """
SELECT line->>'bucket_id' AS pack_id,
       coalesce(sum((line->>'amount_micro')::bigint) FILTER (WHERE e.occurred_at < $2), 0)::bigint
           AS before_start,
       sum((line->>'amount_micro')::bigint)::bigint AS before_end
FROM ledger_entries e, jsonb_array_elements(e.body->'payload'->'receipt') AS line
WHERE e.subscription_id = $1 AND e.event_type = 'CreditsDeducted' AND e.packs_paid_micro > 0
  AND e.occurred_at >= $4 AND e.occurred_at < $3 AND line->>'bucket' = 'pack'
GROUP BY 1
"""


def _midnight_utc(request: Request, name: str, value: datetime | None) -> datetime | None:
    """A date alone (`?from=2026-11-29`) is that day's midnight UTC; a time keeps its zone
    (and one without a zone is still refused)."""
    if value is not None and _DATE_ONLY.fullmatch(request.query_params.get(name, "")):
        return value.replace(tzinfo=UTC)
    return value


_DATE_ONLY = re.compile(r"\d{4}-\d{2}-\d{2}")
