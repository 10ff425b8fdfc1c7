"""A stateful property test of design.md §4a through the public APIs only (hypothesis
`RuleBasedStateMachine`): a team's admin and gateway send plan commands and usage reports,
with scheduled and past times, late and skewed reports and hostile values, in any order.

After every step:
- every fact answered 2xx is applied by the ledger, none rejected (the ledger's
  `GET /v1/events/{event_id}`); every refusal is a 4xx problem with a stable `code`;
- quota's live balances equal the ledger's statement of the month, seat by seat and pack by
  pack, to the micro-credit, and the statement adds up (credits are conserved).
At the end of each run, a replay of the event log (`metering statement`, computed from the
ledger's archive by the pure fold) gives the same statement as the live ledger.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    initialize,
    invariant,
    rule,
)

from tests.conftest import ADMIN_TOKEN
from tests.e2e.conftest import MODEL, month_containing, rfc3339

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
DEADLINE = 20.0
TIERS = ("standard", "advanced", "premium")
Json = dict[str, Any]


def precise_now() -> datetime:
    return datetime.now(UTC)


def credits(text: str) -> Decimal:
    return Decimal(text)


class PromiseMachine(RuleBasedStateMachine):
    """One team per run; its seats, keys and reports are hypothesis's to choose."""

    seats = Bundle("seats")
    keys = Bundle("keys")
    reports = Bundle("reports")

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        urls = SERVICES
        self.ingest = httpx.AsyncClient(base_url=urls["ingest"], headers=ADMIN, timeout=30)
        self.ledger = httpx.AsyncClient(base_url=urls["ledger"], headers=ADMIN, timeout=30)
        self.quota = httpx.AsyncClient(base_url=urls["quota"], headers=ADMIN, timeout=30)
        self.account_id = f"pm-{uuid.uuid4().hex[:12]}"
        self.subscription_id = f"sub-{self.account_id}"
        self.started_at = precise_now() - timedelta(days=3)
        self.accepted: list[str] = []
        """Event ids answered 2xx and not yet seen applied."""
        self.seat_count = 0
        self.cancelled = False

    def run(self, coroutine: Any) -> Any:
        return self.loop.run_until_complete(coroutine)

    def teardown(self) -> None:
        try:
            if self.accepted is not None and self.seat_count:
                self.run(self._applied())
                self.run(self._replay_equals_ledger())
        finally:
            for client in (self.ingest, self.ledger, self.quota):
                self.run(client.aclose())
            self.loop.close()

    # -- commands ----------------------------------------------------------------------

    @initialize(target=seats)
    def open_plan(self) -> str:
        body = {
            "account_id": self.account_id,
            "subscription_id": self.subscription_id,
            "started_at": rfc3339(self.started_at),
        }
        self.expect_2xx(self.run(self.ingest.post("/v1/subscriptions", json=body)))
        return self._add_seat("standard")

    @rule(target=seats, tier=st.sampled_from(TIERS))
    def add_seat(self, tier: str) -> str:
        return self._add_seat(tier)

    def _add_seat(self, tier: str) -> str:
        self.seat_count += 1
        seat_id = f"seat-{self.seat_count}-{self.account_id}"
        body = {"seat_id": seat_id, "tier": tier, "member": f"m{self.seat_count}"}
        answer = self.run(
            self.ingest.post(f"/v1/subscriptions/{self.subscription_id}/seats", json=body)
        )
        if self.cancelled:
            self.expect_4xx(answer)
        else:
            self.expect_2xx(answer)
        return seat_id

    @rule(target=keys, seat_id=seats)
    def issue_key(self, seat_id: str) -> tuple[str, str] | None:
        answer = self.run(
            self.ingest.post(f"/v1/subscriptions/{self.subscription_id}/seats/{seat_id}/keys")
        )
        if answer.status_code >= 400:
            self.expect_4xx(answer)
            return (seat_id, "key-refused")
        self.expect_2xx(answer)
        return (seat_id, str(answer.json()["key_id"]))

    @rule(key=consumes(keys))
    def revoke_key(self, key: tuple[str, str]) -> None:
        answer = self.run(self.ingest.delete(f"/v1/keys/{key[1]}"))
        if key[1] == "key-refused":
            self.expect_4xx(answer)
        else:
            self.expect_2xx(answer, duplicates_allowed=True)

    @rule(seat_id=seats, tier=st.sampled_from(TIERS))
    def change_tier(self, seat_id: str, tier: str) -> None:
        answer = self.run(
            self.ingest.patch(
                f"/v1/subscriptions/{self.subscription_id}/seats/{seat_id}", json={"tier": tier}
            )
        )
        self.expect_either(answer)

    @rule(seat_id=consumes(seats))
    def remove_seat(self, seat_id: str) -> None:
        answer = self.run(
            self.ingest.delete(f"/v1/subscriptions/{self.subscription_id}/seats/{seat_id}")
        )
        self.expect_either(answer)

    @rule(offset=st.sampled_from([-3600, -60, 0, 30, 600, 10**9]))
    def buy_pack(self, offset: int) -> None:
        when = (
            "9999-01-01T00:00:00Z"
            if offset == 10**9
            else rfc3339(precise_now() + timedelta(seconds=offset))
        )
        body = {"pack_id": f"pack-{uuid.uuid4().hex[:10]}", "purchased_at": when}
        answer = self.run(
            self.ingest.post(f"/v1/subscriptions/{self.subscription_id}/packs", json=body)
        )
        if offset > 300:
            self.expect_4xx(answer)
        else:
            self.expect_either(answer)

    @rule(offset=st.sampled_from([-86_400, -10, 0, 45 * 86_400]))
    def cancel(self, offset: int) -> None:
        at = precise_now() + timedelta(seconds=offset)
        answer = self.run(
            self.ingest.post(
                f"/v1/subscriptions/{self.subscription_id}/cancel", json={"at": rfc3339(at)}
            )
        )
        if offset < -300:
            self.expect_4xx(answer)
        else:
            self.expect_either(answer)
            if answer.status_code < 300 and offset <= 0:
                self.cancelled = True

    @rule(
        target=reports,
        key=keys,
        tokens=st.one_of(
            st.integers(0, 50_000_000),
            st.sampled_from([1, 24, 10**16, 2**63, 125_000_000]),
        ),
        cached=st.integers(0, 100_000),
        output=st.integers(0, 20_000),
        offset=st.sampled_from([-80 * 3600, -30 * 3600, -5, 0, 120, 3600]),
        images=st.sampled_from([0, 0, 0, 3]),
    )
    def report_usage(
        self, key: tuple[str, str], tokens: int, cached: int, output: int, offset: int, images: int
    ) -> Json:
        report = {
            "request_id": f"req-{uuid.uuid4().hex}",
            "account_id": self.account_id,
            "subscription_id": self.subscription_id,
            "seat_id": key[0],
            "key_id": key[1],
            "model": MODEL,
            "occurred_at": rfc3339(precise_now() + timedelta(seconds=offset)),
            "input_tokens": tokens,
            "cached_tokens": cached,
            "output_tokens": output,
            "images": images,
        }
        self.post_usage(report)
        return report

    @rule(report=reports)
    def repeat_usage(self, report: Json) -> None:
        """The same report again: a duplicate (200) if it was accepted, else refused again."""
        self.post_usage(report)

    def post_usage(self, report: Json) -> None:
        answer = self.run(self.ingest.post("/v1/usage", json=report))
        hostile = (
            report["input_tokens"] > 1_000_000
            or report["images"]
            or report["key_id"] == "key-refused"
            or report["occurred_at"] < rfc3339(precise_now() - timedelta(hours=72))
            or report["occurred_at"] > rfc3339(precise_now() + timedelta(minutes=5))
        )
        if hostile:
            self.expect_4xx(answer)
        else:
            self.expect_either(answer, duplicates_allowed=True)

    # -- what every answer must be ---------------------------------------------------------

    def expect_2xx(self, answer: httpx.Response, duplicates_allowed: bool = False) -> None:
        assert 200 <= answer.status_code < 300, answer.text
        body = answer.json()
        if "event_id" in body and not body.get("duplicate"):
            self.accepted.append(body["event_id"])

    def expect_4xx(self, answer: httpx.Response) -> None:
        assert 400 <= answer.status_code < 500, answer.text
        assert answer.headers["content-type"] == "application/problem+json", answer.text
        assert answer.json()["code"], answer.text

    def expect_either(self, answer: httpx.Response, duplicates_allowed: bool = False) -> None:
        if answer.status_code < 300:
            self.expect_2xx(answer, duplicates_allowed)
        else:
            self.expect_4xx(answer)

    # -- invariants ------------------------------------------------------------------------

    @invariant()
    def every_2xx_is_applied_and_quota_equals_the_ledger(self) -> None:
        if not self.seat_count:
            return
        self.run(self._applied())
        self.run(self._quota_equals_ledger())

    async def _applied(self) -> None:
        for event_id in self.accepted:
            answer = await _eventually(
                lambda e=event_id: self.ledger.get(f"/v1/events/{e}"),
                lambda a: a.status_code == 200 and a.json()["status"] != "accepted",
            )
            assert answer.status_code == 200, answer.text
            assert answer.json()["status"] == "applied", answer.text
        self.accepted = []

    async def _statement(self) -> Json:
        start, _ = month_containing(self.started_at, precise_now())
        answer = await self.ledger.get(
            f"/v1/subscriptions/{self.subscription_id}/statement",
            params={"month": f"{start.year:04d}-{start.month:02d}"},
        )
        assert answer.status_code == 200, answer.text
        body: Json = answer.json()
        return body

    async def _quota_equals_ledger(self) -> None:
        async def agree() -> tuple[bool, str]:
            statement = await self._statement()
            overview = await self.quota.get(f"/v1/subscriptions/{self.subscription_id}/overview")
            if overview.status_code != 200:
                return False, overview.text
            view = overview.json()
            seats = {s["seat_id"]: s for s in view["seats"]}
            for seat in statement["seats"]:
                live = seats.get(seat["seat_id"])
                if live is not None and credits(live["used"]) != credits(seat["used"]):
                    return (
                        False,
                        f"seat {seat['seat_id']}: quota {live['used']} ledger {seat['used']}",
                    )
            packs = {p["pack_id"]: p for p in view["packs"]}
            for pack in statement["packs"]:
                live = packs.get(pack["pack_id"])
                if live is not None and credits(live["remaining"]) != credits(pack["closing"]):
                    return False, f"pack {pack['pack_id']}: {live['remaining']} {pack['closing']}"
            _conserved(statement)
            return True, ""

        give_up = asyncio.get_running_loop().time() + DEADLINE
        while True:
            ok, why = await agree()
            if ok:
                return
            assert asyncio.get_running_loop().time() < give_up, why
            await asyncio.sleep(0.1)

    async def _replay_equals_ledger(self) -> None:
        statement = await self._statement()
        replayed = await asyncio.to_thread(
            subprocess.run,
            [
                str(Path(sys.executable).parent / "metering"),
                "statement",
                "--subscription",
                self.subscription_id,
                "--month",
                statement["month"],
            ],
            capture_output=True,
            text=True,
            env={**os.environ, **STACK_ENV},
            timeout=120,
        )
        assert replayed.returncode == 0, replayed.stderr
        assert json.loads(replayed.stdout) == statement


def _conserved(statement: Json) -> None:
    """closing = opening + added - deducted - expired, for each kind of balance."""
    for part in ("seat", "shared", "total"):
        opening, added, deducted, expired, closing = (
            credits(statement[k][part])
            for k in ("opening", "added", "deducted", "expired", "closing")
        )
        assert closing == opening + added - deducted - expired, (part, statement)


async def _eventually(ask: Any, wanted: Any) -> httpx.Response:
    give_up = asyncio.get_running_loop().time() + DEADLINE
    while True:
        answer: httpx.Response = await ask()
        if wanted(answer) or asyncio.get_running_loop().time() > give_up:
            return answer
        await asyncio.sleep(0.1)


SERVICES: dict[str, str] = {}
STACK_ENV: dict[str, str] = {}


@pytest.fixture
def wired(services: dict[str, str], stack: Any) -> None:
    SERVICES.update(services)
    STACK_ENV.update(
        {
            "DATABASE_URL": stack.database_url,
            "KAFKA_BOOTSTRAP_SERVERS": stack.kafka_bootstrap_servers,
        }
    )


@pytest.mark.usefixtures("wired")
def test_every_2xx_takes_effect_and_every_view_agrees() -> None:
    PromiseMachine.TestCase.settings = settings(
        max_examples=int(os.environ.get("PROMISE_EXAMPLES", "6")),
        stateful_step_count=12,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        derandomize=True,
    )
    PromiseMachine.TestCase().runTest()
