"""design.md §2 to §6 end to end: the running services driven only through their HTTP APIs and
their topics, as the gateway, the commerce side and the team's console would.

Each scenario makes its own account, subscription, seats and keys (uuid-suffixed), so the
scenarios share the session's services without counting each other's facts. Expected values
are written out from design.md: 25,000 credits a standard seat, 625,000 a pack, the seed
request at exactly 3.18 credits, the documented refusal messages.
"""

from __future__ import annotations

import asyncio
import base64
import csv
import io
import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import httpx
import pytest
from aiokafka import AIOKafkaProducer

from tests.e2e.conftest import (
    ADMIN,
    MODEL,
    SEAT_MONTH,
    SEED_USAGE,
    Json,
    Team,
    add_months,
    authorize,
    authorized,
    eventually,
    gateway_client,
    month_containing,
    new_team,
    now,
    once_each,
    rfc3339,
    seat_statuses,
    start_for_month_end,
    statement,
    status_is,
    topic_messages,
    usage_rows,
)

pytestmark = pytest.mark.integration

THIRTY_THOUSAND = 30_000
"""More credits than a standard seat's month."""
ONE_AND_A_QUARTER_MILLION = 1_250_000
"""Two packs' worth of credits."""


def exhausted(seat_id: str, resets_at: datetime) -> Json:
    """design.md §5, seat suspended: quota exhausted, when it resets, how to restore service."""
    at = rfc3339(resets_at)
    return {
        "allowed": False,
        "code": "seat_suspended",
        "message": f"Quota exhausted: seat '{seat_id}' has used its credits for this month and "
        "the subscription's shared quota packs are used up or expired. The seat quota resets "
        f"at {at}. To restore service sooner, upgrade the seat's tier or buy a shared quota pack.",
        "resets_at": at,
        "reason": "quota_exhausted",
    }


def remaining(seat: str, shared: str, total: str) -> dict[str, str]:
    return {"seat": seat, "shared": shared, "total": total}


async def remaining_settles(quota: httpx.AsyncClient, api_key: str, wanted: dict[str, str]) -> None:
    """Ask until quota's answer for `api_key` shows the `wanted` remaining credits (its
    projection catches up asynchronously); fail with the last answer after the deadline."""
    answer = await eventually(
        lambda: authorize(quota, api_key), lambda a: a.json().get("remaining") == wanted
    )
    assert answer.json().get("remaining") == wanted, answer.text


def seat_bucket(seat_id: str, month_start: datetime) -> str:
    """The receipt's name of a seat month: the seat and the month's start, `seat:YYYY-MM`."""
    return f"{seat_id}:{month_start:%Y-%m}"


def paid(product: str, bucket_id: str, credits: str) -> Json:
    return {"product": product, "bucket_id": bucket_id, "credits": credits}


def paid_per_bucket(rows: Iterable[Json]) -> dict[tuple[str, str], Decimal]:
    """What the usage rows' receipts drew from each (product, bucket) in all."""
    sums: dict[tuple[str, str], Decimal] = {}
    for row in rows:
        for part in row["paid_from"]:
            bucket = (part["product"], part["bucket_id"])
            sums[bucket] = sums.get(bucket, Decimal(0)) + Decimal(part["credits"])
    return sums


def buckets_in_order(rows: Iterable[Json]) -> list[tuple[tuple[str, str], Decimal]]:
    """The receipts' parts of the rows in the order given, consecutive parts of one bucket
    added up: each bucket once, in the order the deductions drew on them."""
    runs: list[tuple[tuple[str, str], Decimal]] = []
    for row in rows:
        for part in row["paid_from"]:
            bucket, credits = (part["product"], part["bucket_id"]), Decimal(part["credits"])
            if runs and runs[-1][0] == bucket:
                runs[-1] = (bucket, runs[-1][1] + credits)
            else:
                runs.append((bucket, credits))
    return runs


# -- §3 pricing ----------------------------------------------------------------------------


async def test_seed_example_is_charged_exactly_3_18_credits(
    team: Team, quota: httpx.AsyncClient, ledger: httpx.AsyncClient, broker: str
) -> None:
    """§3: the published qwen3.6-plus request costs 1.67 + 0.82 + 0.69 = 3.18 credits, quoted,
    deducted from the seat (§4), in integer micro-credits on the topic, and explained by its
    rate-card version and coefficient; §5: an allowed answer names who and what is left."""
    quoted = await ledger.post("/v1/quote", json={"model": MODEL, **SEED_USAGE})
    assert quoted.status_code == 200, quoted.text
    quote = quoted.json()
    assert (quote["credits"], quote["components"], quote["coefficient"]) == (
        "3.18",
        [
            {"name": "input", "quantity": 8_349, "credits": "1.67"},
            {"name": "cached", "quantity": 40_794, "credits": "0.82"},
            {"name": "output", "quantity": 573, "credits": "0.69"},
        ],
        "1",
    )

    seat = team.seat
    assert await authorized(quota, seat.api_key, 200) == {
        "allowed": True,
        "account_id": team.account_id,
        "subscription_id": team.subscription_id,
        "seat_id": seat.seat_id,
        "key_id": seat.key_id,
        "remaining": remaining("25000", "0", "25000"),
    }
    occurred_at = datetime.now(UTC)
    request_id = await team.use(seat, SEED_USAGE, occurred_at)

    [row] = await usage_rows(ledger, team, 1)
    assert datetime.fromisoformat(row["deducted_at"]) == occurred_at
    assert row == {
        "deducted_at": row["deducted_at"],
        "request_id": request_id,
        "event_id": row["event_id"],
        "seat_id": seat.seat_id,
        "key_id": seat.key_id,
        "model": MODEL,
        "tier": "standard",
        "input_tokens": 8_349,
        "cached_tokens": 40_794,
        "output_tokens": 573,
        "thinking": False,
        "images": 0,
        "tool_calls": {},
        "coefficient": "1",
        "rate_card_version": quote["rate_card_version"],
        "credits": "3.18",
        "paid_from": [paid("seat_quota", seat_bucket(seat.seat_id, team.started_at), "3.18")],
        "shortfall": "0",
    }

    [deducted] = once_each(
        await topic_messages(broker, "metering.ledger.v1", team.account_id, bool)
    )
    assert deducted["event_id"] == row["event_id"]
    assert deducted["event_type"] == "CreditsDeducted"
    payload = deducted["payload"]
    assert (payload["price_micro"], payload["shortfall_micro"]) == (3_180_000, 0)
    assert payload["components"] == [
        {"name": "input", "quantity": 8_349, "credits_micro": 1_670_000},
        {"name": "cached", "quantity": 40_794, "credits_micro": 820_000},
        {"name": "output", "quantity": 573, "credits_micro": 690_000},
    ]
    assert payload["receipt"] == [
        {
            "bucket": "seat",
            "bucket_id": seat_bucket(seat.seat_id, team.started_at),
            "amount_micro": 3_180_000,
        }
    ]

    await remaining_settles(quota, seat.api_key, remaining("24996.82", "0", "24996.82"))


# -- §2, §4, §6 seat quota, then packs in expiry order -------------------------------------


async def test_seat_quota_pays_first_then_the_packs_soonest_expiry_first(
    ingest: httpx.AsyncClient, quota: httpx.AsyncClient, ledger: httpx.AsyncClient
) -> None:
    """§4: the seat's month pays first, then the packs valid at the usage time, soonest expiry
    first (ties: earliest purchase, then pack id), whatever order they were bought in;
    §6: the usage details (paged, CSV) and the team overview show who paid what."""
    started_at = now() - timedelta(days=20)
    team = await new_team(ingest, started_at)
    seat = team.seat
    suffix = team.account_id
    early, late = now() - timedelta(hours=48), now() - timedelta(hours=24)
    a, b, c = f"a-{suffix}", f"b-{suffix}", f"c-{suffix}"
    await team.buy_pack(a, late)  # expires last
    await team.buy_pack(c, early)  # expires with b; its id sorts after b's
    await team.buy_pack(b, early)

    first = await team.use_credits(seat, THIRTY_THOUSAND)
    second = await team.use_credits(seat, ONE_AND_A_QUARTER_MILLION)
    sent = first + second

    rows = await usage_rows(ledger, team, len(sent))
    assert [r["request_id"] for r in rows] == sent[::-1]
    assert {r["shortfall"] for r in rows} == {"0"}
    month = seat_bucket(seat.seat_id, started_at)
    by_id = {r["request_id"]: r for r in rows}
    assert paid_per_bucket(by_id[i] for i in first) == {
        ("seat_quota", month): 25_000,
        ("shared_pack", b): 5_000,
    }
    assert paid_per_bucket(by_id[i] for i in second) == {
        ("shared_pack", b): 620_000,
        ("shared_pack", c): 625_000,
        ("shared_pack", a): 5_000,
    }
    assert sum(Decimal(r["credits"]) for r in rows) == 1_280_000
    # in the order charged, each bucket is used up before the next one is touched
    assert buckets_in_order([by_id[i] for i in sent]) == [
        (("seat_quota", month), Decimal(25_000)),
        (("shared_pack", b), Decimal(625_000)),
        (("shared_pack", c), Decimal(625_000)),
        (("shared_pack", a), Decimal(5_000)),
    ]

    usage = f"/v1/subscriptions/{team.subscription_id}/usage"
    page = (await ledger.get(usage, params={"limit": 1})).json()
    assert [r["request_id"] for r in page["rows"]] == [sent[-1]]
    rest = (await ledger.get(usage, params={"limit": 1000, "cursor": page["next_cursor"]})).json()
    assert ([r["request_id"] for r in rest["rows"]], rest["next_cursor"]) == (sent[-2::-1], None)
    exported = await ledger.get(usage, headers={"Accept": "text/csv"})
    assert exported.headers["content-type"].startswith("text/csv")
    assert [
        (r["request_id"], r["deducted_product"], r["credits"])
        for r in csv.DictReader(io.StringIO(exported.text))
    ] == [
        (
            r["request_id"],
            "; ".join(f"{p['product']}:{p['bucket_id']}={p['credits']}" for p in r["paid_from"]),
            r["credits"],
        )
        for r in rows
    ]

    await remaining_settles(quota, seat.api_key, remaining("0", "620000", "620000"))
    overview = await quota.get(f"/v1/subscriptions/{team.subscription_id}/overview", headers=ADMIN)
    assert overview.status_code == 200, overview.text
    body = overview.json()
    month_end = rfc3339(add_months(started_at, 1))
    totals = ("status", "utilization_percent", "quota", "used", "remaining")
    assert {k: body[k] for k in totals} == {
        "status": "active",
        "utilization_percent": "67.36",  # 1,280,000 of 25,000 + 3 x 625,000
        "quota": "1900000",
        "used": "1280000",
        "remaining": "620000",
    }
    assert (body["month_start"], body["month_end"]) == (rfc3339(started_at), month_end)
    assert body["seats"] == [
        {
            "subscription_id": team.subscription_id,
            "seat_id": seat.seat_id,
            "member": "member-1",
            "status": "active",
            "reason": None,
            "tier": "standard",
            "quota": "25000",
            "used": "25000",
            "remaining": "0",
            "shared_remaining": "620000",
            "resets_at": month_end,
        }
    ]
    assert [
        (p["pack_id"], p["purchased_at"], p["expires_at"], p["used"], p["remaining"])
        for p in body["packs"]
    ] == [
        (b, rfc3339(early), rfc3339(add_months(early, 1)), "625000", "0"),
        (c, rfc3339(early), rfc3339(add_months(early, 1)), "625000", "0"),
        (a, rfc3339(late), rfc3339(add_months(late, 1)), "5000", "620000"),
    ]
    expires_in = body["packs"][2]["expires_in_seconds"]
    assert abs(expires_in - (add_months(late, 1) - datetime.now(UTC)).total_seconds()) < 60


# -- §2 the subscription month -------------------------------------------------------------

STARTED_ON_THE_31ST = [
    pytest.param(
        "2026-01-31T10:00:00Z",
        [
            ("2026-01", "2026-01-31T10:00:00Z", "2026-02-28T10:00:00Z"),
            ("2026-02", "2026-02-28T10:00:00Z", "2026-03-31T10:00:00Z"),
            ("2026-03", "2026-03-31T10:00:00Z", "2026-04-30T10:00:00Z"),
            ("2026-04", "2026-04-30T10:00:00Z", "2026-05-31T10:00:00Z"),
        ],
        id="2026",
    ),
    pytest.param(
        "2024-01-31T10:00:00Z",
        [
            ("2024-01", "2024-01-31T10:00:00Z", "2024-02-29T10:00:00Z"),
            ("2024-02", "2024-02-29T10:00:00Z", "2024-03-31T10:00:00Z"),
        ],
        id="leap-year",
    ),
]


@pytest.mark.parametrize(("started_at", "months"), STARTED_ON_THE_31ST)
async def test_a_subscription_started_on_the_31st_ends_short_months_on_their_last_day(
    ingest: httpx.AsyncClient,
    quota: httpx.AsyncClient,
    ledger: httpx.AsyncClient,
    started_at: str,
    months: list[tuple[str, str, str]],
) -> None:
    """§2: months are anchored on the start; a start on the 31st ends short months on their
    last day and returns to the 31st after them (no drift). The ledger's statements show the
    past months; quota's overview, the seat's reset time and the receipt show today's."""
    anchor = datetime.fromisoformat(started_at)
    team = await new_team(ingest, anchor)
    for month, period_start, period_end in months:
        body = await statement(ledger, team, month)
        assert (body["period_start"], body["period_end"]) == (period_start, period_end), month

    month_start, month_end = month_containing(anchor, datetime.now(UTC))
    await authorized(quota, team.seat.api_key, 200)  # quota knows the seat
    overview = await quota.get(f"/v1/subscriptions/{team.subscription_id}/overview", headers=ADMIN)
    assert overview.status_code == 200, overview.text
    body = overview.json()
    assert (body["month_start"], body["month_end"]) == (rfc3339(month_start), rfc3339(month_end))
    assert body["seats"][0]["resets_at"] == rfc3339(month_end)
    current = await statement(ledger, team, f"{month_start:%Y-%m}")
    assert (current["period_start"], current["period_end"]) == (
        rfc3339(month_start),
        rfc3339(month_end),
    )
    await team.use(team.seat, SEED_USAGE)
    [row] = await usage_rows(ledger, team, 1)
    assert row["paid_from"] == [
        paid("seat_quota", seat_bucket(team.seat.seat_id, month_start), "3.18")
    ]


async def test_an_account_holds_one_active_subscription(
    ingest: httpx.AsyncClient, team: Team
) -> None:
    """§2: one account holds at most one active Token Plan Team Edition subscription."""
    second = {
        "account_id": team.account_id,
        "subscription_id": f"second-{team.subscription_id}",
        "started_at": rfc3339(now()),
    }
    refused = await ingest.post("/v1/subscriptions", json=second)
    assert refused.status_code == 409, refused.text
    detail = (
        f"account '{team.account_id}' already has an active subscription "
        f"'{team.subscription_id}'; an account holds at most one active Token Plan Team "
        "Edition subscription"
    )
    assert refused.json() == {
        "type": "/problems/account_has_active_subscription",
        "title": "Account already subscribed",
        "status": 409,
        "detail": detail,
        "code": "account_has_active_subscription",
        "errors": [
            {"field": "started_at", "message": detail, "code": "account_has_active_subscription"}
        ],
    }


# -- §4 tier changes -----------------------------------------------------------------------


async def test_an_upgrade_applies_now_and_resumes_the_seat_a_downgrade_waits_for_next_month(
    team: Team, quota: httpx.AsyncClient, ledger: httpx.AsyncClient, broker: str
) -> None:
    """§4: an upgrade applies to the current month (new quota minus what was already used) and
    resumes a suspended seat; a downgrade takes effect next month."""
    seat = team.seat
    resets_at = add_months(team.started_at, 1)
    month = await team.use_credits(seat, SEAT_MONTH)
    assert await authorized(quota, seat.api_key, 403) == exhausted(seat.seat_id, resets_at)

    await team.change_tier(seat, "advanced")
    upgraded = await authorized(quota, seat.api_key, 200)
    assert upgraded["remaining"] == remaining("75000", "0", "75000")

    await team.change_tier(seat, "standard")
    seed = await team.use(seat, SEED_USAGE)
    view = await eventually(
        lambda: quota.get(f"/v1/seats/{seat.seat_id}", headers=ADMIN),
        lambda a: a.json().get("used") == "25003.18",
    )
    assert view.json() == {
        "subscription_id": team.subscription_id,
        "seat_id": seat.seat_id,
        "member": "member-1",
        "status": "active",
        "reason": None,
        "tier": "advanced",
        "quota": "100000",
        "used": "25003.18",
        "remaining": "74996.82",
        "shared_remaining": "0",
        "resets_at": rfc3339(resets_at),
    }
    rows = await usage_rows(ledger, team, len(month) + 1)
    assert [r["request_id"] for r in rows] == [seed, *month[::-1]]
    assert (rows[0]["tier"], rows[0]["credits"]) == ("advanced", "3.18")
    assert {r["tier"] for r in rows[1:]} == {"standard"}
    assert sum(Decimal(r["credits"]) for r in rows[1:]) == SEAT_MONTH
    this_month = (await statement(ledger, team, f"{team.started_at:%Y-%m}"))["seats"]
    next_month = (await statement(ledger, team, f"{resets_at:%Y-%m}"))["seats"]
    assert [(s["tier"], s["quota"], s["used"]) for s in this_month] == [
        ("advanced", "100000", "25003.18")
    ]
    assert [(s["tier"], s["quota"], s["used"]) for s in next_month] == [("standard", "25000", "0")]

    assert await seat_statuses(broker, seat.seat_id, 3) == [
        ("active", "seat_added", None),
        ("suspended", "quota_exhausted", rfc3339(resets_at)),
        ("active", "tier_upgraded", None),
    ]


# -- §4 exhaustion, shortfall, pack purchase -----------------------------------------------


async def test_exhaustion_suspends_the_seat_and_a_pack_purchase_resumes_it(
    team: Team, quota: httpx.AsyncClient, ledger: httpx.AsyncClient, broker: str
) -> None:
    """§4: the last request before suspension may overshoot: what no bucket covers is recorded
    as shortfall; the seat is suspended with its reset time (§5) and resumes when a pack is
    bought, which does not pay the old shortfall."""
    seat = team.seat
    resets_at = add_months(team.started_at, 1)
    month = seat_bucket(seat.seat_id, team.started_at)
    before = await team.use_credits(seat, 24_000)
    last = await team.use(seat, {"input_tokens": 1_000_000, "output_tokens": 1_000_000})
    assert await authorized(quota, seat.api_key, 403) == exhausted(seat.seat_id, resets_at)
    rows = await usage_rows(ledger, team, len(before) + 1)
    assert [r["request_id"] for r in rows] == [last, *before[::-1]]
    assert (rows[0]["credits"], rows[0]["paid_from"], rows[0]["shortfall"]) == (
        "1400",  # 200 for the input, 1,200 for the output: 1,000 left on the seat
        [paid("seat_quota", month, "1000")],
        "400",
    )
    assert paid_per_bucket(rows[1:]) == {("seat_quota", month): 24_000}
    assert {r["shortfall"] for r in rows[1:]} == {"0"}

    await team.buy_pack(f"pack-{team.account_id}", now())
    resumed = await authorized(quota, seat.api_key, 200)
    assert resumed["remaining"] == remaining("0", "625000", "625000")

    statement_ = await statement(ledger, team, f"{team.started_at:%Y-%m}")
    assert (statement_["deducted"], statement_["shortfall"], statement_["requests"]) == (
        {"seat": "25000", "shared": "0", "total": "25000"},
        "400",
        len(rows),
    )
    assert await seat_statuses(broker, seat.seat_id, 3) == [
        ("active", "seat_added", None),
        ("suspended", "quota_exhausted", rfc3339(resets_at)),
        ("active", "pack_purchased", None),
    ]


# -- §2, §4 the month's end ----------------------------------------------------------------

ROLLOVER_IN_SECONDS = 6
"""How far from the fixture's start the subscriptions' month ends: enough to set them up."""


@dataclass(frozen=True)
class Rollover:
    """Subscriptions whose month ended a moment ago, each for one scenario."""

    at: datetime
    """The month's end (the next month's start)."""
    month_start: datetime
    """The start of the month that ended."""
    used_up: Team
    """Its seat used the whole month before the end."""
    used_up_answer: Json
    """quota's answer to that seat's key before the end."""
    late: Team
    """For a late report of the ended month and a report of the new one."""
    quiet: Team
    """For a late report as the first fact after the end."""


@pytest.fixture(scope="module")
async def rollover(ingest: httpx.AsyncClient, services: dict[str, str]) -> Rollover:
    at = now() + timedelta(seconds=ROLLOVER_IN_SECONDS)
    started_at = start_for_month_end(at)
    used_up, late, quiet = [await new_team(ingest, started_at) for _ in range(3)]
    await used_up.use_credits(used_up.seat, SEAT_MONTH)
    async with gateway_client(services) as quota:
        answer = await authorized(quota, used_up.seat.api_key, 403)
    assert datetime.now(UTC) < at - timedelta(seconds=1), "set-up outlasted the month"
    await asyncio.sleep((at - datetime.now(UTC)).total_seconds())
    return Rollover(at, add_months(at, -1), used_up, answer, late, quiet)


async def test_the_month_end_resets_a_used_up_seat_and_resumes_it(
    rollover: Rollover, quota: httpx.AsyncClient, broker: str
) -> None:
    """§2, §4: a seat suspended for a used-up month resumes when its month rolls over, with a
    fresh quota; the resume is pushed on the seat-status topic without any new fact."""
    seat = rollover.used_up.seat
    assert rollover.used_up_answer == exhausted(seat.seat_id, rollover.at)
    resumed = await authorized(quota, seat.api_key, 200)
    assert resumed["remaining"] == remaining("25000", "0", "25000")
    assert await seat_statuses(broker, seat.seat_id, 3) == [
        ("active", "seat_added", None),
        ("suspended", "quota_exhausted", rfc3339(rollover.at)),
        ("active", "month_rolled_over", None),
    ]


async def test_usage_reported_after_the_month_end_is_charged_to_the_month_it_happened_in(
    rollover: Rollover, quota: httpx.AsyncClient, ledger: httpx.AsyncClient
) -> None:
    """§4: a usage draws from the seat's month that contains its time: a late report of the
    ended month uses that month up, and leaves the new month's quota whole."""
    team, seat = rollover.late, rollover.late.seat
    late = await team.use_credits(seat, SEAT_MONTH, rollover.at - timedelta(seconds=1))
    fresh = await team.use(seat, SEED_USAGE)

    rows = {r["request_id"]: r for r in await usage_rows(ledger, team, len(late) + 1)}
    ended_month = seat_bucket(seat.seat_id, rollover.month_start)
    assert {p["bucket_id"] for i in late for p in rows[i]["paid_from"]} == {ended_month}
    assert paid_per_bucket(rows[i] for i in late) == {("seat_quota", ended_month): 25_000}
    assert {rows[i]["shortfall"] for i in late} == {"0"}
    assert rows[fresh]["paid_from"] == [
        paid("seat_quota", seat_bucket(seat.seat_id, rollover.at), "3.18")
    ]
    await remaining_settles(quota, seat.api_key, remaining("24996.82", "0", "24996.82"))
    ended = await statement(ledger, team, f"{rollover.month_start:%Y-%m}")
    current = await statement(ledger, team, f"{rollover.at:%Y-%m}")
    assert (ended["deducted"]["seat"], ended["requests"]) == ("25000", len(late))
    assert (current["deducted"]["seat"], current["requests"]) == ("3.18", 1)


async def test_usage_reported_after_the_month_end_does_not_suspend_the_renewed_seat(
    rollover: Rollover, quota: httpx.AsyncClient, broker: str
) -> None:
    """§4: a seat is suspended when its quota for the *current* month and the packs are at
    zero; a late report that uses up the ended month must not suspend a seat whose new month
    is untouched, not even for a moment on the seat-status topic."""
    team, seat = rollover.quiet, rollover.quiet.seat
    await team.use_credits(seat, SEAT_MONTH, rollover.at - timedelta(seconds=1))
    await team.use(seat, SEED_USAGE)
    await remaining_settles(quota, seat.api_key, remaining("24996.82", "0", "24996.82"))
    statuses = await topic_messages(
        broker, "metering.seat-status.v1", seat.seat_id, bool, settle_seconds=2.0
    )
    assert [(e["payload"]["status"], e["payload"]["reason"]) for e in once_each(statuses)] == [
        ("active", "seat_added")
    ]


# -- §1, §4 duplicate and conflicting reports ----------------------------------------------


async def test_a_repeated_report_counts_once_and_a_conflicting_one_is_refused(
    team: Team,
    ingest: httpx.AsyncClient,
    quota: httpx.AsyncClient,
    ledger: httpx.AsyncClient,
    broker: str,
) -> None:
    """§1, §4: a report repeated (over HTTP, in a batch or on the usage-reports topic) is
    answered with the original event and never counted twice; the same request id with
    another body is refused (409 / dead letter) and changes nothing."""
    seat = team.seat
    report = team.report(seat, SEED_USAGE)
    conflicting = {**report, "output_tokens": 574}
    request_id = report["request_id"]

    accepted = await ingest.post("/v1/usage", json=report)
    assert accepted.status_code == 202, accepted.text
    event_id = accepted.json()["event_id"]
    assert accepted.json() == {"event_id": event_id, "duplicate": False}
    repeated = await ingest.post("/v1/usage", json=report)
    assert (repeated.status_code, repeated.json()) == (
        200,
        {"event_id": event_id, "duplicate": True},
    )
    conflict = f"'{request_id}' was already used for a different report (event {event_id}); "
    conflict += "a retry must resend the same body"
    refused = await ingest.post("/v1/usage", json=conflicting)
    assert refused.status_code == 409, refused.text
    assert refused.headers["content-type"] == "application/problem+json"
    assert refused.json() == {
        "type": "/problems/conflicting_report",
        "title": "Conflicting report",
        "status": 409,
        "detail": conflict,
        "code": "conflicting_report",
    }

    other = team.report(seat, SEED_USAGE)
    batch = await ingest.post(
        "/v1/usage/batch", json={"reports": [report, conflicting, other, other]}
    )
    assert batch.status_code == 200, batch.text
    results = batch.json()["results"]
    assert [r["status"] for r in results] == ["duplicate", "conflict", "accepted", "duplicate"]
    assert results[0]["event_id"] == results[1]["event_id"] == event_id
    assert results[2]["event_id"] == results[3]["event_id"] != event_id
    assert results[1]["problem"]["detail"] == conflict

    async with AIOKafkaProducer(bootstrap_servers=broker) as producer:
        for body in (report, conflicting):  # the same partition: handled in this order
            value = json.dumps(body).encode()
            await producer.send_and_wait(
                "metering.usage-reports.v1", value, key=team.account_id.encode()
            )
    [letter] = await topic_messages(broker, "metering.dlq.v1", team.account_id, bool)
    assert letter["reason"] == f"conflict usage report: request_id: {conflict}"
    assert letter["source_topic"] == "metering.usage-reports.v1"
    assert json.loads(base64.b64decode(letter["original_value_base64"])) == conflicting

    last = await team.use(seat, SEED_USAGE)  # after the topic's reports on the account's log
    rows = await usage_rows(ledger, team, 3)
    assert sorted((r["request_id"], r["credits"]) for r in rows) == sorted(
        [(request_id, "3.18"), (other["request_id"], "3.18"), (last, "3.18")]
    )
    await remaining_settles(quota, seat.api_key, remaining("24990.46", "0", "24990.46"))


# -- §5 revoked key ------------------------------------------------------------------------


async def test_a_revoked_key_is_refused_and_its_later_usage_is_never_charged(
    team: Team,
    ingest: httpx.AsyncClient,
    quota: httpx.AsyncClient,
    ledger: httpx.AsyncClient,
    broker: str,
) -> None:
    """§5: a revoked key is answered like an unknown one while the seat's other key keeps
    working; §4a: usage reported afterwards under the revoked key could not take effect, so
    ingest refuses it at once (422, code `key_revoked`): it never reaches the ledger (no
    rejection on metering.ledger.v1) and charges nothing."""
    revoked = team.seat
    kept = await team.issue_key(revoked.seat_id)
    await authorized(quota, revoked.api_key, 200)

    answer = await ingest.delete(f"/v1/keys/{revoked.key_id}")
    assert (answer.status_code, answer.json()["duplicate"]) == (200, False)
    assert await authorized(quota, revoked.api_key, 401) == {
        "allowed": False,
        "code": "invalid_api_key",
        "message": "InvalidApiKey: Invalid API-key provided.",
        "resets_at": None,
        "reason": None,
    }
    assert (await authorized(quota, kept.api_key, 200))["key_id"] == kept.key_id
    again = await ingest.delete(f"/v1/keys/{revoked.key_id}")
    assert (again.status_code, again.json()["duplicate"]) == (200, True)
    unknown = await ingest.delete(f"/v1/keys/no-key-{team.account_id}")
    assert (unknown.status_code, unknown.json()["detail"]) == (
        404,
        f"API key 'no-key-{team.account_id}' does not exist",
    )

    refused_usage = await ingest.post("/v1/usage", json=team.report(revoked, SEED_USAGE))
    assert refused_usage.status_code == 422, refused_usage.text
    assert refused_usage.headers["content-type"] == "application/problem+json"
    body = refused_usage.json()
    assert (body["title"], body["detail"], body["code"]) == (
        "Invalid request",
        "invalid fields: key_id",
        "key_revoked",
    )
    [problem] = body["errors"]
    assert (problem["field"], problem["code"]) == ("key_id", "key_revoked")
    assert re.fullmatch(
        re.escape(f"API key '{revoked.key_id}' was revoked at ") + r"\S+", problem["message"]
    ), problem["message"]
    charged = await team.use(kept, SEED_USAGE)

    messages = await topic_messages(
        broker,
        "metering.ledger.v1",
        team.account_id,
        lambda found: any(m["event_type"] == "CreditsDeducted" for m in found),
    )
    assert [m["event_type"] for m in once_each(messages)] == ["CreditsDeducted"]
    [row] = await usage_rows(ledger, team, 1)
    assert (row["request_id"], row["key_id"], row["credits"]) == (charged, kept.key_id, "3.18")


# -- §5 the gateway's answers --------------------------------------------------------------

EXPIRES_IN_SECONDS = 3


@dataclass(frozen=True)
class Gate:
    """What the refusal table asks about."""

    team: Team
    """Seat 1 has credits and a second, revoked key; seat 2 has used up its month."""
    revoked_key: str
    cancelled: Team
    expired: Team


@pytest.fixture(scope="module")
async def gate(ingest: httpx.AsyncClient) -> Gate:
    expires_at = now() + timedelta(seconds=EXPIRES_IN_SECONDS)
    expired = await new_team(ingest, expires_at=rfc3339(expires_at))
    team = await new_team(ingest, tiers=("standard", "standard"))
    revoked = await team.issue_key(team.seat.seat_id)
    answer = await ingest.delete(f"/v1/keys/{revoked.key_id}")
    assert answer.status_code == 200, answer.text
    await team.use_credits(team.seats[1], SEAT_MONTH)
    cancelled = await new_team(ingest)
    cancel = {"at": rfc3339(datetime.now(UTC))}
    answer = await ingest.post(f"/v1/subscriptions/{cancelled.subscription_id}/cancel", json=cancel)
    assert answer.status_code == 200, answer.text
    return Gate(team, revoked.api_key, cancelled, expired)


def refusal(code: str, message: str) -> Json:
    return {"allowed": False, "code": code, "message": message, "resets_at": None, "reason": None}


def suspended_plan(team: Team, ended: str, reason: str) -> Json:
    return {
        "allowed": False,
        "code": "seat_suspended",
        "message": f"Subscription '{team.subscription_id}' {ended}: its seats are suspended. "
        "Renew the subscription to restore service.",
        "resets_at": None,
        "reason": reason,
    }


INVALID_KEY = refusal("invalid_api_key", "InvalidApiKey: Invalid API-key provided.")
WRONG_PLAN = refusal("wrong_plan", "invalid access token or token expired")
GATE: list[tuple[str, Callable[[Gate], str | None], Json, int, Callable[[Gate], Json]]] = [
    (
        "allowed",
        lambda g: g.team.seat.api_key,
        {"endpoint": "openai", "input_tokens": 8_349},
        200,
        lambda g: {
            "allowed": True,
            "account_id": g.team.account_id,
            "subscription_id": g.team.subscription_id,
            "seat_id": g.team.seat.seat_id,
            "key_id": g.team.seat.key_id,
            "remaining": remaining("25000", "0", "25000"),
        },
    ),
    (
        "no key",
        lambda g: None,
        {},
        401,
        lambda g: refusal("missing_api_key", "InvalidApiKey: No API-key provided."),
    ),
    ("unknown key", lambda g: "sk-tp-" + "x" * 43, {}, 401, lambda g: INVALID_KEY),
    ("revoked key", lambda g: g.revoked_key, {}, 401, lambda g: INVALID_KEY),
    (
        "key of the Coding Plan",
        lambda g: "sk-cp-" + g.team.seat.api_key.removeprefix("sk-tp-"),
        {},
        401,
        lambda g: WRONG_PLAN,
    ),
    ("pay-as-you-go key", lambda g: "sk-" + "a" * 32, {}, 401, lambda g: WRONG_PLAN),
    (
        "model not in the plan",
        lambda g: g.team.seat.api_key,
        {"model": "gpt-4o"},
        404,
        lambda g: refusal("model_not_supported", "model 'gpt-4o' not found or not supported"),
    ),
    (
        "image model on the text endpoint",
        lambda g: g.team.seat.api_key,
        {"model": "qwen-image-2.0", "endpoint": "anthropic"},
        400,
        lambda g: refusal(
            "image_model_on_text_endpoint",
            "model 'qwen-image-2.0' is an image model: image models use separate APIs, "
            "not the anthropic-compatible text endpoint",
        ),
    ),
    (
        "input longer than the context",
        lambda g: g.team.seat.api_key,
        {"model": "deepseek-v3.2", "input_tokens": 128_001},
        400,
        lambda g: refusal(
            "input_length_out_of_range", "Range of input length should be [1, 128000]"
        ),
    ),
    (
        "empty input",
        lambda g: g.team.seat.api_key,
        {"input_tokens": 0},
        400,
        lambda g: refusal(
            "input_length_out_of_range", "Range of input length should be [1, 1000000]"
        ),
    ),
    (
        "seat suspended",
        lambda g: g.team.seats[1].api_key,
        {},
        403,
        lambda g: exhausted(g.team.seats[1].seat_id, add_months(g.team.started_at, 1)),
    ),
    (
        "subscription cancelled",
        lambda g: g.cancelled.seat.api_key,
        {},
        403,
        lambda g: suspended_plan(g.cancelled, "was cancelled", "subscription_cancelled"),
    ),
    (
        "subscription expired",
        lambda g: g.expired.seat.api_key,
        {},
        403,
        lambda g: suspended_plan(g.expired, "has expired", "subscription_expired"),
    ),
]


@pytest.mark.parametrize(
    ("key_of", "fields", "status", "expected"), [r[1:] for r in GATE], ids=[r[0] for r in GATE]
)
async def test_the_gateway_gets_the_products_answers(
    gate: Gate,
    quota: httpx.AsyncClient,
    key_of: Callable[[Gate], str | None],
    fields: Json,
    status: int,
    expected: Callable[[Gate], Json],
) -> None:
    """§5, row by row: what `POST /v1/authorize` answers, with the documented messages."""
    answer = await eventually(lambda: authorize(quota, key_of(gate), **fields), status_is(status))
    assert answer.status_code == status, answer.text
    assert answer.json() == expected(gate)


UNUSABLE: list[tuple[str, Callable[[], Json], str, str]] = [
    (
        "model not on the rate card",
        lambda: {"model": "gpt-4o"},
        "model",
        re.escape("model 'gpt-4o' not found or not supported by the rate card"),
    ),
    (
        "older than the lateness bound",
        lambda: {"occurred_at": rfc3339(now() - timedelta(hours=72, minutes=1))},
        "occurred_at",
        re.escape(
            "is older than the lateness bound of 72 hours; usage this late is no longer accepted"
        ),
    ),
    (
        "in the future",
        lambda: {"occurred_at": rfc3339(now() + timedelta(minutes=6))},
        "occurred_at",
        r"is more than 5 minutes in the future of ingest's clock \(.+\); check the gateway's clock",
    ),
    (
        "time without a zone",
        lambda: {"occurred_at": now().replace(tzinfo=None).isoformat()},
        "occurred_at",
        "Input should have timezone info",
    ),
    (
        "negative token count",
        lambda: {"output_tokens": -1},
        "output_tokens",
        "Input should be greater than or equal to 0",
    ),
]


@pytest.mark.parametrize(
    ("change", "field", "message"), [r[1:] for r in UNUSABLE], ids=[r[0] for r in UNUSABLE]
)
async def test_ingest_refuses_unusable_reports_and_says_which_field(
    team: Team,
    ingest: httpx.AsyncClient,
    change: Callable[[], Json],
    field: str,
    message: str,
) -> None:
    """§1, §5: ingest validates what the gateway reports (model on the rate card, time within
    the lateness bound and not in the future) and names the field it refuses."""
    answer = await ingest.post("/v1/usage", json={**team.report(team.seat), **change()})
    assert answer.status_code == 422, answer.text
    body = answer.json()
    assert (body["title"], body["detail"]) == ("Invalid request", f"invalid fields: {field}")
    [problem] = body["errors"]
    assert problem["field"] == field
    assert re.fullmatch(message, problem["message"]), problem["message"]
