"""A 2xx is a promise (design.md §4a): each finding of round one's adversarial run, through
the public HTTP APIs only. What is accepted takes effect; what cannot is refused at once with
a 4xx problem naming the field and a stable `code`."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import httpx

from tests.e2e.conftest import (
    ADMIN,
    SEED_USAGE,
    Json,
    Team,
    authorized,
    eventually,
    new_team,
    now,
    rfc3339,
    usage_rows,
)


def precise_now() -> datetime:
    return datetime.now(UTC)


def problem_code(answer: httpx.Response) -> str:
    assert answer.headers["content-type"] == "application/problem+json", answer.text
    code: str = answer.json()["code"]
    return code


async def seat_used(quota: httpx.AsyncClient, seat_id: str, used: str) -> Json:
    answer = await eventually(
        lambda: quota.get(f"/v1/seats/{seat_id}", headers=ADMIN),
        lambda a: a.status_code == 200 and a.json()["used"] == used,
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["used"] == used, answer.text
    body: Json = answer.json()
    return body


async def test_a_seat_added_before_a_scheduled_start_is_there_from_the_start(
    ingest: httpx.AsyncClient, quota: httpx.AsyncClient, ledger: httpx.AsyncClient
) -> None:
    start = precise_now() + timedelta(seconds=3)
    team = await new_team(ingest, started_at=start)
    refused = await ingest.post("/v1/usage", json=team.report(team.seat, SEED_USAGE))
    assert refused.status_code == 422
    assert problem_code(refused) == "subscription_not_active"
    await asyncio.sleep(max(0.0, (start - precise_now()).total_seconds()) + 0.2)
    allowed = await authorized(quota, team.seat.api_key, 200)
    assert allowed["seat_id"] == team.seat.seat_id
    await team.use(team.seat, SEED_USAGE)
    await seat_used(quota, team.seat.seat_id, "3.18")
    overview = await quota.get(f"/v1/subscriptions/{team.subscription_id}/overview", headers=ADMIN)
    assert [s["seat_id"] for s in overview.json()["seats"]] == [team.seat.seat_id]


async def test_a_pack_for_an_ended_or_not_yet_started_plan_is_refused(
    ingest: httpx.AsyncClient,
) -> None:
    ending = precise_now() + timedelta(seconds=2)
    team = await new_team(ingest, expires_at=rfc3339(ending))
    await asyncio.sleep(max(0.0, (ending - precise_now()).total_seconds()) + 0.2)
    body = {"pack_id": f"late-{team.account_id}", "purchased_at": rfc3339(precise_now())}
    ended = await ingest.post(f"/v1/subscriptions/{team.subscription_id}/packs", json=body)
    assert ended.status_code == 409, ended.text
    assert problem_code(ended) == "subscription_ended"

    fresh = await new_team(ingest, started_at=now() - timedelta(hours=1))
    before = {
        "pack_id": f"early-{fresh.account_id}",
        "purchased_at": rfc3339(now() - timedelta(hours=2)),
    }
    early = await ingest.post(f"/v1/subscriptions/{fresh.subscription_id}/packs", json=before)
    assert early.status_code == 409, early.text
    assert problem_code(early) == "subscription_not_started"
    ahead = {"pack_id": f"ahead-{fresh.account_id}", "purchased_at": "9999-01-01T00:00:00Z"}
    far = await ingest.post(f"/v1/subscriptions/{fresh.subscription_id}/packs", json=ahead)
    assert far.status_code == 422, far.text


async def test_usage_that_cannot_be_charged_is_refused_with_its_field(
    ingest: httpx.AsyncClient, team: Team
) -> None:
    cases: list[tuple[Json, str, str]] = [
        ({"model": "qwen3.6-plus", "images": 2}, "images", "unpriceable_usage"),
        ({"key_id": "key-nobody-has"}, "key_id", "unknown_key"),
        ({"model": "no-such-model"}, "model", "unknown_model"),
        ({"input_tokens": 2_000_000}, "input_tokens", "tokens_beyond_context"),
        ({"output_tokens": 10_000_000_000_000_000}, "output_tokens", "malformed"),
        ({"occurred_at": "9999-01-01T00:00:00Z"}, "occurred_at", "malformed"),
        ({"occurred_at": rfc3339(now() + timedelta(hours=1))}, "occurred_at", "occurred_in_future"),
    ]
    for changes, field, code in cases:
        report = {**team.report(team.seat, SEED_USAGE), **changes}
        refused = await ingest.post("/v1/usage", json=report)
        assert refused.status_code == 422, (changes, refused.text)
        body = refused.json()
        assert body["errors"][0]["field"] == field, body
        assert body["code"] == code, body


async def test_a_report_dated_a_moment_before_its_key_is_charged(
    ingest: httpx.AsyncClient, quota: httpx.AsyncClient, team: Team
) -> None:
    """Whole seconds, as `date -u +%FT%TZ` writes them: a fraction before the key's issue."""
    seat = await team.add_seat()
    report = team.report(seat, SEED_USAGE, occurred_at=precise_now().replace(microsecond=0))
    accepted = await ingest.post("/v1/usage", json=report)
    assert accepted.status_code == 202, accepted.text
    await seat_used(quota, seat.seat_id, "3.18")


async def test_a_revoked_key_stops_paying_only_for_calls_after_its_revocation(
    ingest: httpx.AsyncClient, quota: httpx.AsyncClient, team: Team
) -> None:
    started = precise_now() - timedelta(seconds=1)
    assert (await ingest.delete(f"/v1/keys/{team.seat.key_id}")).status_code == 200
    before = await ingest.post("/v1/usage", json=team.report(team.seat, SEED_USAGE, started))
    assert before.status_code == 202, before.text
    after = await ingest.post("/v1/usage", json=team.report(team.seat, SEED_USAGE))
    assert after.status_code == 422
    assert problem_code(after) == "key_revoked"
    await seat_used(quota, team.seat.seat_id, "3.18")


async def test_renewal_after_the_plan_ended(ingest: httpx.AsyncClient) -> None:
    ending = precise_now() + timedelta(seconds=2)
    team = await new_team(ingest, expires_at=rfc3339(ending))
    scheduled = {
        "account_id": team.account_id,
        "subscription_id": f"next-{team.account_id}",
        "started_at": rfc3339(ending),
    }
    renewed = await ingest.post("/v1/subscriptions", json=scheduled)
    assert renewed.status_code == 201, renewed.text
    overlapping = {**scheduled, "subscription_id": f"third-{team.account_id}"}
    refused = await ingest.post("/v1/subscriptions", json=overlapping)
    assert refused.status_code == 409
    assert problem_code(refused) == "account_has_active_subscription"


async def test_a_cancellation_ahead_is_scheduled_and_spares_the_packs(
    ingest: httpx.AsyncClient, quota: httpx.AsyncClient, ledger: httpx.AsyncClient, team: Team
) -> None:
    await team.buy_pack(f"pack-{team.account_id}", now() - timedelta(minutes=1))
    later = {"at": rfc3339(now() + timedelta(days=45))}
    cancelled = await ingest.post(f"/v1/subscriptions/{team.subscription_id}/cancel", json=later)
    assert cancelled.status_code == 200, cancelled.text
    past = await ingest.post(
        f"/v1/subscriptions/{team.subscription_id}/cancel",
        json={"at": rfc3339(now() - timedelta(days=1))},
    )
    assert past.status_code in (409, 422)
    reports = [team.report(team.seat, {"output_tokens": 1_000_000}) for _ in range(21)]
    batch = await ingest.post("/v1/usage/batch", json={"reports": reports})  # 25,200 credits
    assert [r["status"] for r in batch.json()["results"]] == ["accepted"] * 21, batch.text
    rows = await usage_rows(ledger, team, 21)
    assert {row["shortfall"] for row in rows} == {"0"}
    seat = await seat_used(quota, team.seat.seat_id, "25000")
    assert seat["status"] == "active"
    assert seat["shared_remaining"] == "624800"


async def test_concurrent_repeats_of_one_request_answer_one_202(
    ingest: httpx.AsyncClient, quota: httpx.AsyncClient, team: Team
) -> None:
    report = team.report(team.seat, SEED_USAGE)
    answers = await asyncio.gather(*(ingest.post("/v1/usage", json=report) for _ in range(20)))
    codes = sorted(a.status_code for a in answers)
    assert codes == [200] * 19 + [202], [a.text for a in answers]
    assert len({a.json()["event_id"] for a in answers}) == 1
    assert all(a.json()["duplicate"] for a in answers if a.status_code == 200)
    await seat_used(quota, team.seat.seat_id, "3.18")


async def test_a_tiny_request_is_not_free(
    ingest: httpx.AsyncClient, quota: httpx.AsyncClient, team: Team
) -> None:
    await team.use(team.seat, {"input_tokens": 24})
    await seat_used(quota, team.seat.seat_id, "0.01")
