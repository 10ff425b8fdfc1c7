"""quota as a real process restarted mid-stream (SIGTERM and SIGKILL) comes back to the
balances the pure fold computes, and its seat statuses reach a `SeatStatusCache`.

Each test has its own database, topics and consumer group; the events are produced
straight to its events topic, and the expected balances are the pure core's views of the
same events at the time of asking.
"""

from __future__ import annotations

import asyncio
import random
import signal
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from itertools import zip_longest
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import orjson
import pytest
from aiokafka import AIOKafkaProducer

from metering.apikeys import key_hash
from metering.core.fold import fold
from metering.core.money import parse_credits
from metering.core.state import AccountState
from metering.core.views import seat_view
from metering.seat_status_client import SeatStatusCache
from metering.stack import Stack
from schemas.envelope import FactEvent
from tests.integration.isolated import SECRET, TOKEN, IsolatedEnv, isolated_env
from tests.unit.event_builders import DEFAULT_CARD, TOKENS_PER_CREDIT, Facts

pytestmark = pytest.mark.integration

DEADLINE = 120.0


def start_quota(env: IsolatedEnv) -> str:
    """`python -m quota` in the test's environment; returns its URL once it is ready."""
    process, url = env.start("quota")
    give_up = time.monotonic() + DEADLINE
    while time.monotonic() < give_up:
        assert process.poll() is None, env.log_tail()
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return url
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"quota did not become ready:\n{env.log_tail()}")


@pytest.fixture
async def env(stack: Stack, tmp_path: Path) -> AsyncIterator[IsolatedEnv]:
    async with isolated_env(stack, tmp_path, "qt") as isolated:
        yield isolated


def make_events(prefix: str, accounts: int, usages: int, seed: int = 11) -> list[FactEvent]:
    """Teams started a day ago (two or three seats, a key each, a pack for some), then usage
    up to now, heavy enough that some seats and packs run out; in production order."""
    rng = random.Random(seed)
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(days=1)
    by_account: list[list[FactEvent]] = []
    for a in range(accounts):
        facts = Facts(f"{prefix}-acct-{a}")
        seats = [f"{prefix}-seat-{a}-{s}" for s in range(rng.randint(2, 3))]
        events = [facts.activate(start)]
        for seat in seats:
            events.append(facts.add_seat(start, seat, rng.choice(["standard", "advanced"])))
            events.append(
                facts.event(
                    "ApiKeyIssued",
                    start,
                    subscription_id="sub-1",
                    seat_id=seat,
                    key_id=f"key-{seat}",
                    key_hash=key_hash(f"sk-tp-{seat}", SECRET),
                )
            )
        if a % 2 == 0:
            events.append(facts.buy_pack(start + timedelta(minutes=1), f"{prefix}-pack-{a}"))
        for u in range(usages):
            when = start + timedelta(minutes=2) + timedelta(hours=20) * u / usages
            credits = rng.randint(100, 3_000 if a % 3 else 30_000)
            events.append(
                facts.usage(when, rng.choice(seats), input_tokens=credits * TOKENS_PER_CREDIT)
            )
        by_account.append(events)
    return [e for group in zip_longest(*by_account) for e in group if e is not None]


async def produce(bootstrap: str, topic: str, events: list[FactEvent]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await producer.start()
    try:
        sends = [
            await producer.send(topic, e.model_dump_json().encode(), key=e.account_id.encode())
            for e in events
        ]
        await asyncio.gather(*sends)
    finally:
        await producer.stop()


def expected_states(events: list[FactEvent]) -> dict[str, AccountState]:
    by_account: dict[str, list[FactEvent]] = {}
    for event in events:
        by_account.setdefault(event.account_id, []).append(event)
    return {a: fold(account_events, DEFAULT_CARD)[0] for a, account_events in by_account.items()}


def seat_ids(states: dict[str, AccountState]) -> list[str]:
    return sorted(
        s for state in states.values() for sub in state.subscriptions.values() for s in sub.seats
    )


def balances_now(states: dict[str, AccountState]) -> dict[str, dict[str, Any]]:
    """What GET /v1/seats/{id} must say now, as the pure core's view."""
    now = datetime.now(UTC)
    found = {}
    for state in states.values():
        for sub in state.subscriptions.values():
            for seat_id in sub.seats:
                view = seat_view(state, seat_id, now)
                assert view is not None
                found[seat_id] = {
                    "status": view.status,
                    "used_micro": view.used_micro,
                    "remaining_micro": view.seat_remaining_micro,
                    "shared_micro": view.shared_remaining_micro,
                }
    return found


def balances_served(url: str, seats: list[str]) -> dict[str, dict[str, Any]]:
    served = {}
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {TOKEN}"}) as client:
        for seat_id in seats:
            answer = client.get(f"/v1/seats/{seat_id}")
            if answer.status_code != 200:
                continue
            body = answer.json()
            served[seat_id] = {
                "status": body["status"],
                "used_micro": parse_credits(body["used"]),
                "remaining_micro": parse_credits(body["remaining"]),
                "shared_micro": parse_credits(body["shared_remaining"]),
            }
    return served


async def wait_for(check: Callable[[], bool]) -> bool:
    give_up = time.monotonic() + DEADLINE
    while time.monotonic() < give_up:
        if check():
            return True
        await asyncio.sleep(0.3)
    return check()


@pytest.mark.parametrize(
    "stop_signal", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"]
)
async def test_quota_restarted_mid_stream_comes_back_to_the_same_balances(
    env: IsolatedEnv, stop_signal: signal.Signals
) -> None:
    events = make_events(env.name, accounts=12, usages=250)
    states = expected_states(events)
    seats = seat_ids(states)
    bootstrap = env.stack.kafka_bootstrap_servers
    first, second, third = (
        events[: len(events) // 3],
        events[len(events) // 3 : 2 * len(events) // 3],
        events[2 * len(events) // 3 :],
    )

    url = start_quota(env)
    await produce(bootstrap, env.events_topic, first)
    partial = expected_states(first)
    assert await wait_for(lambda: balances_served(url, seats) == balances_now(partial)), (
        env.log_tail()
    )

    await produce(bootstrap, env.events_topic, second)
    process = env.processes[-1]
    process.send_signal(stop_signal)
    assert process.wait(30) == (0 if stop_signal == signal.SIGTERM else -signal.SIGKILL)
    await produce(bootstrap, env.events_topic, third)

    url = start_quota(env)
    restarted = (env.logs / "quota-1.log").read_text()
    assert f'"msg":"projection loaded","accounts":{len(partial)}' in restarted  # snapshots
    assert await wait_for(lambda: balances_served(url, seats) == balances_now(states)), (
        env.log_tail()
    )
    db = await asyncpg.connect(env.database_url)
    try:
        stored = {
            row["account_id"]: orjson.loads(row["state"])
            for row in await db.fetch("SELECT account_id, state::text AS state FROM quota_accounts")
        }
        stored_request_ids = {
            (row["account_id"], row["request_id"])
            for row in await db.fetch("SELECT account_id, request_id FROM quota_request_ids")
        }
    finally:
        await db.close()
    assert stored == {
        a: orjson.loads(orjson.dumps(s.to_dict(with_request_ids=False))) for a, s in states.items()
    }
    assert stored_request_ids == {(a, r) for a, s in states.items() for r in s.request_ids}

    cache = SeatStatusCache(bootstrap, env.seat_status_topic)
    await cache.start()
    try:
        expected = {s: b["status"] for s, b in balances_now(states).items()}

        def cached() -> dict[str, str | None]:
            return {s: (c.status if (c := cache.status(s)) else None) for s in seats}

        assert await wait_for(lambda: cached() == expected)
    finally:
        await cache.stop()
