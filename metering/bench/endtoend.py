"""(b) and (b1) end-to-end sustained usage events/s, (c) freshness and (c1) a new key's
delay, through the real services.

(b) has three steps:

1. *burst*: senders post batches to `POST /v1/usage/batch` as fast as ingest answers, for a
   few seconds (or until a backlog limit): ingest's own accepted events/s;
2. *catch-up*: no load while ledger and quota apply the backlog: each consumer's rate alone;
3. *sustained*: senders post as fast as the whole system keeps up: a sender waits while the
   work not yet through (events accepted but not yet applied by the slower of ledger and
   quota, plus ledger results its outbox relay has not yet published) exceeds about two
   seconds' worth, so ingest cannot run ahead and starve the rest of CPU. The end-to-end
   figure is the rate at which events are applied by the slower of ledger and quota over
   the step (less its warm-up).

(b1) is (b)'s sustained step with one report per request: 64 connections, each posting
`POST /v1/usage` as soon as the last was answered, held back the same way.

"Applied" is each consumer's `metering_messages_consumed_total{topic=<events topic>}`,
counted after its batch's transaction committed, and the relay's backlog is
`metering_ledger_outbox_backlog`: both polled from `/metrics` twice a second.

(c) offers a fixed rate of background reports (open loop: batches leave on a schedule,
however slowly they are answered) and, five times a second, sends a probe report on a seat
of its own with `POST /v1/usage`; from the moment ingest answers (accepted = durable) it asks
quota's `authorize` with that seat's key, every 5 to 20 ms, until the seat's remaining
credits show the probe's cost. The freshness of a probe is that time. In the same window,
(c1) issues API keys through ingest one at a time and, from each 201, asks `authorize` with
the new key every 2 to 10 ms until quota knows it.

Usage is posted over minimal keep-alive HTTP/1.1 connections (`rawhttp`):
httpx would cost the load generator several times the CPU per request.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, TypeVar

import httpx
import orjson
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from metering.bench.load import Reports, Seat, batch_body, post_again, rfc3339
from metering.bench.monitor import Latencies, Rate, Timeline, percentile, periodically, ticking
from metering.bench.rawhttp import ConnectionPool, RawConnection, post_request

BATCH = 100
"""Reports per `POST /v1/usage/batch` in (b) and (c): gateways send small batches (Metronome
caps a request at 100 events)."""
SENDERS = 16
SINGLE_CONNECTIONS = 64
"""(b1)'s connections, each posting one report per request."""
BACKLOG_SECONDS = 2.0
"""In the sustained step, senders wait while the events accepted but not yet applied by the
slower consumer exceed this many seconds of its catch-up rate (within the bounds below)."""
BACKLOG_BOUNDS = (2_000, 40_000)
PROBE_EVERY = 0.2
PROBE_IN_FLIGHT = 2
PROBE_POLL = (0.005, 0.02)
"""Probes poll authorize every 5 ms at first, then every tenth of the time waited so far, at
most every 20 ms: the reading is within 10% and the polls cost quota little."""
PROBE_TIMEOUT = 30.0
KEY_EVERY = 0.25
"""(c1) issues a key at most this often, and one at a time."""
KEY_POLL = (0.002, 0.01)
"""(c1) polls authorize with a new key every 2 ms at first, then every twentieth of the time
waited so far, at most every 10 ms."""
UNKNOWN_KEY = (401, 429)
"""authorize's answers to a key it does not know (429: too many of them from one client)."""
DRAIN_TIMEOUT = 180.0
T = TypeVar("T")


@dataclass(frozen=True)
class Services:
    ingest: str
    ledger: str
    quota: str
    token: str
    events_topic: str


class MetricsPage:
    """A service's /metrics page, parsed by prometheus-client: samples by name and labels."""

    def __init__(self, text: str) -> None:
        self._samples: dict[str, list[Sample]] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                self._samples.setdefault(sample.name, []).append(sample)

    def value(self, name: str, **labels: str) -> float | None:
        """The first sample `name` with (at least) `labels` (None: absent)."""
        for sample in self._samples.get(name, ()):
            if all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
        return None

    def histogram(self, name: str) -> Histogram:
        buckets = [
            (float(s.labels["le"]), s.value) for s in self._samples.get(f"{name}_bucket", ())
        ]
        return Histogram(
            tuple(sorted(buckets)),
            self.value(f"{name}_sum") or 0.0,
            self.value(f"{name}_count") or 0.0,
        )


async def metrics_page(client: httpx.AsyncClient, url: str) -> MetricsPage:
    return MetricsPage((await client.get(f"{url}/metrics")).text)


@dataclass(frozen=True)
class Histogram:
    """A Prometheus histogram read from a /metrics page: cumulative buckets, sum, count."""

    buckets: tuple[tuple[float, float], ...]
    sum: float
    count: float

    def since(self, before: Histogram) -> dict[str, float | None]:
        """Mean, and p50/p99 as the upper bound of their bucket, of what was observed since
        `before` (None when nothing was)."""
        count = self.count - before.count
        if count <= 0:
            return {"mean": None, "p50_at_most": None, "p99_at_most": None, "count": 0}
        earlier = dict(before.buckets)
        deltas = [(le, n - earlier.get(le, 0.0)) for le, n in self.buckets]

        def upper(q: float) -> float | None:
            return next((le for le, n in deltas if n >= q * count), None)

        return {
            "mean": (self.sum - before.sum) / count,
            "p50_at_most": upper(0.5),
            "p99_at_most": upper(0.99),
            "count": count,
        }


SERVER_HISTOGRAMS = {
    "ingest": ("metering_ingest_broker_ack_seconds", "metering_ingest_batch_size"),
    "ledger": ("metering_ledger_transaction_seconds", "metering_ledger_batch_size"),
    "quota": (
        "metering_quota_transaction_seconds",
        "metering_quota_batch_size",
        "metering_quota_projection_lag_seconds",
    ),
}


class ServerSide:
    """The services' own histograms over a phase: read before, compared after."""

    def __init__(self, client: httpx.AsyncClient, services: Services) -> None:
        self._client = client
        self._urls = {"ingest": services.ingest, "ledger": services.ledger, "quota": services.quota}
        self._before: dict[str, Histogram] = {}

    async def _read(self) -> dict[str, Histogram]:
        out = {}
        for service, names in SERVER_HISTOGRAMS.items():
            page = await metrics_page(self._client, self._urls[service])
            for name in names:
                out[name] = page.histogram(name)
        return out

    async def start(self) -> None:
        self._before = await self._read()

    async def since_start(self) -> dict[str, dict[str, float | None]]:
        after = await self._read()
        return {
            name.removeprefix("metering_"): h.since(self._before[name])
            for name, h in after.items()
            if name in self._before
        }


class Applied:
    """How many events ledger and quota have applied, polled from their /metrics."""

    def __init__(self, client: httpx.AsyncClient, services: Services, timeline: Timeline) -> None:
        self._client = client
        self._services = services
        self.ledger = Rate(timeline, "ledger applied (events/s)")
        self.quota = Rate(timeline, "quota applied (events/s)")
        self.base: tuple[int, int] | None = None
        self.ledger_outbox_backlog = 0.0

    async def poll(self) -> None:
        topic = self._services.events_topic
        name = "metering_messages_consumed_total"
        ledger, quota = await asyncio.gather(
            metrics_page(self._client, self._services.ledger),
            metrics_page(self._client, self._services.quota),
        )
        self.ledger.total = int(ledger.value(name, topic=topic) or 0)
        self.quota.total = int(quota.value(name, topic=topic) or 0)
        self.ledger_outbox_backlog = ledger.value("metering_ledger_outbox_backlog") or 0.0
        if self.base is None:
            self.base = (self.ledger.total, self.quota.total)

    def backlog(self, published: int) -> int:
        """Work not yet through: events published since the baseline that the slower
        consumer has not applied, plus the ledger's results not yet published by its relay."""
        assert self.base is not None
        ledger = self.ledger.total - self.base[0]
        quota = self.quota.total - self.base[1]
        return published - min(ledger, quota) + int(self.ledger_outbox_backlog)

    @contextlib.asynccontextmanager
    async def polling(self, every: float = 0.5) -> AsyncIterator[None]:
        """Poll now, then every `every` seconds while the block runs (a failed poll is
        retried at the next)."""

        async def poll_again() -> None:
            with contextlib.suppress(httpx.HTTPError):
                await self.poll()

        await self.poll()
        async with periodically(poll_again, every):
            yield

    async def drained(
        self, published: int, within: float = DRAIN_TIMEOUT
    ) -> tuple[float, float, float]:
        """Wait until both consumers applied everything published and the ledger's relay has
        published their results; returns the seconds it took in all, and until ledger and
        quota each applied everything."""
        assert self.base is not None
        started = time.perf_counter()
        done: dict[str, float] = {}
        while True:
            await self.poll()
            elapsed = time.perf_counter() - started
            if self.ledger.total - self.base[0] >= published:
                done.setdefault("ledger", elapsed)
            if self.quota.total - self.base[1] >= published:
                done.setdefault("quota", elapsed)
            if len(done) == 2 and self.ledger_outbox_backlog <= 0:
                return elapsed, done["ledger"], done["quota"]
            if elapsed > within:
                raise RuntimeError(
                    f"ledger and quota did not catch up within {within:.0f} s: "
                    f"{self.backlog(published)} events not applied"
                )
            await asyncio.sleep(0.05)


@dataclass
class Ingestor:
    """Posts usage reports to ingest and counts what it answered."""

    url: str
    token: str
    reports: Reports
    timeline: Timeline
    published: int = 0
    """Events appended to the log by this run (plan facts, accepted reports, probes, keys)."""
    statuses: Counter[str] = field(default_factory=Counter)
    unavailable: int = 0
    first_refusal: dict[str, Any] | None = None
    """The first batch result neither `accepted` nor `duplicate` (none expected)."""

    def __post_init__(self) -> None:
        self.accepted = Rate(self.timeline, "ingest accepted (events/s)")
        self.latency = Latencies(self.timeline, "ingest batch")
        self.single_latency = Latencies(self.timeline, "ingest single POST")
        self.pool = ConnectionPool(self.url)
        self._headers = {"Authorization": f"Bearer {self.token}"}

    async def _post(self, path: str, body: bytes) -> tuple[int, bytes, float]:
        """POST `body`, again after a 503 (nothing was confirmed; the contract says send it
        again): the answer, and the seconds the last attempt took."""
        raw = post_request(self.url, path, body, self._headers)
        while True:
            started = time.perf_counter()
            status, answer = await self.pool.request(raw)
            if status != 503:
                return status, answer, time.perf_counter() - started
            self.unavailable += 1
            await asyncio.sleep(0.5)

    async def send_batch(self, size: int = BATCH) -> None:
        reports, _ = self.reports.batch(size, rfc3339(datetime.now(UTC)))
        status, answer, seconds = await self._post("/v1/usage/batch", batch_body(reports))
        if status != 200:
            raise RuntimeError(f"POST /v1/usage/batch: {status} {answer[:500]!r}")
        self.latency.add(seconds)
        results = orjson.loads(answer)["results"]
        counts = Counter(r["status"] for r in results)
        if counts.keys() - {"accepted", "duplicate"} and self.first_refusal is None:
            self.first_refusal = next(
                r for r in results if r["status"] not in ("accepted", "duplicate")
            )
        self.statuses.update(counts)
        self.accepted.add(counts["accepted"])
        self.published += counts["accepted"]
        self.reports.completed(reports)

    async def send_one(self) -> None:
        """One report (or, now and then, a repeat of an answered one) by `POST /v1/usage`."""
        reports, _ = self.reports.batch(1, rfc3339(datetime.now(UTC)))
        status, answer, seconds = await self._post("/v1/usage", orjson.dumps(reports[0]))
        if status not in (200, 202):
            raise RuntimeError(f"POST /v1/usage: {status} {answer[:500]!r} for {reports[0]}")
        self.single_latency.add(seconds)
        if status == 202:
            self.statuses["accepted"] += 1
            self.accepted.add(1)
            self.published += 1
        else:
            self.statuses["duplicate"] += 1
        self.reports.completed(reports)

    async def close(self) -> None:
        await self.pool.close()


@dataclass(frozen=True)
class Window:
    """Counts at the start and end of a measured window."""

    seconds: float
    accepted: int
    ledger: int
    quota: int

    @property
    def accepted_rate(self) -> float:
        return self.accepted / self.seconds if self.seconds else 0.0

    @property
    def ledger_rate(self) -> float:
        return self.ledger / self.seconds if self.seconds else 0.0

    @property
    def quota_rate(self) -> float:
        return self.quota / self.seconds if self.seconds else 0.0

    @property
    def end_to_end_rate(self) -> float:
        return min(self.ledger_rate, self.quota_rate)


class Mark:
    def __init__(self, ingestor: Ingestor, applied: Applied) -> None:
        self.ingestor = ingestor
        self.applied = applied
        self.at = time.perf_counter()
        self.accepted = ingestor.accepted.total
        self.ledger = applied.ledger.total
        self.quota = applied.quota.total

    def window(self) -> Window:
        return Window(
            time.perf_counter() - self.at,
            self.ingestor.accepted.total - self.accepted,
            self.applied.ledger.total - self.ledger,
            self.applied.quota.total - self.quota,
        )


@dataclass
class EndToEndResult:
    burst: Window
    catch_up_ledger_rate: float
    catch_up_quota_rate: float
    sustained: Window
    max_backlog: int
    server: dict[str, dict[str, float | None]]
    """The services' own histograms over the sustained window."""
    drain_seconds: float
    statuses: dict[str, int]
    ingest_unavailable: int
    batch_p50_ms: float
    batch_p99_ms: float
    ledger_outbox_backlog: float
    first_refusal: dict[str, Any] | None


@dataclass
class SingleResult:
    """(b1): one report per request."""

    sustained: Window
    connections: int
    max_backlog: int
    server: dict[str, dict[str, float | None]]
    drain_seconds: float
    statuses: dict[str, int]
    ingest_unavailable: int
    request_p50_ms: float
    request_p99_ms: float
    ledger_outbox_backlog: float


def _held_back(
    ingestor: Ingestor,
    applied: Applied,
    send: Callable[[], Awaitable[None]],
    until: float,
    backlog_limit: int,
    stop_at_limit: bool = False,
) -> Coroutine[Any, Any, None]:
    """A closed-loop sender: `send` again as soon as it returns, while the work not yet
    through is within `backlog_limit` (beyond it: wait, or stop)."""

    async def loop() -> None:
        while time.perf_counter() < until:
            if applied.backlog(ingestor.published) > backlog_limit:
                if stop_at_limit:
                    return
                await asyncio.sleep(0.01)
                continue
            await send()

    return loop()


async def _sustained(
    ingestor: Ingestor,
    applied: Applied,
    timeline: Timeline,
    phase: str,
    send: Callable[[], Awaitable[None]],
    senders: int,
    seconds: float,
    max_backlog: int,
    server: ServerSide,
) -> tuple[Window, dict[str, dict[str, float | None]], float, float]:
    """`senders` held-back senders for `seconds`, measured after a warm-up, then a drain:
    the window, the services' histograms over it, the relay's backlog at its end and the
    seconds the drain took."""
    with timeline.phase(f"{phase} sustained"):
        warm_up = min(5.0, seconds * 0.2)
        until = time.perf_counter() + seconds
        running = asyncio.gather(
            *(_held_back(ingestor, applied, send, until, max_backlog) for _ in range(senders))
        )
        await asyncio.sleep(warm_up)
        mark = Mark(ingestor, applied)
        await server.start()
        await running
        window = mark.window()
        server_side = await server.since_start()
        outbox = applied.ledger_outbox_backlog
    with timeline.phase(f"{phase} drain"):
        drain, _, _ = await applied.drained(ingestor.published)
    return window, server_side, outbox, drain


async def end_to_end(
    ingestor: Ingestor,
    applied: Applied,
    timeline: Timeline,
    burst_seconds: float,
    sustained_seconds: float,
    burst_backlog: int,
    server: ServerSide,
    senders: int = SENDERS,
    log: Callable[[str], object] = lambda _: None,
) -> EndToEndResult:
    meters = (ingestor.accepted, ingestor.latency, applied.ledger, applied.quota)
    statuses_before = Counter(ingestor.statuses)
    unavailable_before = ingestor.unavailable
    async with ticking(timeline, *meters):
        with timeline.phase("b burst"):
            mark = Mark(ingestor, applied)
            until = time.perf_counter() + burst_seconds
            await asyncio.gather(
                *(
                    _held_back(ingestor, applied, ingestor.send_batch, until, burst_backlog, True)
                    for _ in range(senders)
                )
            )
            burst = mark.window()
        log(f"    burst: ingest accepted {burst.accepted_rate:,.0f} events/s; catching up")
        with timeline.phase("b catch-up"):
            mark = Mark(ingestor, applied)
            _, ledger_seconds, quota_seconds = await applied.drained(ingestor.published)
            caught = mark.window()
        rates = [n / t for n, t in ((caught.ledger, ledger_seconds), (caught.quota, quota_seconds))]
        slower = min((r for r in rates if r > 0), default=0.0)
        max_backlog = int(min(max(slower * BACKLOG_SECONDS, BACKLOG_BOUNDS[0]), BACKLOG_BOUNDS[1]))
        log(f"    sustained step (senders wait beyond {max_backlog:,} events not yet applied)")
        sustained, server_side, outbox, drain = await _sustained(
            ingestor,
            applied,
            timeline,
            "b",
            ingestor.send_batch,
            senders,
            sustained_seconds,
            max_backlog,
            server,
        )
    return EndToEndResult(
        burst=burst,
        catch_up_ledger_rate=rates[0],
        catch_up_quota_rate=rates[1],
        sustained=sustained,
        max_backlog=max_backlog,
        server=server_side,
        drain_seconds=drain,
        statuses=dict(ingestor.statuses - statuses_before),
        ingest_unavailable=ingestor.unavailable - unavailable_before,
        batch_p50_ms=1000 * percentile(ingestor.latency.samples, 50),
        batch_p99_ms=1000 * percentile(ingestor.latency.samples, 99),
        ledger_outbox_backlog=outbox,
        first_refusal=ingestor.first_refusal,
    )


async def single_posts(
    ingestor: Ingestor,
    applied: Applied,
    timeline: Timeline,
    seconds: float,
    max_backlog: int,
    server: ServerSide,
    connections: int = SINGLE_CONNECTIONS,
) -> SingleResult:
    """(b1): `connections` senders of one report per `POST /v1/usage`, held back like (b)'s
    sustained step (beyond `max_backlog` events not yet through)."""
    statuses_before = Counter(ingestor.statuses)
    unavailable_before = ingestor.unavailable
    meters = (ingestor.accepted, ingestor.single_latency, applied.ledger, applied.quota)
    async with ticking(timeline, *meters):
        window, server_side, outbox, drain = await _sustained(
            ingestor,
            applied,
            timeline,
            "b1",
            ingestor.send_one,
            connections,
            seconds,
            max_backlog,
            server,
        )
    samples = ingestor.single_latency.samples
    return SingleResult(
        sustained=window,
        connections=connections,
        max_backlog=max_backlog,
        server=server_side,
        drain_seconds=drain,
        statuses=dict(ingestor.statuses - statuses_before),
        ingest_unavailable=ingestor.unavailable - unavailable_before,
        request_p50_ms=1000 * percentile(samples, 50),
        request_p99_ms=1000 * percentile(samples, 99),
        ledger_outbox_backlog=outbox,
    )


# -- (c) freshness -------------------------------------------------------------------------


@dataclass
class FreshnessResult:
    offered_rate: float
    """Reports per second the schedule offered."""
    accepted_rate: float
    applied: Window
    probes: int
    timeouts: int
    errors: int
    first_error: str | None
    p50_ms: float
    p99_ms: float
    max_ms: float
    server: dict[str, dict[str, float | None]]
    polls_per_second: float
    """authorize calls of the probes: their load on quota."""
    behind_schedule_seconds: float
    """How far the background schedule fell behind at its worst (0: always on time)."""


class Probe:
    """One seat of its own: reports one usage and watches `authorize` until it counts."""

    def __init__(self, seat: Seat, model: str, quota: str, ingestor: Ingestor) -> None:
        self.seat = seat
        self.model = model
        self.ingestor = ingestor
        self.remaining: Decimal | None = None
        self.busy = False
        self.polls = 0
        self._count = 0
        self._connection = RawConnection(quota)
        self._auth = {"Authorization": f"Bearer {ingestor.token}"}
        self._authorize = post_request(
            quota,
            "/v1/authorize",
            orjson.dumps({"model": model, "endpoint": "openai"}),
            {"Authorization": f"Bearer {seat.api_key}"},
        )

    async def open(self) -> None:
        await self._connection.open()
        self.remaining = await self._remaining()

    async def close(self) -> None:
        await self._connection.close()

    async def _remaining(self) -> Decimal:
        status, body = await self._connection.request(self._authorize)
        if status != 200:
            raise RuntimeError(f"probe authorize: {status} {body[:300]!r}")
        return Decimal(orjson.loads(body)["remaining"]["seat"])

    async def run(self, latencies: Latencies) -> bool:
        """One probe; returns False when its effect was not seen within the timeout."""
        self.busy = True
        try:
            self._count += 1
            report = {
                "request_id": f"probe-{self.seat.seat_id}-{self._count}",
                "account_id": self.seat.account_id,
                "subscription_id": self.seat.subscription_id,
                "seat_id": self.seat.seat_id,
                "key_id": self.seat.key_id,
                "model": self.model,
                "occurred_at": rfc3339(datetime.now(UTC)),
                "input_tokens": 5000,
            }
            raw = post_request(self.ingestor.url, "/v1/usage", orjson.dumps(report), self._auth)
            status, answer = await post_again(self.ingestor.pool, raw)
            accepted_at = time.perf_counter()
            if status not in (200, 202):  # 200: a repeat after a lost answer
                raise RuntimeError(f"probe POST /v1/usage: {status} {answer[:300]!r}")
            self.ingestor.published += 1
            before = self.remaining
            while True:
                now = await self._remaining()
                seen_at = time.perf_counter()
                if before is None or now < before:
                    self.remaining = now
                    latencies.add(seen_at - accepted_at)
                    return True
                waited = seen_at - accepted_at
                if waited > PROBE_TIMEOUT:
                    return False
                self.polls += 1
                await asyncio.sleep(min(PROBE_POLL[1], max(PROBE_POLL[0], waited / 10)))
        finally:
            self.busy = False


class KeyProbe:
    """(c1): issues API keys through ingest one at a time, at most one every `KEY_EVERY`
    seconds, on seats of the fleet picked at random, and from each 201 asks quota's
    `authorize` with the new key until it is no longer refused as unknown."""

    def __init__(
        self,
        ingestor: Ingestor,
        quota: str,
        seats: list[Seat],
        model: str,
        timeline: Timeline,
        rng: random.Random,
    ) -> None:
        self.ingestor = ingestor
        self.quota = quota
        self.seats = seats
        self.body = orjson.dumps({"model": model, "endpoint": "openai"})
        self.latencies = Latencies(timeline, "new key usable")
        self.answers: Counter[str] = Counter()
        """authorize's first answer to each key that was not an unknown-key refusal."""
        self.issued = 0
        self.timeouts = 0
        self.polls = 0
        self._rng = rng

    async def run(self, until: float) -> None:
        connection = RawConnection(self.quota)
        try:
            while time.perf_counter() < until:
                started = time.perf_counter()
                await self._one(connection)
                await asyncio.sleep(max(0.0, started + KEY_EVERY - time.perf_counter()))
        finally:
            await connection.close()

    async def _one(self, connection: RawConnection) -> None:
        seat = self._rng.choice(self.seats)
        path = f"/v1/subscriptions/{seat.subscription_id}/seats/{seat.seat_id}/keys"
        ingest = self.ingestor
        raw = post_request(ingest.url, path, b"", {"Authorization": f"Bearer {ingest.token}"})
        status, answer = await post_again(ingest.pool, raw)
        issued_at = time.perf_counter()
        if status != 201:
            raise RuntimeError(f"POST {path}: {status} {answer[:300]!r}")
        self.issued += 1
        ingest.published += 1
        headers = {"Authorization": f"Bearer {orjson.loads(answer)['api_key']}"}
        raw = post_request(self.quota, "/v1/authorize", self.body, headers)
        while True:
            status, _ = await connection.request(raw)
            seen_at = time.perf_counter()
            waited = seen_at - issued_at
            if status not in UNKNOWN_KEY:
                self.latencies.add(waited)
                self.answers[str(status)] += 1
                return
            if waited > PROBE_TIMEOUT:
                self.timeouts += 1
                return
            self.polls += 1
            await asyncio.sleep(min(KEY_POLL[1], max(KEY_POLL[0], waited / 20)))


@dataclass
class KeyResult:
    issued: int
    usable: int
    timeouts: int
    answers: dict[str, int]
    p50_ms: float
    p99_ms: float
    max_ms: float
    polls_per_second: float


async def open_loop(
    ingestor: Ingestor, rate: float, until: float, batch: int = BATCH, max_in_flight: int = 16
) -> float:
    """Post batches of `batch` reports on a fixed schedule offering `rate` reports/s until
    `until`, however slowly they are answered (at most `max_in_flight` at once), and wait for
    the last answers; returns how far the schedule fell behind at its worst (0: on time)."""
    interval = batch / rate
    gate = asyncio.Semaphore(max_in_flight)
    tasks: set[asyncio.Task[None]] = set()
    behind = 0.0

    async def send() -> None:
        try:
            await ingestor.send_batch(batch)
        finally:
            gate.release()

    started = time.perf_counter()
    n = 0
    try:
        while True:
            due = started + n * interval
            if due >= until:
                break
            now = time.perf_counter()
            if due > now:
                await asyncio.sleep(due - now)
            behind = max(behind, time.perf_counter() - due)
            await gate.acquire()
            task = asyncio.create_task(send())
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            n += 1
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
    return behind


async def freshness(
    ingestor: Ingestor,
    applied: Applied,
    probes: list[Probe],
    timeline: Timeline,
    rate: float,
    seconds: float,
    server: ServerSide,
    keys: KeyProbe | None = None,
) -> tuple[FreshnessResult, KeyResult | None]:
    """(c) and, in the same window when `keys` is given, (c1)."""
    latencies = Latencies(timeline, "freshness")
    running: set[asyncio.Task[bool]] = set()
    finished: list[bool | BaseException] = []

    def probe_done(task: asyncio.Task[bool]) -> None:
        running.discard(task)
        if not task.cancelled():
            finished.append(task.exception() or task.result())

    async def probing(until: float) -> None:
        turn = 0
        while time.perf_counter() < until:
            free = [p for p in probes if not p.busy]
            if free and len(probes) - len(free) < PROBE_IN_FLIGHT:
                probe = free[turn % len(free)]
                turn += 1
                probe.busy = True
                task = asyncio.create_task(probe.run(latencies))
                running.add(task)
                task.add_done_callback(probe_done)
            await asyncio.sleep(PROBE_EVERY)
        await asyncio.gather(*running, return_exceptions=True)

    async def no_keys(until: float) -> None:
        return None

    for probe in probes:
        await probe.open()
    meters: list[Any] = [ingestor.accepted, ingestor.latency, applied.ledger, applied.quota]
    meters += [latencies] + ([keys.latencies] if keys else [])
    try:
        async with ticking(timeline, *meters):
            with timeline.phase("c freshness"):
                mark = Mark(ingestor, applied)
                await server.start()
                until = time.perf_counter() + seconds
                behind, _, _ = await asyncio.gather(
                    open_loop(ingestor, rate, until),
                    probing(until),
                    keys.run(until) if keys else no_keys(until),
                )
                window = mark.window()
                server_side = await server.since_start()
            with timeline.phase("c drain"):
                await applied.drained(ingestor.published)
    finally:
        for task in running:
            task.cancel()
        for probe in probes:
            await probe.close()
    samples = latencies.samples
    timeouts = sum(1 for outcome in finished if outcome is False)
    errors = [outcome for outcome in finished if isinstance(outcome, BaseException)]
    fresh = FreshnessResult(
        offered_rate=rate,
        accepted_rate=window.accepted_rate,
        applied=window,
        probes=len(finished),
        timeouts=timeouts,
        errors=len(errors),
        first_error=repr(errors[0]) if errors else None,
        p50_ms=1000 * percentile(samples, 50),
        p99_ms=1000 * percentile(samples, 99),
        max_ms=1000 * max(samples, default=0.0),
        server=server_side,
        polls_per_second=sum(p.polls for p in probes) / window.seconds if window.seconds else 0.0,
        behind_schedule_seconds=behind,
    )
    key_result = None
    if keys:
        key_samples = keys.latencies.samples
        key_result = KeyResult(
            issued=keys.issued,
            usable=len(key_samples),
            timeouts=keys.timeouts,
            answers=dict(keys.answers),
            p50_ms=1000 * percentile(key_samples, 50),
            p99_ms=1000 * percentile(key_samples, 99),
            max_ms=1000 * max(key_samples, default=0.0),
            polls_per_second=keys.polls / window.seconds if window.seconds else 0.0,
        )
    return fresh, key_result


async def under_load(
    ingestor: Ingestor,
    applied: Applied,
    timeline: Timeline,
    phase: str,
    rate: float,
    seconds: float,
    measure: Callable[[], Awaitable[T]],
) -> tuple[T, Window, float]:
    """`measure()` while (c)'s background load (`rate` reports/s in batches) runs for
    `seconds`; then a drain. Returns what `measure` returned, the load's window and how far
    its schedule fell behind."""
    meters = (ingestor.accepted, ingestor.latency, applied.ledger, applied.quota)
    async with ticking(timeline, *meters):
        with timeline.phase(phase):
            mark = Mark(ingestor, applied)
            until = time.perf_counter() + seconds
            behind, result = await asyncio.gather(open_loop(ingestor, rate, until), measure())
            window = mark.window()
        with timeline.phase(f"{phase} drain"):
            await applied.drained(ingestor.published)
    return result, window, behind
