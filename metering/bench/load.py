"""The benchmark's workload: teams, seats and keys, and a realistic mix of usage reports.

Everything is built from the public contracts only (the JSON bodies of ingest's API and the
envelopes of `metering.events.v1`): many accounts with one or two seats each of mixed tiers,
the busiest with shared packs for what their seats do not cover, several models of the rate card
in force (text and image), thinking, tool calls, cached input, Zipf-skewed traffic across
accounts (the account ranked r takes a share ∝ 1/r^ZIPF_EXPONENT; its seats share it evenly),
and about 2% of reports sent twice (a gateway's retries; ingest answers them `duplicate`).
"""

from __future__ import annotations

import asyncio
import itertools
import math
import random
import uuid
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from metering.bench.rawhttp import ConnectionPool, post_request
from metering.core.ratecard import RateCard

TIERS = ("standard", "advanced", "premium")
TIER_WEIGHTS = (5, 3, 2)
CLIENTS = ("claude-code", "cline", "cursor", "opencode", "qwen-code")
TOOLS = ("web_search", "code_interpreter", "image_search")
DUPLICATE_SHARE = 0.02
ZIPF_EXPONENT = 1.0
"""Traffic of the account ranked r is proportional to 1/r^ZIPF_EXPONENT: with 10,000
accounts the busiest takes ~10% of it, the top 100 ~53%, and nearly every account some."""
TIER_CREDITS = {"standard": 25_000, "advanced": 100_000, "premium": 250_000}
PACK_CREDITS = 625_000
"""Credits of a seat a month by tier, and of a shared pack (the product's)."""
CREDITS_PER_EVENT_BOUND = 40
"""More than the mean price of a report of the mix (~24 credits with the seed rate card): what
the busier accounts buy packs for, beyond their seats' credits, so that none runs dry in the
run (the rest, nearly all of them, buy none: fewer requests to provision)."""
PROFILES = 4096
"""Distinct usage count profiles drawn up front; reports pick from them (cheap at 20k/s)."""


def rfc3339(t: datetime) -> str:
    return t.astimezone(UTC).isoformat().replace("+00:00", "Z")


@dataclass
class Seat:
    account_id: str
    subscription_id: str
    seat_id: str
    tier: str
    key_id: str = ""
    api_key: str = ""


@dataclass
class Team:
    account_id: str
    subscription_id: str
    pack_prefix: str
    rank: int = 1
    """The account's rank in the traffic's Zipf skew (1: the busiest)."""
    packs: int = 0
    seats: list[Seat] = field(default_factory=list)

    @property
    def pack_ids(self) -> list[str]:
        return [f"{self.pack_prefix}-{n}" for n in range(self.packs)]


@dataclass
class Fleet:
    """The bench's accounts; `provision` fills each seat's key over HTTP."""

    tag: str
    teams: list[Team]

    @property
    def seats(self) -> list[Seat]:
        return [seat for team in self.teams for seat in team.seats]

    @property
    def plan_facts(self) -> int:
        """Events provisioning appends: subscription, each seat and its key, the packs."""
        return sum(1 + team.packs + 2 * len(team.seats) for team in self.teams)


def zipf_shares(n: int, exponent: float = ZIPF_EXPONENT) -> list[float]:
    """The share of traffic of ranks 1..n."""
    weights = [1 / rank**exponent for rank in range(1, n + 1)]
    total = sum(weights)
    return [w / total for w in weights]


def make_fleet(
    tag: str,
    accounts: int,
    seats: tuple[int, int],
    rng: random.Random,
    usage_budget: int = 0,
) -> Fleet:
    """`accounts` teams of `seats[0]` to `seats[1]` seats, ranked at random for the traffic's
    skew; each buys the packs its share of `usage_budget` usage reports needs beyond its
    seats' credits (most need none), so that none runs dry in the run."""
    ranks = list(range(1, accounts + 1))
    rng.shuffle(ranks)
    shares = zipf_shares(accounts)
    teams = []
    for a, rank in enumerate(ranks):
        account = f"{tag}-acct-{a:05d}"
        team = Team(account, f"{account}-sub", f"{account}-pack", rank)
        for s in range(rng.randint(*seats)):
            tier = rng.choices(TIERS, TIER_WEIGHTS)[0]
            team.seats.append(Seat(account, team.subscription_id, f"{account}-seat-{s}", tier))
        needed = shares[rank - 1] * usage_budget * CREDITS_PER_EVENT_BOUND
        needed -= sum(TIER_CREDITS[seat.tier] for seat in team.seats)
        team.packs = max(0, math.ceil(needed / PACK_CREDITS))
        teams.append(team)
    return Fleet(tag, teams)


async def provision(
    pool: ConnectionPool,
    token: str,
    fleet: Fleet,
    started_at: datetime,
    concurrency: int = 8,
) -> None:
    """Create every team's subscription, seats, keys and packs through ingest's API, up to
    `concurrency` teams at once (each team's requests one after the other)."""
    gate = asyncio.Semaphore(concurrency)
    headers = {"Authorization": f"Bearer {token}"}

    async def post(path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        raw = post_request(pool.url, path, orjson.dumps(body) if body else b"", headers)
        status, answer = await post_again(pool, raw)
        if status not in (200, 201):
            raise RuntimeError(f"POST {path}: {status} {answer[:500]!r}")
        result: dict[str, Any] = orjson.loads(answer)
        return result

    async def one(team: Team) -> None:
        async with gate:
            sub = f"/v1/subscriptions/{team.subscription_id}"
            await post(
                "/v1/subscriptions",
                {
                    "account_id": team.account_id,
                    "subscription_id": team.subscription_id,
                    "started_at": rfc3339(started_at),
                },
            )
            for seat in team.seats:
                member = seat.seat_id.replace("-seat-", "-member-")
                await post(
                    f"{sub}/seats", {"seat_id": seat.seat_id, "tier": seat.tier, "member": member}
                )
                issued = await post(f"{sub}/seats/{seat.seat_id}/keys")
                seat.key_id, seat.api_key = issued["key_id"], issued["api_key"]
            purchased = max(started_at, datetime.now(UTC) - timedelta(hours=1))
            for pack_id in team.pack_ids:
                await post(f"{sub}/packs", {"pack_id": pack_id, "purchased_at": rfc3339(purchased)})

    await asyncio.gather(*(one(team) for team in fleet.teams))


async def post_again(pool: ConnectionPool, raw: bytes, attempts: int = 3) -> tuple[int, bytes]:
    """Send `raw`, again when the connection failed or ingest answered 503 (nothing was
    confirmed). Plan facts are idempotent by their ids, so a repeat is answered as the first
    was; a key is issued anew (the seat then has two)."""
    for attempt in range(attempts):
        try:
            status, answer = await pool.request(raw)
        except (ConnectionError, asyncio.IncompleteReadError):
            if attempt == attempts - 1:
                raise
            continue
        if status != 503 or attempt == attempts - 1:
            return status, answer
        await asyncio.sleep(0.5)
    raise AssertionError("unreachable")


class UsageMix:
    """Usage counts of a realistic mix of model calls, for the models of a rate card."""

    def __init__(self, card: RateCard, at: datetime, rng: random.Random) -> None:
        models = card.in_force(at).models
        text = [m for m in models.values() if m.modality == "text"]
        image = [m for m in models.values() if m.modality == "image"]
        if not text:
            raise ValueError("the rate card in force has no text model")
        # The first (published) text model takes 40%, the others share 56%, images 4%.
        weighted: list[tuple[Any, float]] = [(text[0], 0.4)]
        weighted += [(m, 0.56 / max(1, len(text) - 1)) for m in text[1:]]
        weighted += [(m, 0.04 / len(image)) for m in image]
        chosen = rng.choices([m for m, _ in weighted], [w for _, w in weighted], k=PROFILES)
        self.profiles = [self._counts(model, rng) for model in chosen]
        self.models = sorted({p["model"] for p in self.profiles})
        self._rng = rng

    @staticmethod
    def _counts(model: Any, rng: random.Random) -> dict[str, Any]:
        limit = model.context_window
        if model.modality == "image":
            return {
                "model": model.model,
                "input_tokens": min(limit, rng.randint(20, 400)),
                "cached_tokens": 0,
                "output_tokens": 0,
                "thinking": False,
                "tool_calls": {},
                "images": rng.choice((1, 1, 1, 2, 4)),
            }
        input_tokens = min(limit - 1, max(1, int(rng.lognormvariate(7.6, 1.0))))
        cached = int(input_tokens * rng.uniform(1, 6)) if rng.random() < 0.6 else 0
        cached = min(cached, limit - input_tokens)  # within the context: else ingest refuses it
        thinking = rng.random() < 0.3
        output = max(1, int(rng.lognormvariate(6.0, 0.9) * (3 if thinking else 1)))
        tools: dict[str, int] = {}
        if rng.random() < 0.25:
            tools = {rng.choice(TOOLS): rng.randint(1, 3)}
        return {
            "model": model.model,
            "input_tokens": input_tokens,
            "cached_tokens": cached,
            "output_tokens": output,
            "thinking": thinking,
            "tool_calls": tools,
            "images": 0,
        }

    def counts(self) -> dict[str, Any]:
        return self._rng.choice(self.profiles)


class Reports:
    """Usage reports of the fleet's seats: Zipf-skewed traffic across accounts (by each team's
    rank), unique request ids, and about `DUPLICATE_SHARE` of each batch resent from earlier,
    completed batches. `accounts` collects the accounts that were sent a new report."""

    def __init__(
        self,
        fleet: Fleet,
        mix: UsageMix,
        tag: str,
        rng: random.Random,
        duplicate_share: float = DUPLICATE_SHARE,
    ) -> None:
        shares = zipf_shares(len(fleet.teams))
        self.seats = [seat for team in fleet.teams for seat in team.seats]
        self._cum = list(
            itertools.accumulate(
                shares[team.rank - 1] / len(team.seats) for team in fleet.teams for _ in team.seats
            )
        )
        self.accounts: set[str] = set()
        self._mix = mix
        self._tag = tag
        self._rng = rng
        self._duplicate_share = duplicate_share
        self._count = 0
        self._done: deque[dict[str, Any]] = deque(maxlen=5000)

    def report(self, seat: Seat, occurred_at: str) -> dict[str, Any]:
        self._count += 1
        self.accounts.add(seat.account_id)
        body = {
            "request_id": f"{self._tag}-{self._count}",
            "account_id": seat.account_id,
            "subscription_id": seat.subscription_id,
            "seat_id": seat.seat_id,
            "key_id": seat.key_id,
            "occurred_at": occurred_at,
            **self._mix.counts(),
        }
        client = self._rng.choice(CLIENTS)
        if client != "qwen-code":
            body["client"] = client
        return body

    def pick_seats(self, k: int) -> list[Seat]:
        """`k` seats drawn with the traffic's skew."""
        return self._rng.choices(self.seats, cum_weights=self._cum, k=k)

    def batch(self, size: int, occurred_at: str) -> tuple[list[dict[str, Any]], int]:
        """`size` reports (some of them repeats of completed ones); returns them and how
        many are repeats."""
        repeats = 0
        if self._done:
            repeats = sum(1 for _ in range(size) if self._rng.random() < self._duplicate_share)
        reports = [self.report(seat, occurred_at) for seat in self.pick_seats(size - repeats)]
        for _ in range(repeats):
            reports.insert(self._rng.randrange(len(reports) + 1), self._rng.choice(self._done))
        return reports, repeats

    def completed(self, reports: list[dict[str, Any]]) -> None:
        """Reports ingest has answered: candidates for a later repeat."""
        self._done.extend(reports[:: max(1, len(reports) // 50)])


def batch_body(reports: list[dict[str, Any]]) -> bytes:
    return orjson.dumps({"reports": reports})


# -- the same workload as event envelopes (the broker's ceiling, the pure fold) -------------


def envelope(
    event_type: str,
    account_id: str,
    occurred_at: datetime,
    payload: dict[str, Any],
    recorded_at: datetime | None = None,
) -> dict[str, Any]:
    """A `metering.events.v1` envelope (contract: schemas/envelope.py)."""
    return {
        "event_id": str(uuid.uuid4()),
        "event_type": event_type,
        "schema_version": 1,
        "occurred_at": rfc3339(occurred_at),
        "recorded_at": rfc3339(recorded_at or occurred_at),
        "account_id": account_id,
        "payload": payload,
    }


def usage_envelope(report: dict[str, Any], recorded_at: datetime) -> dict[str, Any]:
    """The `UsageRecorded` envelope ingest appends for `report`."""
    payload = {k: v for k, v in report.items() if k not in ("account_id", "occurred_at")}
    payload.setdefault("client", None)
    occurred = datetime.fromisoformat(report["occurred_at"])
    return envelope("UsageRecorded", report["account_id"], occurred, payload, recorded_at)


def plan_envelopes(team: Team, started_at: datetime) -> Iterator[dict[str, Any]]:
    """The plan facts provisioning appends for `team`, as envelopes."""
    sub = team.subscription_id
    yield envelope(
        "SubscriptionActivated",
        team.account_id,
        started_at,
        {"subscription_id": sub, "started_at": rfc3339(started_at), "expires_at": None},
    )
    for seat in team.seats:
        member = seat.seat_id.replace("-seat-", "-member-")
        yield envelope(
            "SeatAdded",
            team.account_id,
            started_at,
            {"subscription_id": sub, "seat_id": seat.seat_id, "tier": seat.tier, "member": member},
        )
        seat.key_id = seat.key_id or f"{seat.seat_id}-key"
        yield envelope(
            "ApiKeyIssued",
            team.account_id,
            started_at,
            {
                "subscription_id": sub,
                "seat_id": seat.seat_id,
                "key_id": seat.key_id,
                "key_hash": uuid.uuid4().hex * 2,
            },
        )
    for pack_id in team.pack_ids:
        yield envelope(
            "SharedPackPurchased",
            team.account_id,
            started_at,
            {"subscription_id": sub, "pack_id": pack_id, "purchased_at": rfc3339(started_at)},
        )


def event_log(
    fleet: Fleet, reports: Reports, usage_events: int, started_at: datetime, span: timedelta
) -> dict[str, list[bytes]]:
    """Each account's facts in order, as JSON: its plan, then its share of `usage_events`
    usages spread over `span` from `started_at` (no repeats: ingest drops those)."""
    log: dict[str, list[bytes]] = {
        team.account_id: [orjson.dumps(e) for e in plan_envelopes(team, started_at)]
        for team in fleet.teams
    }
    step = span / max(1, usage_events)
    for n, seat in enumerate(reports.pick_seats(usage_events)):
        occurred = started_at + timedelta(minutes=1) + step * n
        report = reports.report(seat, rfc3339(occurred))
        recorded = occurred + timedelta(milliseconds=20)
        log[seat.account_id].append(orjson.dumps(usage_envelope(report, recorded)))
    return log
